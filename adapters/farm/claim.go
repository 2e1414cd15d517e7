package farm

import (
	"cmp"
	"log/slog"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/rules"
)

// Claim makes a recovered job (one a restarted gateway follows on its
// backend) hold what a job running on a backend holds: an admission token
// of eng (counted against concurrency and in the statistics, never refused)
// and a slot on the backend it runs on (taken past the backend's slots if
// need be), so that new jobs are not sent to a backend still busy with it.
// Both are released when the job ends, whichever way. The token counts as
// the job's caller was counted: its tier, and its tenant when identified
// (its origin when anonymous); the slot shows in the farm's Stats under
// its tenant, tier and the tier's priority class in tiers (nil: the
// built-in tiers; a tier they lack: low).
func (f *Farm) Claim(eng *engine.Engine, tiers httpapi.TierSource) jobs.ClaimFunc {
	return func(j jobs.Job) func(error) {
		origin, tenantName := j.Caller()
		tok := eng.Adopt(engine.Call{Resource: j.Resource, Origin: origin, Tenant: tenantName, Tier: j.Tier,
			Size: cmp.Or(j.Params.Size, max(j.Params.Width, j.Params.Height))})
		req := dispatch.Request{Tenant: j.Tenant, Tier: j.Tier}
		if tier, ok := tiersOf(tiers).Tier(j.Tier); ok {
			req.Class = tier.Priority
		}
		lease, err := f.d.Adopt(j.Backend, req)
		if err != nil { // a backend no longer configured: the job fails at once
			f.log.Warn("recovered async job holds no slot", slog.String("job", j.ID), slog.Any("error", err))
		}
		return func(err error) {
			if lease != nil {
				lease.Release(0) // the job's time here is not a whole job's
			}
			tok.Exit(err)
		}
	}
}

// tiersOf is the tiers in force of src, the built-in ones without.
func tiersOf(src httpapi.TierSource) *rules.Tiers {
	if src != nil {
		if t := src.Tiers(); t != nil {
			return t
		}
	}
	return rules.DefaultTiers()
}
