package jobs_test

import (
	"testing"

	"github.com/sluicehq/sluice/engine/jobs"
)

// TestCallerKeepsOriginAndTenantApart: a job's record keeps its caller's
// origin beside its tenant, so that a job taken up after a restart is
// counted by its tenant when identified and by its origin when anonymous.
func TestCallerKeepsOriginAndTenantApart(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		job                  jobs.Job
		wantOrigin, wantName string
	}{
		{"identified", jobs.Job{Tenant: "acme", Origin: "192.0.2.7", Tier: "vip"}, "192.0.2.7", "acme"},
		{"anonymous", jobs.Job{Tenant: "192.0.2.7", Origin: "192.0.2.7", Tier: "anonymous"}, "192.0.2.7", ""},
		{"identified in the anonymous tier", jobs.Job{Tenant: "acme", Origin: "192.0.2.7", Tier: "anonymous"}, "192.0.2.7", "acme"},
		{"old anonymous record", jobs.Job{Tenant: "192.0.2.7"}, "192.0.2.7", ""},
		{"old identified record", jobs.Job{Tenant: "acme", Tier: "registered"}, "", "acme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.job.ID, tc.job.State = "j1", jobs.Queued
			b, err := jobs.MarshalRecord(tc.job)
			if err != nil {
				t.Fatal(err)
			}
			j, err := jobs.UnmarshalRecord(b)
			if err != nil {
				t.Fatal(err)
			}
			if j.Origin != tc.job.Origin || j.Tenant != tc.job.Tenant || j.Tier != tc.job.Tier {
				t.Fatalf("record round trip: %+v", j)
			}
			origin, name := j.Caller()
			if origin != tc.wantOrigin || name != tc.wantName {
				t.Fatalf("Caller() = %q, %q; want %q, %q", origin, name, tc.wantOrigin, tc.wantName)
			}
		})
	}
}
