package engine

import (
	"fmt"
	"math"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/stat"
	"github.com/alibaba/sentinel-golang/core/system"
	"github.com/alibaba/sentinel-golang/core/system_metric"
)

// ownRule is a rule the engine checks itself, in the form sentinel-golang's
// block errors carry.
type ownRule struct {
	id        string
	resource  string
	kind      Kind
	threshold float64
	window    time.Duration
	// tightened names the flow rule a GPU tighten scaled.
	tightened string
}

func (r *ownRule) ResourceName() string { return r.resource }
func (r *ownRule) String() string {
	return fmt.Sprintf("%s rule %s (threshold %v)", r.kind, r.id, r.threshold)
}

// Slot orders: bans first, so a banned origin spends nothing; the system
// check where sentinel-golang's was (1000) and the CPU and GPU checks beside
// it; hotspot before flow (2000), so that a client over its own limit is
// refused for that before anything shared; concurrency where
// sentinel-golang's isolation was (3000); throttle pacing last, so that a
// paced call books its slot only once nothing else can refuse it.
const (
	banSlotOrder         = 500
	systemSlotOrder      = 1000
	cpuSlotOrder         = 1001
	hotspotSlotOrder     = 1500
	concurrencySlotOrder = 3000
	paceSlotOrder        = 9000
)

// gated runs a sentinel-golang slot only for resources that have its kind
// of rule.
type gated struct {
	base.RuleCheckSlot
	need func(*resState) bool
	// order, when not 0, moves the slot in the chain.
	order uint32
}

func (g gated) Order() uint32 {
	if g.order != 0 {
		return g.order
	}
	return g.RuleCheckSlot.Order()
}

func (g gated) Check(ctx *base.EntryContext) *base.TokenResult {
	if tok := tokenOf(ctx); tok != nil && !g.need(tok.res) {
		return nil
	}
	return g.RuleCheckSlot.Check(ctx)
}

// tokenOf returns the Token Guard passed with the call; nil for entries
// made outside Guard.
func tokenOf(ctx *base.EntryContext) *Token {
	if len(ctx.Input.Args) <= argToken {
		return nil
	}
	tok, _ := ctx.Input.Args[argToken].(*Token)
	return tok
}

// banSlot refuses callers banned by a resource's ban rule: tenants of
// identified calls, origins of anonymous ones.
type banSlot struct{ e *Engine }

func (s *banSlot) Order() uint32 { return banSlotOrder }

func (s *banSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	tok := tokenOf(ctx)
	if tok == nil || tok.res.ban == nil {
		return nil
	}
	if tok.who.who == "" {
		return nil
	}
	left, banned := s.e.bans.banned(tok.res.banName, tok.who)
	if !banned {
		return nil
	}
	return base.NewTokenResultBlockedWithCause(base.BlockTypeUnknown, "banned", tok.res.banRule, left)
}

// systemSlot checks the system document's load, average response time,
// concurrency and inbound rate against this engine's own figures, per job:
// sentinel-golang's system slot reads process-wide figures weighted by cost.
type systemSlot struct{ e *Engine }

func (s *systemSlot) Order() uint32 { return systemSlotOrder }

func (s *systemSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	tok := tokenOf(ctx)
	if tok == nil || !tok.res.hasSystem {
		return nil
	}
	in := tok.res.inbound
	for _, r := range tok.res.system {
		var v float64
		var over bool
		switch r.MetricType {
		case system.Load:
			v = system_metric.CurrentLoad()
			over = v > r.TriggerCount
		case system.AvgRT:
			v = in.AvgRT()
			over = v >= r.TriggerCount
		case system.Concurrency:
			v = float64(in.CurrentConcurrency())
			if tok.res.isShadow {
				// Every job in flight (admitted before the shadow rules
				// came, adopted after a restart) but those the shadow
				// rules would have refused, and this call itself.
				v = float64(int64(s.e.inbound.CurrentConcurrency()) - s.e.shadowOut.Load() - tok.selfInbound)
			}
			over = v >= r.TriggerCount
		case system.InboundQPS:
			v = in.GetQPS(base.MetricEventPass)
			over = v >= r.TriggerCount
		}
		if over {
			return base.NewTokenResultBlockedWithCause(base.BlockTypeSystemFlow, "system "+r.MetricType.String(), r, v)
		}
	}
	return nil
}

// cpuSlot refuses inbound calls while the gateway's own CPU usage is above the
// system document's cpu_usage.
type cpuSlot struct{ e *Engine }

func (s *cpuSlot) Order() uint32 { return cpuSlotOrder }

func (s *cpuSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	tok := tokenOf(ctx)
	if tok == nil || tok.res.cpuLimit <= 0 {
		return nil
	}
	usage := math.Float64frombits(s.e.cpuBits.Load())
	if usage <= tok.res.cpuLimit {
		return nil
	}
	return base.NewTokenResultBlockedWithCause(base.BlockTypeSystemFlow, "gateway cpu usage", tok.res.cpuRule, usage)
}

// concurrencySlot refuses a call while the resource has its concurrency in
// jobs in flight, whatever their cost. Guard runs it under the resource's
// lock and counts the admitted call in flight before letting go, so the
// limit is exact.
type concurrencySlot struct{}

func (concurrencySlot) Order() uint32 { return concurrencySlotOrder }

func (concurrencySlot) Check(ctx *base.EntryContext) *base.TokenResult {
	tok := tokenOf(ctx)
	if tok == nil || tok.res.concurrency <= 0 || tok.res.inFlightOf() < tok.res.concurrency {
		return nil
	}
	return base.NewTokenResultBlockedWithCause(base.BlockTypeIsolation, "concurrency", tok.res.concurrencyRule, nil)
}

// statSlot records an admission in the resource's node weighted by cost
// (what flow rules count), and per job in the resource's and the engine's
// own nodes; a completion only per job, with the response time from
// admission (after any pacing) to Exit on the engine's clock.
type statSlot struct{ e *Engine }

func (s *statSlot) Order() uint32 { return 1000 }

func (s *statSlot) OnEntryPassed(ctx *base.EntryContext) {
	tok := tokenOf(ctx)
	if tok == nil {
		return
	}
	tok.res.node.AddCount(base.MetricEventPass, int64(ctx.Input.BatchCount))
	tok.res.jobs.AddCount(base.MetricEventPass, 1)
	tok.res.inbound.AddCount(base.MetricEventPass, 1)
	tok.res.inbound.IncreaseConcurrency()
	tok.counted = true
}

func (s *statSlot) OnEntryBlocked(*base.EntryContext, *base.BlockError) {}

func (s *statSlot) OnCompleted(ctx *base.EntryContext) {
	tok := tokenOf(ctx)
	if tok == nil {
		return
	}
	if !tok.counted {
		// sentinel-golang recovered a panic in the chain and admitted the
		// call without this slot's OnEntryPassed: nothing to take back.
		return
	}
	tok.res.inbound.DecreaseConcurrency()
	if tok.abandoned {
		return
	}
	now := s.e.clock.Now()
	rt := int64(max(now.Sub(tok.start), 0) / time.Millisecond)
	completed(tok.res.jobs, rt, ctx.Err())
	completed(tok.res.inbound, rt, ctx.Err())
	if h := tok.res.rt; h != nil {
		h.record(now, rt)
	}
}

// completed records one job's completion in n.
func completed(n *stat.ResourceNode, rtMillis int64, err error) {
	if err != nil {
		n.AddCount(base.MetricEventError, 1)
	}
	n.AddCount(base.MetricEventRt, rtMillis)
	n.AddCount(base.MetricEventComplete, 1)
}
