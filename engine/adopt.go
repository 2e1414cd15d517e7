package engine

import (
	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/stat"
)

// Adopt returns a token for a job that is already running — one a
// restarted gateway found still on its backend — without asking any rule:
// the job was admitted before the restart and refusing it now would not
// stop it. Until its Exit it counts as a job in flight of the resource (so
// concurrency refuses new calls beyond it), in the statistics and in the
// system rules, shadow ones included. It returns nil (whose Exit does nothing) for a resource the
// engine does not know.
func (e *Engine) Adopt(c Call) *Token {
	r := e.res[c.Resource]
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	tok := &Token{}
	sctx, entry := e.newEntry(r, e.state.Load().res[r.name], tok, &c)
	// The chain's statistics only: no rule check runs.
	stat.DefaultResourceNodePrepareSlot.Prepare(sctx)
	(&statSlot{e: e}).OnEntryPassed(sctx)
	flow.DefaultStandaloneStatSlot.OnEntryPassed(sctx)
	r.inFlight.Add(1)
	r.stats.passed.Add(1) // admitted before the restart: counted here, as its end will be
	r.stats.tier(c.tier()).passed.Add(1)
	tok.entry = entry
	tok.start = e.clock.Now()
	return tok
}
