package engine

import (
	"math"
	"sync"
	"time"
)

// The job-time histogram: rtSlots one-second slots (the last 10 s), each
// with rtBuckets buckets whose upper bounds grow by rtGrowth from 1 ms; the
// last bucket holds everything longer.
const (
	rtSlots   = 10
	rtBuckets = 96
	rtGrowth  = 1.2
)

// rtBounds are the buckets' upper bounds in milliseconds: 1, 1.2, 1.44,
// ..., 1.2^94 ≈ 2.8e7 (about 7.7 hours) at the last but one; the last is
// unbounded.
var rtBounds = func() [rtBuckets]float64 {
	var b [rtBuckets]float64
	for i := range b {
		b[i] = math.Pow(rtGrowth, float64(i))
	}
	b[rtBuckets-1] = math.Inf(1)
	return b
}()

// rtHistogram counts job times per second over the last rtSlots seconds of
// the engine's clock, for the p95. Recording takes one short lock and
// allocates nothing.
type rtHistogram struct {
	mu    sync.Mutex
	slots [rtSlots]rtSlot
}

type rtSlot struct {
	sec    int64 // the Unix second the counts are of
	counts [rtBuckets]uint32
}

func newRTHistogram() *rtHistogram { return &rtHistogram{} }

// rtBucket is the bucket of a job time: the first whose bound is >= ms.
func rtBucket(ms int64) int {
	v := float64(ms)
	lo, hi := 0, rtBuckets-1
	for lo < hi {
		mid := (lo + hi) / 2
		if rtBounds[mid] >= v {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// record counts one job of ms milliseconds ended at now.
func (h *rtHistogram) record(now time.Time, ms int64) {
	sec := now.Unix()
	b := rtBucket(ms)
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &h.slots[uint64(sec)%rtSlots]
	if s.sec != sec {
		*s = rtSlot{sec: sec}
	}
	s.counts[b]++
}

// p95 is the 95th percentile of the job times of the last rtSlots seconds
// before now (the current second included), interpolated within its
// bucket; 0 when no job ended then.
func (h *rtHistogram) p95(now time.Time) float64 {
	if h == nil {
		return 0
	}
	sec := now.Unix()
	var sum [rtBuckets]uint64
	var total uint64
	h.mu.Lock()
	for i := range h.slots {
		s := &h.slots[i]
		if s.sec > sec || sec-s.sec >= rtSlots {
			continue
		}
		for b, n := range s.counts {
			sum[b] += uint64(n)
			total += uint64(n)
		}
	}
	h.mu.Unlock()
	if total == 0 {
		return 0
	}
	rank := math.Ceil(0.95 * float64(total))
	var seen uint64
	for b, n := range sum {
		if n == 0 || float64(seen+n) < rank {
			seen += n
			continue
		}
		lo := 0.0
		if b > 0 {
			lo = rtBounds[b-1]
		}
		hi := rtBounds[b]
		if math.IsInf(hi, 1) {
			return lo
		}
		return lo + (hi-lo)*(rank-float64(seen))/float64(n)
	}
	return 0
}
