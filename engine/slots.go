package engine

import (
	"fmt"
	"math"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"
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

// Slot orders: bans first, so a banned origin spends nothing; the CPU check
// beside sentinel-golang's system slot (1000); hotspot before flow (2000),
// whose throttling books a place in its pacing that a later refusal would
// not give back: a client over its own limit must not slow the others.
const (
	banSlotOrder     = 500
	cpuSlotOrder     = 1001
	hotspotSlotOrder = 1500
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
	if rs := resOf(ctx); rs != nil && !g.need(rs) {
		return nil
	}
	return g.RuleCheckSlot.Check(ctx)
}

// resOf returns the resState Guard passed with the call; nil for entries
// made outside Guard.
func resOf(ctx *base.EntryContext) *resState {
	if len(ctx.Input.Args) <= argResource {
		return nil
	}
	rs, _ := ctx.Input.Args[argResource].(*resState)
	return rs
}

// banSlot refuses origins banned by a resource's ban rule.
type banSlot struct{ e *Engine }

func (s *banSlot) Order() uint32 { return banSlotOrder }

func (s *banSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	rs := resOf(ctx)
	if rs == nil || rs.ban == nil {
		return nil
	}
	origin, _ := ctx.Input.Args[0].(string)
	left, banned := s.e.bans.banned(rs.name, origin)
	if !banned {
		return nil
	}
	return base.NewTokenResultBlockedWithCause(base.BlockTypeUnknown, "origin banned", rs.banRule, left)
}

// cpuSlot refuses inbound calls while the machine's CPU usage is above the
// system document's cpu_usage.
type cpuSlot struct{ e *Engine }

func (s *cpuSlot) Order() uint32 { return cpuSlotOrder }

func (s *cpuSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	st := s.e.state.Load()
	if st.cpuLimit <= 0 {
		return nil
	}
	usage := math.Float64frombits(s.e.cpuBits.Load())
	if usage <= st.cpuLimit {
		return nil
	}
	return base.NewTokenResultBlockedWithCause(base.BlockTypeSystemFlow, "machine cpu usage", st.cpuRule, usage)
}
