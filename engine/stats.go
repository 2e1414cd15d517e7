package engine

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/alibaba/sentinel-golang/core/base"
	sbase "github.com/alibaba/sentinel-golang/core/stat/base"

	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// resStats are the engine's own counters of one resource, beside
// sentinel-golang's node: totals, and refusals per kind per second.
type resStats struct {
	passed, completed, failed atomic.Uint64
	refusedTotal              [len(kindIndex)]atomic.Uint64
	refusedWin                [len(kindIndex)]*sbase.SlidingWindowMetric
	refusedArr                [len(kindIndex)]*sbase.BucketLeapArray
	// shadow* count the refusals shadow rules would have made, apart.
	shadowTotal [len(kindIndex)]atomic.Uint64
	shadowWin   [len(kindIndex)]*sbase.SlidingWindowMetric
	shadowArr   [len(kindIndex)]*sbase.BucketLeapArray
	// tiers are the admissions and refusals by the callers' tier.
	tiersMu sync.Mutex // serialises adding a tier
	tiers   atomic.Pointer[map[string]*tierStats]
}

// maxTiers bounds the tiers counted apart: tier names come with the
// credentials (a JWT claim), so a flood of made-up tiers must not grow the
// statistics or the metrics' series. Tiers beyond it count as OtherTier.
const maxTiers = 32

// OtherTier is where the statistics count the tiers beyond the first 32
// seen.
const OtherTier = "other"

// tierStats counts one tier's admissions and refusals on a resource.
type tierStats struct {
	passed  atomic.Uint64
	refused [len(kindIndex)]atomic.Uint64
}

func (t *tierStats) refuse(k Kind) { t.refused[kindPos(k)].Add(1) }

// tier returns the counters of tier, adding them the first time (copy on
// write: the lookup of a known tier takes no lock).
func (s *resStats) tier(name string) *tierStats {
	if t, ok := (*s.tiers.Load())[name]; ok {
		return t
	}
	s.tiersMu.Lock()
	defer s.tiersMu.Unlock()
	old := *s.tiers.Load()
	if t, ok := old[name]; ok {
		return t
	}
	if len(old) >= maxTiers {
		name = OtherTier
		if t, ok := old[name]; ok {
			return t
		}
	}
	next := maps.Clone(old)
	t := &tierStats{}
	next[name] = t
	s.tiers.Store(&next)
	return t
}

// kindIndex orders the kinds in the statistics' arrays.
var kindIndex = [...]Kind{KindFlow, KindHotspot, KindConcurrency, KindSystem, KindCPU, KindBan, KindGPU, KindTierRate}

// Refusal rates are kept over a one-second window of two buckets, the same
// span as sentinel-golang's per-second figures.
const (
	rateSamples    = 2
	rateIntervalMs = 1000
)

func newResStats() *resStats {
	s := &resStats{}
	// The anonymous tier's counters exist from the start, so rates over
	// them begin at zero rather than at the first call.
	s.tiers.Store(&map[string]*tierStats{tenant.AnonymousTier: {}})
	for i := range kindIndex {
		s.refusedArr[i], s.refusedWin[i] = rateWindow()
		s.shadowArr[i], s.shadowWin[i] = rateWindow()
	}
	return s
}

// rateWindow is a one-second window of refusals.
func rateWindow() (*sbase.BucketLeapArray, *sbase.SlidingWindowMetric) {
	a := sbase.NewBucketLeapArray(rateSamples, rateIntervalMs)
	m, err := sbase.NewSlidingWindowMetric(rateSamples, rateIntervalMs, a)
	if err != nil {
		panic("engine: refusal window: " + err.Error()) // constant arguments: cannot happen
	}
	return a, m
}

func kindPos(k Kind) int {
	for i, kk := range kindIndex {
		if kk == k {
			return i
		}
	}
	return 0
}

func (s *resStats) refuse(k Kind) {
	i := kindPos(k)
	s.refusedTotal[i].Add(1)
	s.refusedArr[i].AddCount(base.MetricEventBlock, 1)
}

// shadowRefuse counts a refusal a shadow rule would have made.
func (s *resStats) shadowRefuse(k Kind) {
	i := kindPos(k)
	s.shadowTotal[i].Add(1)
	s.shadowArr[i].AddCount(base.MetricEventBlock, 1)
}

// ResourceStats is a snapshot of one resource's live statistics.
type ResourceStats struct {
	Resource string `json:"resource"`
	// Per second, over the last second, in jobs whatever their cost.
	PassedPerSec    float64          `json:"passed_per_sec"`
	RefusedPerSec   map[Kind]float64 `json:"refused_per_sec"`
	CompletedPerSec float64          `json:"completed_per_sec"`
	FailedPerSec    float64          `json:"failed_per_sec"`
	// AvgRTMillis is the average time from admission to Exit, in
	// milliseconds, over the last second: the real job time.
	AvgRTMillis float64 `json:"avg_rt_ms"`
	// P95RTMillis is the 95th percentile of the same job times over the
	// last 10 s of the engine's clock (0 when no job ended then), within
	// its bucket (bucket bounds grow by 20 %).
	P95RTMillis float64 `json:"p95_rt_ms"`
	InFlight    int64   `json:"in_flight"`
	// ShadowPerSec and Shadow count the calls shadow rules would have
	// refused, by kind: per second over the last second, and since the
	// engine started. Those calls were admitted (unless an enforcing rule
	// refused them, which Refused counts).
	ShadowPerSec map[Kind]float64 `json:"shadow_per_sec"`
	Shadow       map[Kind]uint64  `json:"shadow_total"`
	// Since the engine started.
	Passed    uint64          `json:"passed_total"`
	Refused   map[Kind]uint64 `json:"refused_total"`
	Completed uint64          `json:"completed_total"`
	Failed    uint64          `json:"failed_total"`
	// Tiers splits Passed and Refused by the callers' tier ("anonymous"
	// for anonymous callers; OtherTier beyond the first 32 tiers seen).
	Tiers map[string]TierStats `json:"tiers"`
}

// TierStats counts one tier's calls to a resource since the engine
// started.
type TierStats struct {
	Passed  uint64          `json:"passed_total"`
	Refused map[Kind]uint64 `json:"refused_total"`
}

// Stats returns a snapshot of every resource's statistics, in the order of
// rules.Resources.
func (e *Engine) Stats() []ResourceStats {
	st := e.state.Load()
	now := e.clock.Now()
	out := make([]ResourceStats, 0, len(rules.Resources))
	for _, name := range rules.Resources {
		rs := st.res[name]
		s, jobs := rs.stats, rs.jobs
		r := ResourceStats{
			Resource:        name,
			PassedPerSec:    jobs.GetQPS(base.MetricEventPass),
			CompletedPerSec: jobs.GetQPS(base.MetricEventComplete),
			FailedPerSec:    jobs.GetQPS(base.MetricEventError),
			AvgRTMillis:     jobs.AvgRT(),
			P95RTMillis:     rs.rt.p95(now),
			ShadowPerSec:    make(map[Kind]float64, len(kindIndex)),
			Shadow:          make(map[Kind]uint64, len(kindIndex)),
			InFlight:        rs.inFlight.Load(),
			RefusedPerSec:   make(map[Kind]float64, len(kindIndex)),
			Refused:         make(map[Kind]uint64, len(kindIndex)),
			Passed:          s.passed.Load(),
			Completed:       s.completed.Load(),
			Failed:          s.failed.Load(),
		}
		for i, k := range kindIndex {
			r.RefusedPerSec[k] = s.refusedWin[i].GetQPS(base.MetricEventBlock)
			r.Refused[k] = s.refusedTotal[i].Load()
			r.ShadowPerSec[k] = s.shadowWin[i].GetQPS(base.MetricEventBlock)
			r.Shadow[k] = s.shadowTotal[i].Load()
		}
		tiers := *s.tiers.Load()
		r.Tiers = make(map[string]TierStats, len(tiers))
		for name, t := range tiers {
			ts := TierStats{Passed: t.passed.Load(), Refused: make(map[Kind]uint64, len(kindIndex))}
			for i, k := range kindIndex {
				ts.Refused[k] = t.refused[i].Load()
			}
			r.Tiers[name] = ts
		}
		out = append(out, r)
	}
	return out
}
