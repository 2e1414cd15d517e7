package dispatch_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/tenant"
)

// TestTenantBusyRetryAfterCountsItsClassAndAbove: a tenant at its in-flight
// cap is told to come back after the jobs that would be served before its
// retry, those of its class and the higher ones, not after the lower
// classes' too. (The abuse benchmark's tiers scenario: registered clients
// at their cap behind 20 anonymous jobs were told Retry-After 3 s, their
// whole deadline, instead of one job's time.)
func TestTenantBusyRetryAfterCountsItsClassAndAbove(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), TenantInFlight: 1, MaxQueue: 100})
	reg := dispatch.Request{Tenant: "reg", Class: tenant.Medium, InFlight: 1}
	held, err := d.Acquire(ctx, reg) // reg runs its job: at its cap
	if err != nil {
		t.Fatal(err)
	}
	busy := func(req dispatch.Request) time.Duration {
		t.Helper()
		_, err := d.Acquire(ctx, req)
		r := refusal(t, err, dispatch.ReasonTenantBusy)
		if c := d.Check(req); c == nil || c.RetryAfter != r.RetryAfter {
			t.Errorf("Check says %v, Acquire %v", c, r)
		}
		return r.RetryAfter
	}
	job := dispatch.DefaultJobTime // no job measured yet; one slot
	if got := busy(reg); got != job {
		t.Errorf("nothing waiting: %v, want one job, %v", got, job)
	}
	out := make(chan served, 6)
	var wg sync.WaitGroup
	for i := range 4 {
		submit(t, d, classJob(fmt.Sprintf("anon%d", i), tenant.Low), i+1, out, &wg)
	}
	if got := busy(reg); got != job {
		t.Errorf("4 low jobs waiting: %v, want one job, %v (they are served after reg's)", got, job)
	}
	for i := range 2 {
		submit(t, d, classJob(fmt.Sprintf("reg%d", i), tenant.Medium), 5+i, out, &wg)
	}
	if got, want := busy(reg), 2*job; got != want {
		t.Errorf("2 medium and 4 low jobs waiting: %v, want %v", got, want)
	}
	// A low tenant at its cap waits for every class's jobs.
	if got, want := busy(dispatch.Request{Tenant: "anon0", Class: tenant.Low}), 6*job; got != want {
		t.Errorf("anon0 at its cap, 6 jobs waiting: %v, want %v", got, want)
	}
	held.Release(0)
	for range 6 {
		s := <-out
		if s.err != nil {
			t.Fatalf("%s: %v", s.job.name, s.err)
		}
		s.lease.Release(0)
	}
	wg.Wait()
	checkIdle(t, d, 7)
}

// classJob is a job named name, of its own tenant (name) in class cls.
func classJob(name string, cls tenant.Class) job {
	return job{name, dispatch.Request{Tenant: name, Class: cls}}
}
