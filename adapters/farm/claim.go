package farm

import (
	"cmp"
	"log/slog"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
)

// Claim makes a recovered job (one a restarted gateway follows on its
// backend) hold what a job running on a backend holds: an admission token
// of eng (counted against concurrency and in the statistics, never refused)
// and a slot on the backend it runs on (taken past the backend's slots if
// need be), so that new jobs are not sent to a backend still busy with it.
// Both are released when the job ends, whichever way. The token counts as
// the job's caller was counted: its tier, and its tenant when identified
// (its origin when anonymous).
func (f *Farm) Claim(eng *engine.Engine) jobs.ClaimFunc {
	return func(j jobs.Job) func(error) {
		origin, tenantName := j.Caller()
		tok := eng.Adopt(engine.Call{Resource: j.Resource, Origin: origin, Tenant: tenantName, Tier: j.Tier,
			Size: cmp.Or(j.Params.Size, max(j.Params.Width, j.Params.Height))})
		lease, err := f.d.Adopt(j.Backend, j.Tenant)
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
