package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
)

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  dispatch.Config
		want string
	}{
		{"no backends", dispatch.Config{}, "backends: need at least one"},
		{"duplicate", dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "a"}, {Name: "b"}, {Name: "a"}}}, `backends[2].name: "a" is already backends[0]`},
		{"empty name", dispatch.Config{Backends: []dispatch.BackendConfig{{Slots: 1}}}, "backends[0].name: must not be empty"},
		{"negative slots", dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "a", Slots: -1}}}, "backends[0].slots: must be >= 1, got -1"},
		{"negative queue", dispatch.Config{Backends: backends(1), MaxQueue: -1}, "max_queue: must be >= 0, got -1"},
		{"negative wait", dispatch.Config{Backends: backends(1), MaxWait: -time.Second}, "max_wait: must be >= 0, got -1s"},
		{"negative tenant cap", dispatch.Config{Backends: backends(1), TenantInFlight: -2}, "tenant_in_flight: must be >= 0, got -2"},
		{"low share of one", dispatch.Config{Backends: backends(1), LowShare: 1}, "low_share: must be 0 (default 10) or >= 2, got 1"},
		{"negative medium share", dispatch.Config{Backends: backends(1), MediumShare: -1}, "medium_share: must be 0 (default 5) or >= 2, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := dispatch.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, %v; want an error with %q", d, err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	d, _, ts := newDispatcher(t, dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "b"}, {Name: "a", Slots: 3}}})
	s := d.Stats()
	want := []dispatch.BackendStats{{Name: "a", Slots: 3, Healthy: true}, {Name: "b", Slots: 1, Healthy: true}}
	if len(s.Backends) != 2 || s.Backends[0] != want[0] || s.Backends[1] != want[1] {
		t.Fatalf("backends = %+v, want %+v", s.Backends, want)
	}
	ctx := context.Background()
	var held []*dispatch.Lease
	for i := range 4 { // every slot, one tenant each
		l, err := d.Acquire(ctx, dispatch.Request{Tenant: fmt.Sprint("held", i), Cost: 1})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	out := make(chan result, dispatch.DefaultMaxQueue)
	var wg sync.WaitGroup
	// DefaultTenantInFlight: 2.
	acquireAsync(d, ctx, "x", 0, 1, 1, out, &wg)
	acquireAsync(d, ctx, "x", 1, 1, 2, out, &wg)
	_, err := d.Acquire(ctx, dispatch.Request{Tenant: "x", Cost: 1})
	refusal(t, err, dispatch.ReasonTenantBusy)
	// DefaultMaxQueue: 64.
	for i := 2; i < dispatch.DefaultMaxQueue; i++ {
		acquireAsync(d, ctx, fmt.Sprint("q", i), 0, 1, i+1, out, &wg)
	}
	_, err = d.Acquire(ctx, dispatch.Request{Tenant: "y", Cost: 1})
	refusal(t, err, dispatch.ReasonQueueFull)
	// DefaultMaxWait: 30s.
	if got := ts.duration(0); got != dispatch.DefaultMaxWait {
		t.Errorf("MaxWait timer = %v, want %v", got, dispatch.DefaultMaxWait)
	}
	for _, l := range held {
		l.Release(time.Second)
	}
	for range dispatch.DefaultMaxQueue {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.lease.Release(time.Second)
	}
	wg.Wait()
	checkIdle(t, d, 4+dispatch.DefaultMaxQueue)
}

func TestZeroDispatcherRefuses(t *testing.T) {
	var d dispatch.Dispatcher
	_, err := d.Acquire(context.Background(), dispatch.Request{Tenant: "a", Cost: 1})
	if r := refusal(t, err, dispatch.ReasonNoBackend); r.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", r.RetryAfter)
	}
	d.SetHealthy("nope", true)
	if s := d.Stats(); len(s.Backends) != 0 || s.Queued != 0 {
		t.Errorf("stats = %+v", s)
	}
}

// TestSlotCapUnderContention: 200 goroutines take and free slots on 3
// backends of 2; no backend ever runs more than 2 jobs.
func TestSlotCapUnderContention(t *testing.T) {
	const goroutines, rounds, slots = 200, 5, 2
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(slots, slots, slots), MaxQueue: goroutines, TenantInFlight: goroutines})
	var running, most [3]atomic.Int32
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			tenant := "t" + string(rune('a'+g%7))
			for range rounds {
				l, err := d.Acquire(ctx, dispatch.Request{Tenant: tenant, Cost: 1 + g%3})
				if err != nil {
					t.Error(err)
					return
				}
				i := int(l.Backend()[3] - '0')
				n := running[i].Add(1)
				for m := most[i].Load(); n > m && !most[i].CompareAndSwap(m, n); m = most[i].Load() {
				}
				runtime.Gosched()
				running[i].Add(-1)
				l.Release(time.Millisecond)
			}
		})
	}
	wg.Wait()
	for i := range most {
		if m := most[i].Load(); m > slots {
			t.Errorf("gpu%d ran %d jobs at once, over its %d slots", i, m, slots)
		}
	}
	checkIdle(t, d, goroutines*rounds)
}

// TestCancelRacesHandOff: callers give up at random moments, some while a
// lease is being handed to them. Nothing leaks and the cap holds.
func TestCancelRacesHandOff(t *testing.T) {
	const goroutines, rounds = 100, 20
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 2), MaxQueue: goroutines, TenantInFlight: goroutines})
	var running [2]atomic.Int32
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range rounds {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					for range rng.IntN(3) {
						runtime.Gosched()
					}
					cancel()
					close(done)
				}()
				l, err := d.Acquire(ctx, dispatch.Request{Tenant: "t" + string(rune('a'+g%5)), Cost: 1})
				if err == nil {
					i := int(l.Backend()[3] - '0')
					if n := running[i].Add(1); n > int32(i+1) {
						t.Errorf("gpu%d ran %d jobs at once", i, n)
					}
					running[i].Add(-1)
					l.Release(time.Millisecond)
				} else if !errors.Is(err, context.Canceled) {
					t.Error(err)
				}
				<-done
			}
		})
	}
	wg.Wait()
	s := d.Stats()
	if s.Queued != 0 || len(s.Tenants) != 0 || s.Backends[0].InUse != 0 || s.Backends[1].InUse != 0 {
		t.Fatalf("left behind: %+v", s)
	}
}

// checkIdle asserts that everything was given back and started jobs were
// counted.
func checkIdle(t *testing.T, d *dispatch.Dispatcher, started int) {
	t.Helper()
	s := d.Stats()
	var n uint64
	for _, b := range s.Backends {
		if b.InUse != 0 {
			t.Errorf("%s: %d slots still in use", b.Name, b.InUse)
		}
		n += b.Started
	}
	if started >= 0 && n != uint64(started) {
		t.Errorf("started %d jobs, want %d", n, started)
	}
	if s.Queued != 0 || len(s.Tenants) != 0 {
		t.Errorf("queue %d, tenants %+v; want none", s.Queued, s.Tenants)
	}
}

// handOuts queues jobs behind one held slot, then frees the slot and lets
// each granted job release at once, returning the tenants in grant order.
func handOuts(t *testing.T, jobs []struct {
	tenant      string
	count, cost int
}) []result {
	t.Helper()
	total := 0
	for _, j := range jobs {
		total += j.count
	}
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxQueue: total, TenantInFlight: total})
	ctx := context.Background()
	blocker, err := d.Acquire(ctx, dispatch.Request{Tenant: "blocker", Cost: 1})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan result, total)
	var wg sync.WaitGroup
	queued := 0
	for _, j := range jobs {
		for i := range j.count {
			queued++
			acquireAsync(d, ctx, j.tenant, i, j.cost, queued, out, &wg)
		}
	}
	blocker.Release(time.Second)
	var order []result
	for range total {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		order = append(order, r)
		r.lease.Release(time.Second) // one slot: the next hand-out waits for this
	}
	wg.Wait()
	checkIdle(t, d, total+1)
	return order
}

func TestFairness(t *testing.T) {
	type jobs = []struct {
		tenant      string
		count, cost int
	}
	t.Run("flood does not starve", func(t *testing.T) {
		order := handOuts(t, jobs{{"flood", 50, 1}, {"light1", 5, 1}, {"light2", 5, 1}})
		light := 0
		for i, r := range order {
			if r.tenant != "flood" {
				light++
				if i >= 15 {
					t.Errorf("hand-out %d went to %s #%d: light jobs must all go in the first 15", i, r.tenant, r.seq)
				}
			}
		}
		if light != 10 {
			t.Errorf("%d light jobs, want 10", light)
		}
	})
	t.Run("weighted by cost", func(t *testing.T) {
		const lightJobs = 12
		order := handOuts(t, jobs{{"flood", 50, 3}, {"light1", lightJobs, 1}, {"light2", lightJobs, 1}})
		costOf := map[string]int{"flood": 3, "light1": 1, "light2": 1}
		served := map[string]int{}
		for i, r := range order {
			served[r.tenant] += costOf[r.tenant]
			if served["light1"] == lightJobs && served["light2"] == lightJobs {
				// All three were backlogged so far: equal shares of cost,
				// give or take the largest cost.
				if d := served["flood"] - lightJobs; d < -3 || d > 3 {
					t.Errorf("after %d hand-outs flood had %d cost units, lights %d each", i+1, served["flood"], lightJobs)
				}
				return
			}
			for _, a := range []string{"flood", "light1", "light2"} {
				for _, b := range []string{"flood", "light1", "light2"} {
					if d := served[a] - served[b]; d > 3 {
						t.Fatalf("after %d hand-outs %s had %d cost units and %s %d", i+1, a, served[a], b, served[b])
					}
				}
			}
		}
		t.Fatal("the light tenants never finished")
	})
	t.Run("FIFO within a tenant", func(t *testing.T) {
		order := handOuts(t, jobs{{"a", 6, 1}, {"b", 3, 2}})
		next := map[string]int{}
		for _, r := range order {
			if r.seq != next[r.tenant] {
				t.Fatalf("%s's job %d went before its job %d", r.tenant, r.seq, next[r.tenant])
			}
			next[r.tenant]++
		}
	})
}

func TestRefusals(t *testing.T) {
	ctx := context.Background()
	t.Run("queue full", func(t *testing.T) {
		d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxQueue: 2, TenantInFlight: 10})
		held, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
		out := make(chan result, 2)
		var wg sync.WaitGroup
		acquireAsync(d, ctx, "a", 0, 1, 1, out, &wg)
		acquireAsync(d, ctx, "b", 0, 1, 2, out, &wg)
		_, err := d.Acquire(ctx, dispatch.Request{Tenant: "c", Cost: 1})
		if r := refusal(t, err, dispatch.ReasonQueueFull); r.RetryAfter <= 0 {
			t.Errorf("RetryAfter = %v, want > 0", r.RetryAfter)
		}
		if s := d.Stats(); len(s.Tenants) != 2 {
			t.Errorf("the refused tenant is kept: %+v", s.Tenants)
		}
		drain(t, held, out, &wg, 2)
		checkIdle(t, d, 3)
	})
	t.Run("tenant busy", func(t *testing.T) {
		d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), TenantInFlight: 2})
		held, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
		out := make(chan result, 1)
		var wg sync.WaitGroup
		acquireAsync(d, ctx, "a", 0, 1, 1, out, &wg)
		_, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
		refusal(t, err, dispatch.ReasonTenantBusy)
		if s := d.Stats(); s.Queued != 1 {
			t.Errorf("queued %d, want 1", s.Queued)
		}
		drain(t, held, out, &wg, 1)
	})
	t.Run("no backend", func(t *testing.T) {
		d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1)})
		d.SetHealthy("gpu0", false)
		d.SetHealthy("gpu1", false)
		_, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
		if r := refusal(t, err, dispatch.ReasonNoBackend); r.RetryAfter <= 0 {
			t.Errorf("RetryAfter = %v, want > 0", r.RetryAfter)
		}
		checkIdle(t, d, 0)
	})
	t.Run("context already done", func(t *testing.T) {
		d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1)})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := d.Acquire(cctx, dispatch.Request{Tenant: "a", Cost: 1}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		checkIdle(t, d, 0)
	})
}

// drain frees held and then each of n queued jobs as it gets its slot.
func drain(t *testing.T, held *dispatch.Lease, out chan result, wg *sync.WaitGroup, n int) {
	t.Helper()
	held.Release(time.Second)
	for range n {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.lease.Release(time.Second)
	}
	wg.Wait()
}

func TestWaitTimeout(t *testing.T) {
	ctx := context.Background()
	d, _, ts := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxWait: 5 * time.Second})
	held, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	out := make(chan result, 2)
	var wg sync.WaitGroup
	acquireAsync(d, ctx, "b", 0, 1, 1, out, &wg)
	acquireAsync(d, ctx, "c", 0, 1, 2, out, &wg)
	if got := ts.duration(0); got != 5*time.Second {
		t.Fatalf("timer for %v, want MaxWait 5s", got)
	}
	if stopped := ts.fire(0); stopped {
		t.Fatal("b's timer was stopped while b waited")
	}
	r := <-out
	if r.tenant != "b" {
		t.Fatalf("%s answered first, want b", r.tenant)
	}
	if ref := refusal(t, r.err, dispatch.ReasonWaitTimeout); ref.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", ref.RetryAfter)
	}
	s := d.Stats()
	if s.Queued != 1 || len(s.Tenants) != 2 || s.Tenants[1].Tenant != "c" {
		t.Fatalf("after the timeout: %+v; want only c waiting", s)
	}
	// The freed slot goes to c; c's timer is stopped, and firing it late
	// (Stop losing the race) changes nothing.
	held.Release(time.Second)
	r = <-out
	if r.err != nil || r.tenant != "c" {
		t.Fatalf("got %+v, want c's lease", r)
	}
	if stopped := ts.fire(1); !stopped {
		t.Error("c's timer was not stopped by the hand-off")
	}
	if s := d.Stats(); s.Backends[0].InUse != 1 || s.Tenants[0].Running != 1 {
		t.Fatalf("a late timer changed the lease: %+v", s)
	}
	r.lease.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 2)
}

func TestCancelWhileQueued(t *testing.T) {
	ctx := context.Background()
	d, _, ts := newDispatcher(t, dispatch.Config{Backends: backends(1)})
	held, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	out := make(chan result, 2)
	var wg sync.WaitGroup
	cctx, cancel := context.WithCancel(ctx)
	acquireAsync(d, cctx, "b", 0, 1, 1, out, &wg)
	acquireAsync(d, ctx, "c", 0, 1, 2, out, &wg)
	cancel()
	r := <-out
	if r.tenant != "b" || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("got %+v, want b cancelled", r)
	}
	if s := d.Stats(); s.Queued != 1 {
		t.Fatalf("queued %d after the cancel, want 1", s.Queued)
	}
	if stopped := ts.fire(0); !stopped {
		t.Error("b's timer still ran after b left")
	}
	held.Release(time.Second)
	r = <-out
	if r.err != nil || r.tenant != "c" {
		t.Fatalf("got %+v, want c's lease", r)
	}
	r.lease.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 2)
}

func TestHealth(t *testing.T) {
	ctx := context.Background()
	t.Run("unhealthy gets nothing", func(t *testing.T) {
		d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(2, 2), TenantInFlight: 10})
		d.SetHealthy("gpu0", false)
		var leases []*dispatch.Lease
		for range 2 {
			l, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
			if err != nil {
				t.Fatal(err)
			}
			if l.Backend() != "gpu1" {
				t.Fatalf("job on %s, which is unhealthy", l.Backend())
			}
			leases = append(leases, l)
		}
		// gpu1 full, gpu0 unhealthy: the next job waits ...
		out := make(chan result, 1)
		var wg sync.WaitGroup
		acquireAsync(d, ctx, "a", 0, 1, 1, out, &wg)
		// ... until gpu0 comes back and takes it at once.
		d.SetHealthy("gpu0", true)
		r := <-out
		if r.err != nil || r.lease.Backend() != "gpu0" {
			t.Fatalf("got %+v, want a lease on gpu0", r)
		}
		// A backend going unhealthy keeps its running lease.
		d.SetHealthy("gpu0", false)
		if s := d.Stats(); s.Backends[0].InUse != 1 || s.Backends[0].Healthy {
			t.Fatalf("gpu0 = %+v, want unhealthy with its lease", s.Backends[0])
		}
		r.lease.Release(time.Second)
		for _, l := range leases {
			l.Release(time.Second)
		}
		wg.Wait()
		d.SetHealthy("unknown", false) // ignored
		checkIdle(t, d, 3)
	})
	t.Run("choice", func(t *testing.T) {
		// The most free slots first; ties: fewest started, then name.
		d, _, _ := newDispatcher(t, dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "c", Slots: 1}, {Name: "b", Slots: 2}, {Name: "a", Slots: 2}}, TenantInFlight: 10})
		var got []string
		var leases []*dispatch.Lease
		for range 5 {
			l, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, l.Backend())
			leases = append(leases, l)
		}
		// a and b tie on free slots and jobs started: a by name. Then all
		// have one free slot, and c has started none.
		if want := "a b c a b"; strings.Join(got, " ") != want {
			t.Errorf("backends %v, want %s", got, want)
		}
		leases[3].Release(time.Second) // a: 1 free, 2 started
		leases[2].Release(time.Second) // c: 1 free, 1 started
		leases[4].Release(time.Second) // b: 1 free, 2 started
		l, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
		if l.Backend() != "c" {
			t.Errorf("backend %s, want c: the fewest jobs started", l.Backend())
		}
		l.Release(time.Second)
		leases[0].Release(time.Second)
		leases[1].Release(time.Second)
		checkIdle(t, d, 6)
	})
}

func TestReleaseTwice(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), TenantInFlight: 10})
	l, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	out := make(chan result, 2)
	var wg sync.WaitGroup
	acquireAsync(d, ctx, "b", 0, 1, 1, out, &wg)
	acquireAsync(d, ctx, "c", 0, 1, 2, out, &wg)
	l.Release(10 * time.Second)
	r := <-out
	if r.tenant != "b" {
		t.Fatalf("%s got the slot, want b", r.tenant)
	}
	l.Release(20 * time.Second) // must neither free b's slot for c nor count again
	if s := d.Stats(); s.Queued != 1 || s.Backends[0].InUse != 1 || s.AvgJobTime != 10*time.Second {
		t.Fatalf("stats %+v after a double Release, want c still waiting", s)
	}
	r.lease.Release(time.Second)
	r = <-out
	r.lease.Release(time.Second)
	r.lease.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 3)
}

func TestWaited(t *testing.T) {
	ctx := context.Background()
	d, clk, _ := newDispatcher(t, dispatch.Config{Backends: backends(1)})
	held, _ := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	if held.Waited() != 0 {
		t.Errorf("Waited = %v for a free slot, want 0", held.Waited())
	}
	out := make(chan result, 1)
	var wg sync.WaitGroup
	acquireAsync(d, ctx, "b", 0, 1, 1, out, &wg)
	clk.Advance(1500 * time.Millisecond)
	held.Release(time.Second)
	r := <-out
	if r.lease.Waited() != 1500*time.Millisecond {
		t.Errorf("Waited = %v, want 1.5s", r.lease.Waited())
	}
	r.lease.Release(time.Second)
	wg.Wait()
}

// TestRetryAfter: queue length times average job time over healthy slots.
func TestRetryAfter(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1), TenantInFlight: 1, MaxQueue: 100})
	busy := func() time.Duration {
		t.Helper()
		_, err := d.Acquire(ctx, dispatch.Request{Tenant: "x", Cost: 1}) // x holds a slot: at its cap
		return refusal(t, err, dispatch.ReasonTenantBusy).RetryAfter
	}
	x, _ := d.Acquire(ctx, dispatch.Request{Tenant: "x", Cost: 1})
	y, _ := d.Acquire(ctx, dispatch.Request{Tenant: "y", Cost: 1})
	// Before any measurement: DefaultJobTime.
	if got, want := busy(), dispatch.DefaultJobTime/2; got != want {
		t.Errorf("empty queue, no measurement: %v, want %v", got, want)
	}
	// A measured job time replaces the default.
	y.Release(10 * time.Second)
	y, _ = d.Acquire(ctx, dispatch.Request{Tenant: "y", Cost: 1})
	if got, want := busy(), 5*time.Second; got != want {
		t.Errorf("empty queue, 10s jobs on 2 slots: %v, want %v", got, want)
	}
	out := make(chan result, 6)
	var wg sync.WaitGroup
	prev := time.Duration(0)
	for i := range 6 {
		acquireAsync(d, ctx, "w"+string(rune('0'+i)), 0, 1, i+1, out, &wg)
		got := busy()
		if want := time.Duration(i+1) * 5 * time.Second; got != want {
			t.Errorf("%d queued: %v, want %v", i+1, got, want)
		}
		if got <= prev {
			t.Errorf("%d queued: %v, not above %v", i+1, got, prev)
		}
		prev = got
	}
	// Half the slots unhealthy: twice the wait.
	d.SetHealthy("gpu1", false)
	if got, want := busy(), 6*10*time.Second; got != want {
		t.Errorf("6 queued on 1 healthy slot: %v, want %v", got, want)
	}
	d.SetHealthy("gpu1", true)
	x.Release(0) // a job that never ran is not measured
	y.Release(0)
	for range 6 {
		r := <-out
		r.lease.Release(0)
	}
	wg.Wait()
	if s := d.Stats(); s.AvgJobTime != 10*time.Second {
		t.Errorf("AvgJobTime = %v, want 10s", s.AvgJobTime)
	}
	checkIdle(t, d, 9)
}

func TestShownNameHidesThePassword(t *testing.T) {
	for in, want := range map[string]string{
		"http://gpu-1:8188":               "http://gpu-1:8188",
		"http://user:s3cret@gpu-1:8188/x": "http://gpu-1:8188/x",
		"not a url %":                     "not a url %",
	} {
		if got := dispatch.ShownName(in); got != want {
			t.Errorf("ShownName(%q) = %q, want %q", in, got, want)
		}
	}
}
