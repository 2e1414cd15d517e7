package engine

import (
	"sync"
	"time"
)

// DefaultBlockedLog is how many recent refusals an engine keeps when
// Options.BlockedLog is 0.
const DefaultBlockedLog = 1024

// Blocked is one refusal in the engine's log of recent refusals.
type Blocked struct {
	// Time is when the call was refused, by the engine's Clock.
	Time   time.Time `json:"time"`
	Origin string    `json:"origin"`
	// Tenant is the identified caller's tenant; empty for an anonymous
	// call.
	Tenant string `json:"tenant,omitempty"`
	// Tier is the caller's tier ("anonymous" for an anonymous call).
	Tier     string `json:"tier,omitempty"`
	Resource string `json:"resource"`
	// Size is the call's size parameter; 0 when it has none.
	Size int `json:"size,omitempty"`
	// Rule and Kind name the refusing rule: "ddcolor_person/flow[0]", flow.
	Rule string `json:"rule"`
	Kind Kind   `json:"kind"`
	// Value is the hot value of a hotspot refusal, or the banned or
	// rate-limited caller (tenant or origin).
	Value string `json:"value,omitempty"`
	// Shadow marks a refusal a shadow rule would have made: the call was
	// not refused for it.
	Shadow bool `json:"shadow,omitempty"`
}

// blockedLog holds the most recent refusals in two rings of the same size:
// real refusals and shadow would-refusals, so that a flood of
// would-refusals never pushes the real ones out. Refusals are the path a
// flood takes, so add takes one lock and copies one struct into a slice
// allocated up front.
type blockedLog struct {
	mu           sync.Mutex
	real, shadow blockedRing
	seq          uint64 // entries recorded since the start, both rings: their order
}

// blockedRing is one ring of refusals, each with its place in the order of
// both rings.
type blockedRing struct {
	buf []blockedEntry
	n   uint64 // refusals recorded since the start; the next goes to buf[n%len(buf)]
}

type blockedEntry struct {
	Blocked
	seq uint64
}

func newBlockedLog(size int) *blockedLog {
	if size <= 0 {
		size = DefaultBlockedLog
	}
	return &blockedLog{real: blockedRing{buf: make([]blockedEntry, size)}, shadow: blockedRing{buf: make([]blockedEntry, size)}}
}

func (l *blockedLog) add(b Blocked) {
	l.mu.Lock()
	r := &l.real
	if b.Shadow {
		r = &l.shadow
	}
	r.buf[r.n%uint64(len(r.buf))] = blockedEntry{Blocked: b, seq: l.seq}
	r.n++
	l.seq++
	l.mu.Unlock()
}

// held is how many entries r holds.
func (r *blockedRing) held() int { return int(min(r.n, uint64(len(r.buf)))) }

// at is r's i-th newest entry (i < held).
func (r *blockedRing) at(i int) *blockedEntry {
	return &r.buf[(r.n-1-uint64(i))%uint64(len(r.buf))]
}

// recent returns up to limit entries of both rings, merged newest first;
// all they hold when limit is 0 or less.
func (l *blockedLog) recent(limit int) []Blocked {
	l.mu.Lock()
	defer l.mu.Unlock()
	hr, hs := l.real.held(), l.shadow.held()
	if limit <= 0 || limit > hr+hs {
		limit = hr + hs
	}
	out := make([]Blocked, 0, limit)
	i, j := 0, 0
	for len(out) < limit {
		if j >= hs || i < hr && l.real.at(i).seq > l.shadow.at(j).seq {
			out = append(out, l.real.at(i).Blocked)
			i++
		} else {
			out = append(out, l.shadow.at(j).Blocked)
			j++
		}
	}
	return out
}

// Blocked returns up to limit of the most recent refusals, real and shadow
// merged newest first (every one held when limit is 0 or less: up to
// Options.BlockedLog real refusals and as many shadow would-refusals, each
// kept in a ring of its own).
func (e *Engine) Blocked(limit int) []Blocked { return e.blocked.recent(limit) }
