package plan

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Window is how many recent job times a Recorder keeps per resource and
// size.
const Window = 256

// maxKeys bounds the resource and size pairs a Recorder tracks; sizes are
// checked by the API before a job runs, so real traffic stays far below.
const maxKeys = 256

// Recorder keeps the last Window job times of each resource and size. The
// zero value is ready to use; it is safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	rings map[key]*ring
}

type key struct {
	resource string
	size     int
}

// ring holds the last Window times of one key.
type ring struct {
	times [Window]time.Duration
	n     int // times held, up to Window
	next  int // where the next time goes
}

// Record adds one job's slot time. A time <= 0 (a job that never ran) is
// ignored, as are new keys beyond an internal bound.
func (r *Recorder) Record(resource string, size int, d time.Duration) {
	if d <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k := key{resource, size}
	g := r.rings[k]
	if g == nil {
		if len(r.rings) >= maxKeys {
			return
		}
		if r.rings == nil {
			r.rings = make(map[key]*ring)
		}
		g = &ring{}
		r.rings[k] = g
	}
	g.times[g.next] = d
	g.next = (g.next + 1) % Window
	g.n = min(g.n+1, Window)
}

// Times are the recorded job times of one resource and size, oldest first.
type Times struct {
	Resource string
	Size     int
	Times    []time.Duration
}

// Snapshot returns every resource and size's recorded times, sorted by
// resource then size.
func (r *Recorder) Snapshot() []Times {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Times, 0, len(r.rings))
	for k, g := range r.rings {
		ts := make([]time.Duration, 0, g.n)
		start := (g.next - g.n + Window) % Window
		for i := range g.n {
			ts = append(ts, g.times[(start+i)%Window])
		}
		out = append(out, Times{Resource: k.resource, Size: k.size, Times: ts})
	}
	slices.SortFunc(out, func(a, b Times) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Size, b.Size))
	})
	return out
}

// mean and p95 of ts (not empty).
func mean(ts []time.Duration) time.Duration {
	var sum time.Duration
	for _, t := range ts {
		sum += t
	}
	return sum / time.Duration(len(ts))
}

// p95 is the nearest-rank 95th percentile of ts (not empty).
func p95(ts []time.Duration) time.Duration {
	s := slices.Clone(ts)
	slices.Sort(s)
	rank := (95*len(s) + 99) / 100 // ceil(0.95·n), 1-based
	return s[max(rank, 1)-1]
}
