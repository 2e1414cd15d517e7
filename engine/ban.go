package engine

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/rules"
)

// banTracker counts refusals per resource and origin and holds the bans
// they earn. It is sharded by origin so a flood from many addresses does not
// serialise on one lock.
type banTracker struct {
	clock   Clock
	entries atomic.Int64 // total entries, so the pass path skips locking when there are none
	shards  [banShards]banShard
}

const (
	banShards = 16
	// banShardCap bounds the origins one shard tracks: beyond it, idle
	// entries are swept, then the oldest unbanned ones dropped.
	banShardCap = 4096
)

type banShard struct {
	mu sync.Mutex
	m  map[banKey]*banEntry
}

type banKey struct{ resource, origin string }

type banEntry struct {
	hits   []time.Time // refusal times within the rule's window, oldest first
	until  time.Time   // banned until then
	within time.Duration
}

func newBanTracker(clock Clock) *banTracker {
	b := &banTracker{clock: clock}
	for i := range b.shards {
		b.shards[i].m = make(map[banKey]*banEntry)
	}
	return b
}

func (b *banTracker) shard(origin string) *banShard {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(origin); i++ {
		h ^= uint32(origin[i])
		h *= 16777619
	}
	return &b.shards[h%banShards]
}

// banned reports whether origin is banned from resource, and for how long
// still.
func (b *banTracker) banned(resource, origin string) (time.Duration, bool) {
	if b.entries.Load() == 0 {
		return 0, false
	}
	sh := b.shard(origin)
	sh.mu.Lock()
	e := sh.m[banKey{resource, origin}]
	var until time.Time
	if e != nil {
		until = e.until
	}
	sh.mu.Unlock()
	if until.IsZero() {
		return 0, false
	}
	left := until.Sub(b.clock.Now())
	return left, left > 0
}

// refused records a refusal of origin and reports whether it started a ban.
func (b *banTracker) refused(resource, origin string, rule *rules.BanRule) bool {
	now := b.clock.Now()
	within := time.Duration(rule.Within)
	sh := b.shard(origin)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := banKey{resource, origin}
	e := sh.m[k]
	if e == nil {
		if len(sh.m) >= banShardCap {
			b.sweep(sh, now)
		}
		e = &banEntry{hits: make([]time.Time, 0, min(rule.Blocks, 64))}
		sh.m[k] = e
		b.entries.Add(1)
	}
	e.within = within
	if now.Before(e.until) {
		return false
	}
	// Forget refusals that left the window.
	drop := 0
	for drop < len(e.hits) && now.Sub(e.hits[drop]) >= within {
		drop++
	}
	e.hits = append(e.hits[:0], e.hits[drop:]...)
	e.hits = append(e.hits, now)
	if len(e.hits) < rule.Blocks {
		return false
	}
	e.until = now.Add(time.Duration(rule.For))
	e.hits = e.hits[:0]
	return true
}

// sweep drops entries that are neither banned nor within their window;
// if the shard is still full, it drops unbanned entries until it is not.
func (b *banTracker) sweep(sh *banShard, now time.Time) {
	for k, e := range sh.m {
		idle := len(e.hits) == 0 || now.Sub(e.hits[len(e.hits)-1]) >= e.within
		if !now.Before(e.until) && idle {
			delete(sh.m, k)
			b.entries.Add(-1)
		}
	}
	for k, e := range sh.m {
		if len(sh.m) < banShardCap {
			break
		}
		if !now.Before(e.until) {
			delete(sh.m, k)
			b.entries.Add(-1)
		}
	}
}
