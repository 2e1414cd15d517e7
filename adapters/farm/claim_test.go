package farm

import (
	"testing"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/engine/tenant"
)

// TestClaimHoldsASlotUntilTheJobEnds: a recovered job holds a slot on its
// backend (so new jobs go elsewhere) and an admission token, both released
// when it ends; one on a backend no longer configured holds no slot.
func TestClaimHoldsASlotUntilTheJobEnds(t *testing.T) {
	f, _, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 4}, 2)
	eng, err := engine.New(engine.Options{Namespace: t.Name() + "/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	claim := f.Claim(eng, nil)
	release := claim(jobs.Job{ID: "j1", Tenant: "192.0.2.1", Resource: "zimage_generate", Backend: "b"})
	if st := f.Stats(); st.Backends[1].InUse != 1 || st.Backends[0].InUse != 0 {
		t.Fatalf("after the claim: %+v", st.Backends)
	}
	lost := claim(jobs.Job{ID: "j2", Tenant: "192.0.2.2", Resource: "zimage_generate", Backend: "http://gone:8188"})
	release(nil)
	lost(nil)
	if st := f.Stats(); st.Backends[1].InUse != 0 || len(st.Tenants) != 0 {
		t.Fatalf("after the release: %+v", st)
	}
}

// TestClaimCountsTheJobAsItsCaller: a recovered job of an identified
// tenant is adopted under its tier (and tenant), not as an anonymous
// caller named after its tenant, and holds its slot in its tier's class.
func TestClaimCountsTheJobAsItsCaller(t *testing.T) {
	f, _, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 4}, 1)
	eng, err := engine.New(engine.Options{Namespace: t.Name() + "/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	release := f.Claim(eng, nil)(jobs.Job{ID: "j1", Tenant: "acme", Origin: "192.0.2.1", Tier: "vip", Resource: "zimage_generate", Backend: "a"})
	defer release(nil)
	if st := f.Stats(); len(st.Tenants) != 1 || st.Tenants[0].Tier != "vip" || st.Tenants[0].Class != tenant.High || st.Classes[tenant.High].Running != 1 {
		t.Fatalf("the farm shows the recovered job as %+v", st)
	}
	for _, st := range eng.Stats() {
		if st.Resource != "zimage_generate" {
			continue
		}
		if st.InFlight != 1 || st.Tiers["vip"].Passed != 1 || st.Tiers["anonymous"].Passed != 0 {
			t.Fatalf("adopted as %+v; want one vip job in flight", st)
		}
		return
	}
	t.Fatal("no statistics of zimage_generate")
}
