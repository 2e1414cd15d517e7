package engine

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// banTableSize bounds the (resource, origin) pairs the ban table tracks.
// Beyond it the least recently refused pair is forgotten: a flood of
// rotating addresses costs O(1) per new address, never a sweep.
const banTableSize = 1 << 16

// banTable counts refusals per resource and origin and holds the bans they
// earn: a bounded LRU whose entries expire by the engine's clock. Every
// operation is O(1) under one short lock, taken by no admission of a
// resource without a ban rule.
type banTable struct {
	clock clock.Clock
	mu    sync.Mutex
	lru   *simplelru.LRU[banKey, *banEntry]
	size  atomic.Int64 // entries held, so the pass path skips locking when there are none
}

type banKey struct{ resource, origin string }

type banEntry struct {
	hits    []time.Time // refusals within the rule's window, oldest first
	until   time.Time   // banned until then
	expires time.Time   // nothing left to remember from then: the ban over, the hits out of the window
}

func newBanTable(c clock.Clock, size int) *banTable {
	l, err := simplelru.NewLRU[banKey, *banEntry](size, nil)
	if err != nil {
		panic("engine: ban table: " + err.Error()) // size is a positive constant
	}
	return &banTable{clock: c, lru: l}
}

// banned reports whether origin is banned from resource, and for how long
// still. It drops the entry if it has expired.
func (b *banTable) banned(resource, origin string) (time.Duration, bool) {
	if b.size.Load() == 0 {
		return 0, false
	}
	now := b.clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	k := banKey{resource, origin}
	e, ok := b.lru.Peek(k)
	if !ok {
		return 0, false
	}
	if !now.Before(e.expires) {
		b.lru.Remove(k)
		b.size.Store(int64(b.lru.Len()))
		return 0, false
	}
	left := e.until.Sub(now)
	return left, left > 0
}

// refused records a refusal of origin and reports whether it started a ban.
func (b *banTable) refused(resource, origin string, rule *rules.BanRule) bool {
	now := b.clock.Now()
	within := time.Duration(rule.Within)
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.size.Store(int64(b.lru.Len())) }()
	b.dropExpired(now)
	k := banKey{resource, origin}
	e, ok := b.lru.Get(k)
	if !ok || !now.Before(e.expires) {
		e = &banEntry{}
		b.lru.Add(k, e) // evicts the least recently refused when full
	}
	if now.Before(e.until) {
		return false
	}
	// Forget refusals that left the window: amortised O(1), as each hit
	// is dropped once.
	drop := 0
	for drop < len(e.hits) && now.Sub(e.hits[drop]) >= within {
		drop++
	}
	e.hits = append(e.hits[drop:], now)
	e.expires = now.Add(within)
	if len(e.hits) < rule.Blocks {
		return false
	}
	e.until = now.Add(time.Duration(rule.For))
	e.expires = e.until
	e.hits = nil
	return true
}

// dropExpired forgets up to two expired entries from the least recently
// refused end, so expired entries leave the table as new ones come in
// rather than only when it is full.
func (b *banTable) dropExpired(now time.Time) {
	for range 2 {
		k, e, ok := b.lru.GetOldest()
		if !ok || now.Before(e.expires) {
			return
		}
		b.lru.Remove(k)
	}
}

// len returns how many entries the table holds.
func (b *banTable) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lru.Len()
}
