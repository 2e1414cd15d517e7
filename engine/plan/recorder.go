package plan

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

// Window is how many recent job times a Recorder keeps per resource and
// size, for the p95.
const Window = 256

// Span is the stretch of traffic a Recorder's counts and slot time cover:
// the last Span, in Buckets buckets, on the Recorder's clock.
const Span = 10 * time.Minute

// Buckets is how many buckets Span is cut into.
const Buckets = 10

const bucketSpan = Span / Buckets

// maxKeys bounds the resource and size pairs a Recorder tracks; sizes are
// checked by the API before a job runs, so real traffic stays far below.
const maxKeys = 256

// Recorder keeps, per resource and size, the number of jobs and their
// total slot time over the last Span (which weigh means, size mixes and
// shares by the traffic) and the last Window job times (for the p95). The
// zero value is ready to use, on the system clock; it is safe for
// concurrent use.
type Recorder struct {
	// Clock places jobs in the Span; nil is the system clock.
	Clock clock.Clock

	mu    sync.Mutex
	rings map[key]*ring
}

type key struct {
	resource string
	size     int
}

// bucket counts the jobs of one bucketSpan.
type bucket struct {
	start int64 // bucket number: unix time / bucketSpan
	count int
	total time.Duration
}

// ring holds the last Window times and the buckets of one key.
type ring struct {
	times   [Window]time.Duration
	n       int // times held, up to Window
	next    int // where the next time goes
	buckets [Buckets]bucket
}

// Record adds one job's slot time. A time <= 0 (a job that never ran) is
// ignored, as are new keys beyond an internal bound.
func (r *Recorder) Record(resource string, size int, d time.Duration) {
	if d <= 0 {
		return
	}
	now := clock.Or(r.Clock).Now().UnixNano() / int64(bucketSpan)
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
	b := &g.buckets[now%Buckets]
	if b.start != now {
		*b = bucket{start: now}
	}
	b.count++
	b.total += d
}

// Times are one resource and size's jobs: how many over the last Span and
// their total slot time, and the last Window job times.
type Times struct {
	Resource string
	Size     int
	// Count and Total are the jobs of the last Span and their slot time;
	// both 0 in a Times built by hand, where Times stands for them.
	Count int
	Total time.Duration
	// Times are the last Window job times, oldest first.
	Times []time.Duration
}

// n is the number of jobs t stands for: Count, or len(Times) when Count
// was not filled.
func (t Times) n() int {
	if t.Count > 0 {
		return t.Count
	}
	return len(t.Times)
}

// total is the slot time of t's n jobs.
func (t Times) total() time.Duration {
	if t.Count > 0 {
		return t.Total
	}
	var sum time.Duration
	for _, d := range t.Times {
		sum += d
	}
	return sum
}

// mean is t's mean job time (0 when it has none).
func (t Times) mean() time.Duration {
	if t.n() == 0 {
		return 0
	}
	return t.total() / time.Duration(t.n())
}

// Snapshot returns every resource and size's jobs, sorted by resource then
// size. A key with no job in the last Span keeps its times but counts 0
// jobs, and is left out.
func (r *Recorder) Snapshot() []Times {
	now := clock.Or(r.Clock).Now().UnixNano() / int64(bucketSpan)
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Times, 0, len(r.rings))
	for k, g := range r.rings {
		t := Times{Resource: k.resource, Size: k.size}
		for _, b := range g.buckets {
			if b.count > 0 && b.start > now-Buckets && b.start <= now {
				t.Count += b.count
				t.Total += b.total
			}
		}
		if t.Count == 0 {
			continue
		}
		t.Times = make([]time.Duration, 0, g.n)
		start := (g.next - g.n + Window) % Window
		for i := range g.n {
			t.Times = append(t.Times, g.times[(start+i)%Window])
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Times) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Size, b.Size))
	})
	return out
}

// p95 is the nearest-rank 95th percentile of ts (not empty).
func p95(ts []time.Duration) time.Duration {
	s := slices.Clone(ts)
	slices.Sort(s)
	rank := (95*len(s) + 99) / 100 // ceil(0.95·n), 1-based
	return s[max(rank, 1)-1]
}
