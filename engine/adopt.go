package engine

import (
	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/hotspot"
	"github.com/alibaba/sentinel-golang/core/stat"

	"github.com/sluicehq/sluice/rules"
)

// Adopt admits a call that is already running — a job a restarted gateway
// takes up on its backend — without checking any rule: it never refuses.
// The call then counts like an admitted one, against concurrency rules and
// in the statistics, until its Token is Exited, which the caller does when
// the job ends. An unknown resource gives nil, whose Exit does nothing.
//
// This is the minimal version the jobs wiring needs; the engine's own
// admission code may replace it with one sharing Guard's internals.
func (e *Engine) Adopt(c Call) *Token {
	rs := e.state.Load().res[c.Resource]
	if rs == nil {
		return nil
	}
	cost := uint32(c.Cost)
	if c.Cost <= 0 {
		cost = rs.costOf(c.Size)
	}
	tok := &Token{stats: rs.stats, Cost: int(cost)}
	// A chain with sentinel-golang's statistics slots and no rule check:
	// the entry passes and is counted (in flight, passed) as Guard's are,
	// and its Exit runs the same slots' completion.
	sc := base.NewSlotChain()
	sc.AddStatPrepareSlot(stat.DefaultResourceNodePrepareSlot)
	sc.AddStatSlot(stat.DefaultSlot)
	sc.AddStatSlot(flow.DefaultStandaloneStatSlot)
	sc.AddStatSlot(hotspot.DefaultConcurrencyStatSlot)
	sctx := sc.GetPooledContext()
	sctx.Resource = rs.wrapper
	sctx.Input.BatchCount = cost
	tok.args[argResource] = rs
	if rs.needArgs {
		tok.args[rules.ArgOrigin] = c.Origin
		tok.args[rules.ArgSize] = rs.sizeArg(c.Size)
	}
	sctx.Input.Args = tok.args[:]
	entry := base.NewSentinelEntry(sctx, rs.wrapper, sc)
	sctx.SetEntry(entry)
	sc.Entry(sctx)
	tok.entry = entry
	rs.stats.passed.Add(1)
	return tok
}
