package engine

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// banTableSize bounds the (resource, caller) pairs whose refusals the ban
// table counts. Beyond it the least recently refused pair is forgotten: a
// flood of rotating addresses costs O(1) per new address, never a sweep.
// Active bans are kept apart, up to banTableBans times as many, so that a
// flood of new addresses cannot push a ban out before it ends.
const (
	banTableSize = 1 << 16
	banTableBans = 4
)

// banTable counts refusals per resource and caller — the tenant of an
// identified call, the origin of an anonymous one — and holds the bans they
// earn: bounded LRUs whose entries expire by the engine's clock. Every
// operation is O(1) under one short lock, taken by no admission of a
// resource without a ban rule.
type banTable struct {
	clock clock.Clock
	mu    sync.Mutex
	// hits counts the refusals of origins not banned, least recently
	// refused forgotten first.
	hits *simplelru.LRU[banKey, *banEntry]
	// bans holds each active ban's end, in the order the bans began (a ban
	// is never refreshed): only when more bans than its size are active at
	// once is the oldest forgotten early.
	bans *simplelru.LRU[banKey, time.Time]
	size atomic.Int64 // entries held, so the pass path skips locking when there are none
}

type banKey struct {
	resource string
	banSubject
}

// banSubject is whom a ban counts: a tenant (identified calls) or an
// origin (anonymous calls). An abused IP's ban never catches a tenant
// calling from it, nor a tenant's ban its IP.
type banSubject struct {
	who    string
	tenant bool
}

// param names the subject's kind as the rules do: tenant or origin.
func (s banSubject) param() string {
	if s.tenant {
		return rules.ParamTenant
	}
	return rules.ParamOrigin
}

type banEntry struct {
	hits    []time.Time // refusals within the rule's window, oldest first
	expires time.Time   // the last hit leaves the window then
}

func newBanTable(c clock.Clock, size int) *banTable {
	hits, err := simplelru.NewLRU[banKey, *banEntry](size, nil)
	if err != nil {
		panic("engine: ban table: " + err.Error()) // size is a positive constant
	}
	bans, err := simplelru.NewLRU[banKey, time.Time](size*banTableBans, nil)
	if err != nil {
		panic("engine: ban table: " + err.Error())
	}
	return &banTable{clock: c, hits: hits, bans: bans}
}

// banned reports whether who is banned from resource, and for how long
// still. It drops the ban if it has ended.
func (b *banTable) banned(resource string, who banSubject) (time.Duration, bool) {
	if b.size.Load() == 0 {
		return 0, false
	}
	now := b.clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bannedLocked(banKey{resource, who}, now)
}

// lift ends who's ban on resource, if any, and forgets its refusals; it
// reports whether a ban was in force.
func (b *banTable) lift(resource string, who banSubject) bool {
	if b.size.Load() == 0 {
		return false
	}
	now := b.clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.size.Store(int64(b.hits.Len() + b.bans.Len())) }()
	k := banKey{resource, who}
	_, banned := b.bannedLocked(k, now)
	b.bans.Remove(k)
	b.hits.Remove(k)
	return banned
}

func (b *banTable) bannedLocked(k banKey, now time.Time) (time.Duration, bool) {
	until, ok := b.bans.Peek(k)
	if !ok {
		return 0, false
	}
	if !now.Before(until) {
		b.bans.Remove(k)
		b.size.Store(int64(b.hits.Len() + b.bans.Len()))
		return 0, false
	}
	return until.Sub(now), true
}

// refused records a refusal of who and reports whether it started a ban.
func (b *banTable) refused(resource string, who banSubject, rule *rules.BanRule) bool {
	now := b.clock.Now()
	within := time.Duration(rule.Within)
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.size.Store(int64(b.hits.Len() + b.bans.Len())) }()
	b.dropExpired(now)
	k := banKey{resource, who}
	if _, banned := b.bannedLocked(k, now); banned {
		return false
	}
	e, ok := b.hits.Get(k)
	if !ok || !now.Before(e.expires) {
		e = &banEntry{}
		b.hits.Add(k, e) // evicts the least recently refused when full
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
	b.hits.Remove(k)
	b.bans.Add(k, now.Add(time.Duration(rule.For)))
	return true
}

// dropExpired forgets up to two expired entries from the old end of each
// table, so expired entries leave as new ones come in rather than only
// when a table is full.
func (b *banTable) dropExpired(now time.Time) {
	for range 2 {
		k, e, ok := b.hits.GetOldest()
		if !ok || now.Before(e.expires) {
			break
		}
		b.hits.Remove(k)
	}
	for range 2 {
		k, until, ok := b.bans.GetOldest()
		if !ok || now.Before(until) {
			break
		}
		b.bans.Remove(k)
	}
}

// Ban is an active ban, as Bans lists it.
type Ban struct {
	Resource string `json:"resource"`
	// Subject is what Who is: "origin" (an anonymous caller's address) or
	// "tenant" (an identified caller).
	Subject string    `json:"subject"`
	Who     string    `json:"who"`
	Until   time.Time `json:"until"`
	// RemainingS is how long the ban still runs, in seconds, by the
	// engine's clock.
	RemainingS float64 `json:"remaining_s"`
	// Shadow marks a ban a shadow ban rule would have imposed: it refuses
	// nothing.
	Shadow bool `json:"shadow,omitempty"`
}

// Bans lists the bans in force (those of shadow ban rules marked), by
// resource, then subject and who.
func (e *Engine) Bans() []Ban {
	out := e.bans.active()
	slices.SortFunc(out, func(a, b Ban) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Subject, b.Subject),
			cmp.Compare(a.Who, b.Who), compareBool(a.Shadow, b.Shadow))
	})
	return out
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case b:
		return -1
	}
	return 1
}

// active returns the bans not yet ended.
func (b *banTable) active() []Ban {
	out := []Ban{}
	if b.size.Load() == 0 {
		return out
	}
	now := b.clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range b.bans.Keys() {
		until, ok := b.bans.Peek(k)
		if !ok || !now.Before(until) {
			continue
		}
		res, shadow := strings.CutSuffix(k.resource, shadowSuffix)
		out = append(out, Ban{Resource: res, Subject: k.param(), Who: k.who, Until: until,
			RemainingS: until.Sub(now).Seconds(), Shadow: shadow})
	}
	return out
}
