package dispatch_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
)

// TestLastBackendGoneRefusesWaiters: jobs waiting for a slot when the last
// healthy backend goes are refused at once, not left to wait until their
// clients give up.
func TestLastBackendGoneRefusesWaiters(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1), TenantInFlight: 10})
	a, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	b, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	out := make(chan result, 2)
	var wg sync.WaitGroup
	acquireAsync(d, ctx, "b", 0, 1, 1, out, &wg)
	acquireAsync(d, ctx, "c", 1, 1, 2, out, &wg)
	d.SetHealthy("gpu0", false)
	if s := d.Stats(); s.Queued != 2 {
		t.Fatalf("%d waiting while a backend is left, want 2", s.Queued)
	}
	d.SetHealthy("gpu1", false)
	for range 2 {
		r := <-out
		refusal(t, r.err, dispatch.ReasonNoBackend)
	}
	wg.Wait()
	d.SetHealthy("gpu0", true)
	d.SetHealthy("gpu1", true)
	a.Release(time.Second)
	b.Release(time.Second)
	checkIdle(t, d, 2)
}

// TestRequeueKeepsItsPlace: a job taken back from a backend taken out waits
// (even with no backend healthy, where a new job is refused), comes before
// the jobs that queued after it, and goes to the first backend back.
func TestRequeueKeepsItsPlace(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1), TenantInFlight: 10})
	first, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1}) // gpu0
	other, _ := d.Acquire(ctx, dispatch.Request{Tenant: "z", Cost: 1}) // gpu1
	if first.Backend() != "gpu0" || other.Backend() != "gpu1" {
		t.Fatalf("leases on %s and %s", first.Backend(), other.Backend())
	}
	// Two later jobs of other tenants wait.
	out := make(chan result, 3)
	var wg sync.WaitGroup
	acquireAsync(d, ctx, "b", 1, 1, 1, out, &wg)
	acquireAsync(d, ctx, "c", 2, 1, 2, out, &wg)

	// gpu0 is taken out: its job goes back, ahead of b and c.
	d.SetHealthy("gpu0", false)
	posc := make(chan func() int, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		l, err := d.Requeue(ctx, first, 1, func(p func() int) { posc <- p })
		out <- result{"a", 0, l, err}
	}()
	waitQueued(d, 3)
	pos := <-posc
	// gpu1 is taken out too: b and c, new, are refused; a keeps waiting.
	d.SetHealthy("gpu1", false)
	for range 2 {
		r := <-out
		refusal(t, r.err, dispatch.ReasonNoBackend)
	}
	if s := d.Stats(); s.Queued != 1 {
		t.Fatalf("%d waiting, want the re-queued job", s.Queued)
	}
	if _, err := d.Acquire(ctx, dispatch.Request{Tenant: "d", Cost: 1}); err == nil {
		t.Fatal("a new job was queued with no backend healthy")
	}
	// A later job of another tenant queues behind it once a backend is
	// back but busy.
	d.SetHealthy("gpu1", true)
	acquireAsync(d, ctx, "e", 3, 1, 2, out, &wg)
	if p := pos(); p != 1 {
		t.Fatalf("re-queued job at place %d, want 1", p)
	}
	other.Release(time.Second) // gpu1's slot: to the re-queued job
	r := <-out
	if r.tenant != "a" || r.err != nil || r.lease.Backend() != "gpu1" {
		t.Fatalf("gpu1's freed slot went to %+v, want the re-queued job", r)
	}
	r.lease.Release(time.Second)
	if r := <-out; r.tenant != "e" || r.err != nil {
		t.Fatalf("then %+v, want e's job", r)
	}
	wg.Wait()
}

// TestRequeueTimesOut: a re-queued job waits MaxWait at most.
func TestRequeueTimesOut(t *testing.T) {
	ctx := context.Background()
	d, _, ts := newDispatcher(t, dispatch.Config{Backends: backends(1), TenantInFlight: 10})
	l, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	d.SetHealthy("gpu0", false)
	errc := make(chan error, 1)
	go func() {
		_, err := d.Requeue(ctx, l, 1, nil)
		errc <- err
	}()
	waitQueued(d, 1)
	if ts.duration(0) != dispatch.DefaultMaxWait {
		t.Fatalf("re-queued job waits %v, want MaxWait", ts.duration(0))
	}
	ts.fire(0)
	refusal(t, <-errc, dispatch.ReasonWaitTimeout)
	if _, err := d.Requeue(ctx, l, 1, nil); err != dispatch.ErrReleased {
		t.Fatalf("second Requeue of a lease: %v, want ErrReleased", err)
	}
	d.SetHealthy("gpu0", true)
	checkIdle(t, d, 1)
}

// TestPressureSkipsTheBackend: a backend under GPU pressure gets no new
// job; the jobs wait for another backend or for the pressure to end.
func TestPressureSkipsTheBackend(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1), TenantInFlight: 10})
	d.SetPressure("gpu0", true)
	l, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	if err != nil || l.Backend() != "gpu1" {
		t.Fatalf("got %v, %v; want gpu1", l, err)
	}
	out := make(chan result, 1)
	var wg sync.WaitGroup
	acquireAsync(d, ctx, "b", 0, 1, 1, out, &wg) // gpu1 full, gpu0 pressed: waits
	if s := d.Stats(); !s.Backends[0].Pressure || !s.Backends[0].Healthy || s.Backends[0].InUse != 0 {
		t.Fatalf("gpu0 = %+v", s.Backends[0])
	}
	if r := d.Check(dispatch.Request{Tenant: "c"}); r != nil {
		t.Fatalf("pressure on one backend refuses: %v", r)
	}
	d.SetPressure("gpu0", false)
	r := <-out
	if r.err != nil || r.lease.Backend() != "gpu0" {
		t.Fatalf("got %+v, want gpu0 once its pressure ended", r)
	}
	r.lease.Release(time.Second)
	l.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 2)
}
