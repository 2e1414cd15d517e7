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

// blockedLog is a ring of the most recent refusals. Refusals are the path a
// flood takes, so add takes one lock and copies one struct into a slice
// allocated up front.
type blockedLog struct {
	mu  sync.Mutex
	buf []Blocked
	n   uint64 // refusals recorded since the start; the next goes to buf[n%len(buf)]
}

func newBlockedLog(size int) *blockedLog {
	if size <= 0 {
		size = DefaultBlockedLog
	}
	return &blockedLog{buf: make([]Blocked, size)}
}

func (l *blockedLog) add(b Blocked) {
	l.mu.Lock()
	l.buf[l.n%uint64(len(l.buf))] = b
	l.n++
	l.mu.Unlock()
}

// recent returns up to limit entries, newest first; all it holds when limit
// is 0 or less.
func (l *blockedLog) recent(limit int) []Blocked {
	l.mu.Lock()
	defer l.mu.Unlock()
	held := int(min(l.n, uint64(len(l.buf))))
	if limit <= 0 || limit > held {
		limit = held
	}
	out := make([]Blocked, limit)
	for i := range out {
		out[i] = l.buf[(l.n-1-uint64(i))%uint64(len(l.buf))]
	}
	return out
}

// Blocked returns up to limit of the most recent refusals, newest first
// (every one held, up to Options.BlockedLog, when limit is 0 or less).
func (e *Engine) Blocked(limit int) []Blocked { return e.blocked.recent(limit) }
