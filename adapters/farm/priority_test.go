package farm

import (
	"context"
	"testing"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine/tenant"
)

// TestFarmPassesClassAndInFlight: a job's class orders the farm's queue (a
// high job queued after a low one runs first), its InFlight bounds its
// tenant's jobs in place of Config.TenantInFlight, Precheck reads both,
// and the queue's positions and the stats show them.
func TestFarmPassesClassAndInFlight(t *testing.T) {
	f, bs, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 1, MaxQueue: 8}, 1)
	a := bs[0]
	ctx := context.Background()
	job := func(prompt, ten, tier string, cls tenant.Class, inFlight int) httpapi.Job {
		j := generate(ten)
		j.Prompt, j.Tier, j.Class, j.InFlight = prompt, tier, cls, inFlight
		return j
	}
	first := runAsync(f, ctx, job("first", "192.0.2.1", tenant.AnonymousTier, tenant.Low, 0))
	running := a.next(t)

	low := job("low", "192.0.2.2", tenant.AnonymousTier, tenant.Low, 0)
	lowPos := make(chan func() int, 1)
	low.OnQueued = func(p func() int) { lowPos <- p }
	lowDone := runAsync(f, ctx, low)
	waitFor(t, func() bool { return f.Stats().Queued == 1 })
	var vipDone []<-chan error
	for i, prompt := range []string{"vip-1", "vip-2"} {
		vipDone = append(vipDone, runAsync(f, ctx, job(prompt, "acme", "vip", tenant.High, 2)))
		waitFor(t, func() bool { return f.Stats().Queued == 2+i })
	}
	if p := (<-lowPos)(); p != 3 {
		t.Errorf("the low job at place %d behind two high ones, want 3", p)
	}
	if err := f.Precheck(job("vip-3", "acme", "vip", tenant.High, 2)); !isBusy(err) {
		t.Errorf("a third job of a tier with 2 in flight: %v, want busy", err)
	}
	if err := f.Precheck(job("vip-3", "acme", "vip", tenant.High, 3)); err != nil {
		t.Errorf("a third job of a tier with 3 in flight: %v", err)
	}
	st := f.Stats()
	if st.Classes[tenant.High].Waiting != 2 || st.Classes[tenant.Low].Waiting != 1 || st.Classes[tenant.Low].Running != 1 {
		t.Errorf("classes %+v", st.Classes)
	}
	for _, ts := range st.Tenants {
		if ts.Tenant == "acme" && (ts.Tier != "vip" || ts.Class != tenant.High || ts.Waiting != 2) {
			t.Errorf("acme's stats %+v", ts)
		}
	}

	running.finish(nil)
	for _, want := range []string{"vip-1", "vip-2", "low"} {
		r := a.next(t)
		if r.job.Prompt != want {
			t.Fatalf("%s ran next, want %s", r.job.Prompt, want)
		}
		r.finish(nil)
	}
	for _, errc := range append(vipDone, first, lowDone) {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}
