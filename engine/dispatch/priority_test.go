package dispatch_test

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/tenant"
)

// job is one request of a priority test, with a name to find it by.
type job struct {
	name string
	req  dispatch.Request
}

// served is a job handed its slot.
type served struct {
	job   job
	lease *dispatch.Lease
	err   error
}

// submit starts job's Acquire on its own goroutine and waits until it has
// queued (queued jobs then wait); it returns the job's position function.
func submit(t *testing.T, d *dispatch.Dispatcher, j job, queued int, out chan<- served, wg *sync.WaitGroup) func() int {
	t.Helper()
	pos := make(chan func() int, 1)
	j.req.OnQueued = func(p func() int) { pos <- p }
	wg.Add(1)
	go func() {
		defer wg.Done()
		l, err := d.Acquire(context.Background(), j.req)
		out <- served{j, l, err}
	}()
	waitQueued(d, queued)
	return <-pos
}

// next frees l and returns the job its slot went to.
func next(t *testing.T, l *dispatch.Lease, out <-chan served) served {
	t.Helper()
	l.Release(time.Second)
	s := <-out
	if s.err != nil {
		t.Fatalf("%s: %v", s.job.name, s.err)
	}
	return s
}

func TestHigherClassServedFirst(t *testing.T) {
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1)})
	held, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "holder"})
	out := make(chan served, 6)
	var wg sync.WaitGroup
	for i, j := range []job{
		{"low-a", dispatch.Request{Tenant: "a", Class: tenant.Low}},
		{"medium-b", dispatch.Request{Tenant: "b", Class: tenant.Medium}},
		{"high-c", dispatch.Request{Tenant: "c", Class: tenant.High}},
		{"low-d", dispatch.Request{Tenant: "d", Class: tenant.Low}},
		{"high-e", dispatch.Request{Tenant: "e", Class: tenant.High}},
		{"medium-f", dispatch.Request{Tenant: "f", Class: tenant.Medium}},
	} {
		submit(t, d, j, i+1, out, &wg)
	}
	s := d.Stats()
	if s.Classes[tenant.Low].Waiting != 2 || s.Classes[tenant.Medium].Waiting != 2 || s.Classes[tenant.High].Waiting != 2 {
		t.Errorf("waiting by class %+v, want 2 each", s.Classes)
	}
	var got []string
	for l := held; len(got) < 6; {
		n := next(t, l, out)
		if n.lease.Class() != n.job.req.Class {
			t.Errorf("%s's lease is of class %s", n.job.name, n.lease.Class())
		}
		got = append(got, n.job.name)
		l = n.lease
		if len(got) == 6 {
			l.Release(time.Second)
		}
	}
	if want := "high-c high-e medium-b medium-f low-a low-d"; fmt.Sprint(got) != "["+want+"]" {
		t.Errorf("served %v, want %s", got, want)
	}
	wg.Wait()
	checkIdle(t, d, 7)
}

// TestLowJobsFillAnIdleFarm: the scheduler is work-conserving; a low-class
// job takes a free slot at once, and a freed slot goes to a low-class job
// when nothing else waits.
func TestLowJobsFillAnIdleFarm(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1)})
	a, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Class: tenant.Low})
	if err != nil || a.Waited() != 0 {
		t.Fatalf("a low job on an idle farm: %v, %v", a, err)
	}
	h, err := d.Acquire(ctx, dispatch.Request{Tenant: "h", Class: tenant.High})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan served, 1)
	var wg sync.WaitGroup
	submit(t, d, job{"low-b", dispatch.Request{Tenant: "b", Class: tenant.Low}}, 1, out, &wg)
	n := next(t, h, out) // only a low job waits: it takes the slot
	if n.job.name != "low-b" {
		t.Fatalf("got %s", n.job.name)
	}
	if s := d.Stats(); s.Queued != 0 || s.Backends[0].InUse+s.Backends[1].InUse != 2 || s.Classes[tenant.Low].Running != 2 {
		t.Fatalf("stats %+v: a slot left free while a low job waited", s)
	}
	n.lease.Release(time.Second)
	a.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 3)
}

// TestDRRByCostInsideAClass: inside a class, tenants share by cost as
// before, and the low class's share comes on top.
func TestDRRByCostInsideAClass(t *testing.T) {
	const lowShare = 4
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxQueue: 100, TenantInFlight: 100, LowShare: lowShare})
	held, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "holder"})
	out := make(chan served, 100)
	var wg sync.WaitGroup
	queued := 0
	add := func(name, ten string, cls tenant.Class, cost, n int) {
		for i := range n {
			queued++
			submit(t, d, job{fmt.Sprint(name, i), dispatch.Request{Tenant: ten, Class: cls, Cost: cost}}, queued, out, &wg)
		}
	}
	add("heavy", "heavy", tenant.Medium, 3, 12)
	add("light", "light", tenant.Medium, 1, 24)
	add("low", "anon", tenant.Low, 1, 4)
	cost := map[string]int{}
	run := 0 // medium hand-outs in a row
	l := held
	for i := range queued {
		n := next(t, l, out)
		l = n.lease
		switch n.job.req.Tenant {
		case "anon":
			if run != lowShare-1 && cost["light"] < 24 {
				t.Fatalf("hand-out %d: the low job came after %d medium ones, want %d", i, run, lowShare-1)
			}
			run = 0
		default:
			run++
			cost[n.job.req.Tenant] += n.job.req.Cost
			if d := cost["heavy"] - cost["light"]; (d > 3 || d < -3) && cost["light"] < 24 && cost["heavy"] < 36 {
				t.Fatalf("hand-out %d: heavy had %d cost units, light %d: not deficit round robin", i, cost["heavy"], cost["light"])
			}
		}
	}
	l.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, queued+1)
}

// TestLowerClassesNeverStarve: under a flood that keeps every class
// waiting (each job served is replaced at once by its tenant), low gets
// one hand-out in LowShare and medium one in MediumShare of those to high,
// never fewer; with only high and low waiting, low gets exactly one in
// LowShare.
func TestLowerClassesNeverStarve(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		classes               []tenant.Class
		lowShare, mediumShare int
	}{
		{"defaults, three classes", []tenant.Class{tenant.High, tenant.Medium, tenant.Low}, 0, 0},
		{"high and low", []tenant.Class{tenant.High, tenant.Low}, 0, 0},
		{"tight shares", []tenant.Class{tenant.High, tenant.Medium, tenant.Low}, 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const grants, perClass = 600, 3
			d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxQueue: 100, TenantInFlight: 100,
				LowShare: tc.lowShare, MediumShare: tc.mediumShare})
			lowShare := cmp.Or(tc.lowShare, dispatch.DefaultLowShare)
			mediumShare := cmp.Or(tc.mediumShare, dispatch.DefaultMediumShare)
			held, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "holder"})
			out := make(chan served, 100)
			var wg sync.WaitGroup
			queued := 0
			for _, c := range tc.classes {
				for i := range perClass {
					queued++
					submit(t, d, job{c.String(), dispatch.Request{Tenant: fmt.Sprint(c, i), Class: c}}, queued, out, &wg)
				}
			}
			var count [3]int
			sinceLow, highRun := 0, 0
			l := held
			for i := range grants {
				n := next(t, l, out)
				l = n.lease
				c := n.job.req.Class
				count[c]++
				switch c {
				case tenant.Low:
					sinceLow = 0
				case tenant.Medium:
					sinceLow++
					highRun = 0
				case tenant.High:
					sinceLow++
					highRun++
				}
				if sinceLow > lowShare-1 {
					t.Fatalf("hand-out %d: %d in a row passed the waiting low jobs, want at most %d", i, sinceLow, lowShare-1)
				}
				if len(tc.classes) == 3 && highRun > mediumShare-1 {
					t.Fatalf("hand-out %d: %d high ones in a row passed the waiting medium jobs, want at most %d", i, highRun, mediumShare-1)
				}
				submit(t, d, n.job, queued, out, &wg) // the flood goes on
			}
			if count[tenant.Low] < grants/lowShare {
				t.Errorf("low got %d of %d hand-outs, want at least one in %d", count[tenant.Low], grants, lowShare)
			}
			if len(tc.classes) == 2 && count[tenant.Low] != grants/lowShare {
				t.Errorf("low got %d of %d hand-outs with high flooding, want exactly one in %d", count[tenant.Low], grants, lowShare)
			}
			if len(tc.classes) == 3 && count[tenant.Medium] < count[tenant.High]/mediumShare {
				t.Errorf("medium got %d hand-outs to high's %d, want at least one in %d", count[tenant.Medium], count[tenant.High], mediumShare)
			}
			for range queued {
				l = next(t, l, out).lease
			}
			l.Release(time.Second)
			wg.Wait()
			checkIdle(t, d, grants+queued+1)
		})
	}
}

// TestPositionsFollowTheServingOrder: the places told to waiting jobs are
// the order they are served in, across classes, tenants and costs; a
// higher-class job arriving moves the lower ones down.
func TestPositionsFollowTheServingOrder(t *testing.T) {
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxQueue: 100, TenantInFlight: 100, LowShare: 3, MediumShare: 2})
	held, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "holder"})
	out := make(chan served, 100)
	var wg sync.WaitGroup
	pos := map[string]func() int{} // the jobs waiting
	class := map[string]tenant.Class{}
	add := func(name, ten string, cls tenant.Class, cost int) {
		class[name] = cls
		pos[name] = submit(t, d, job{name, dispatch.Request{Tenant: ten, Class: cls, Cost: cost}}, len(pos)+1, out, &wg)
	}
	// In arrival order; the places are not.
	add("low1", "10.0.0.1", tenant.Low, 1)
	add("low2", "10.0.0.2", tenant.Low, 2)
	add("med1", "reg-a", tenant.Medium, 1)
	add("med2", "reg-a", tenant.Medium, 1)
	add("med3", "reg-b", tenant.Medium, 3)
	add("high1", "vip", tenant.High, 1)
	add("high2", "vip", tenant.High, 2)
	add("low3", "10.0.0.1", tenant.Low, 1)
	order := func() []string {
		byPlace := make([]string, len(pos))
		for name, p := range pos {
			i := p() - 1
			if i < 0 || i >= len(byPlace) || byPlace[i] != "" {
				t.Fatalf("%s at place %d among %d waiting", name, i+1, len(pos))
			}
			byPlace[i] = name
		}
		return byPlace
	}
	want := order()
	if pos["high1"]() != 1 || pos["low1"]() == 1 {
		t.Errorf("places %v: the high job is not first", want)
	}
	l := held
	serve := func(k int) {
		for range k {
			n := next(t, l, out)
			l = n.lease
			if n.job.name != want[0] {
				t.Fatalf("served %s, the places said %s (order %v)", n.job.name, want[0], want)
			}
			if p := pos[n.job.name](); p != 0 {
				t.Fatalf("%s served, its place is %d, want 0", n.job.name, p)
			}
			delete(pos, n.job.name)
			want = want[1:]
			if got := order(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after serving %s: order %v, want %v", n.job.name, got, want)
			}
		}
	}
	serve(3)
	// A new high job: it goes before the medium and low ones that waited.
	before := map[string]int{}
	for name, p := range pos {
		before[name] = p()
	}
	add("high3", "vip2", tenant.High, 1)
	want = order()
	t.Logf("before high3: %v; after: %v", before, want)
	for name, p := range before {
		if class[name] < tenant.High && pos["high3"]() > pos[name]() {
			t.Errorf("the new high job at place %d, behind %s at %d (was %d)", pos["high3"](), name, pos[name](), p)
		}
	}
	grew := false
	for name, p := range before {
		if now := pos[name](); now < p {
			t.Errorf("%s moved up from %d to %d when a job arrived", name, p, now)
		} else if now > p {
			grew = true
		}
	}
	if !grew {
		t.Error("no waiting job moved down for the new high one")
	}
	serve(len(want))
	l.Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 10)
}

// TestRequestInFlight: a request's InFlight bounds its tenant's jobs (the
// tier's), Config.TenantInFlight when it sets none; Check says the same.
func TestRequestInFlight(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(2), TenantInFlight: 1})
	vip := dispatch.Request{Tenant: "vip", Class: tenant.High, InFlight: 3}
	var leases []*dispatch.Lease
	for range 2 {
		l, err := d.Acquire(ctx, vip)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	if r := d.Check(vip); r != nil {
		t.Fatalf("a third vip job refused: %v", r)
	}
	out := make(chan served, 1)
	var wg sync.WaitGroup
	submit(t, d, job{"vip3", vip}, 1, out, &wg)
	if r := d.Check(vip); r == nil || r.Reason != dispatch.ReasonTenantBusy {
		t.Fatalf("a fourth vip job: %v, want tenant_busy", r)
	}
	_, err := d.Acquire(ctx, vip)
	refusal(t, err, dispatch.ReasonTenantBusy)
	// The same tenant with no InFlight of its own: the Config's 1.
	_, err = d.Acquire(ctx, dispatch.Request{Tenant: "vip"})
	refusal(t, err, dispatch.ReasonTenantBusy)
	if r := d.Check(dispatch.Request{Tenant: "anon"}); r != nil {
		t.Fatalf("another tenant's first job: %v", r)
	}
	s := d.Stats()
	if len(s.Tenants) != 1 || s.Tenants[0].Class != tenant.High || s.Tenants[0].Running != 2 || s.Tenants[0].Waiting != 1 {
		t.Errorf("tenants %+v", s.Tenants)
	}
	n := next(t, leases[0], out)
	n.lease.Release(time.Second)
	leases[1].Release(time.Second)
	wg.Wait()
	checkIdle(t, d, 3)
}

// TestRequeueKeepsTheClass: a high-class job taken back from a backend
// waits in its class: the next freed slot is its own, before the medium
// and low jobs that waited, and its new lease is of its class.
func TestRequeueKeepsTheClass(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1, 1)})
	vip, _ := d.Acquire(ctx, dispatch.Request{Tenant: "vip", Tier: "vip", Class: tenant.High}) // gpu0
	other, _ := d.Acquire(ctx, dispatch.Request{Tenant: "z"})                                  // gpu1
	out := make(chan served, 3)
	var wg sync.WaitGroup
	submit(t, d, job{"low", dispatch.Request{Tenant: "a", Class: tenant.Low}}, 1, out, &wg)
	submit(t, d, job{"medium", dispatch.Request{Tenant: "b", Class: tenant.Medium}}, 2, out, &wg)
	d.SetHealthy("gpu0", false)
	wg.Add(1)
	pos := make(chan func() int, 1)
	go func() {
		defer wg.Done()
		l, err := d.Requeue(ctx, vip, 1, func(p func() int) { pos <- p })
		out <- served{job{"vip", dispatch.Request{Tenant: "vip", Class: tenant.High}}, l, err}
	}()
	waitQueued(d, 3)
	if p := (<-pos)(); p != 1 {
		t.Errorf("the re-queued high job at place %d, want 1", p)
	}
	s := d.Stats()
	if s.Classes[tenant.High].Waiting != 1 || s.Classes[tenant.High].Running != 0 {
		t.Errorf("classes %+v: the re-queued job is not waiting as high", s.Classes)
	}
	for _, ts := range s.Tenants {
		if ts.Tenant == "vip" && (ts.Tier != "vip" || ts.Class != tenant.High) {
			t.Errorf("vip's stats %+v", ts)
		}
	}
	n := next(t, other, out)
	if n.job.name != "vip" || n.lease.Class() != tenant.High {
		t.Fatalf("the freed slot went to %s (class %s), want the re-queued high job", n.job.name, n.lease.Class())
	}
	if n = next(t, n.lease, out); n.job.name != "medium" {
		t.Fatalf("then %s, want medium", n.job.name)
	}
	if n = next(t, n.lease, out); n.job.name != "low" {
		t.Fatalf("then %s, want low", n.job.name)
	}
	n.lease.Release(time.Second)
	d.SetHealthy("gpu0", true)
	wg.Wait()
	checkIdle(t, d, 5)
}

// TestFullQueueMakesRoomForHigherClasses: a job finding the queue full
// takes the place of the newest waiting job of a lower class, which is
// refused queue_full; a job is never displaced by one of its own class;
// Check says the same.
func TestFullQueueMakesRoomForHigherClasses(t *testing.T) {
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: backends(1), MaxQueue: 3, TenantInFlight: 10})
	held, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "holder"})
	out := make(chan served, 8)
	var wg sync.WaitGroup
	submit(t, d, job{"low-a1", dispatch.Request{Tenant: "a", Class: tenant.Low}}, 1, out, &wg)
	submit(t, d, job{"low-b1", dispatch.Request{Tenant: "b", Class: tenant.Low}}, 2, out, &wg)
	submit(t, d, job{"low-a2", dispatch.Request{Tenant: "a", Class: tenant.Low}}, 3, out, &wg)
	if r := d.Check(dispatch.Request{Tenant: "c", Class: tenant.Low}); r == nil || r.Reason != dispatch.ReasonQueueFull {
		t.Fatalf("a low job at a queue full of low ones: %v", r)
	}
	if r := d.Check(dispatch.Request{Tenant: "v", Class: tenant.High}); r != nil {
		t.Fatalf("a high job at a queue full of low ones: %v", r)
	}
	refused := func(want string) {
		t.Helper()
		s := <-out
		if s.job.name != want || s.lease != nil {
			t.Fatalf("%s answered (lease %v), want %s refused", s.job.name, s.lease, want)
		}
		refusal(t, s.err, dispatch.ReasonQueueFull)
	}
	// a has the most low jobs waiting: its newest goes.
	submit(t, d, job{"high", dispatch.Request{Tenant: "v", Class: tenant.High}}, 3, out, &wg)
	refused("low-a2")
	submit(t, d, job{"medium-1", dispatch.Request{Tenant: "m", Class: tenant.Medium}}, 3, out, &wg)
	refused("low-b1") // a tie of one each: b's turn comes last
	submit(t, d, job{"medium-2", dispatch.Request{Tenant: "n", Class: tenant.Medium}}, 3, out, &wg)
	refused("low-a1")
	// Nothing below medium waits: a medium job is refused; a high one
	// takes the place of a medium one.
	if _, err := d.Acquire(context.Background(), dispatch.Request{Tenant: "o", Class: tenant.Medium}); err == nil {
		t.Fatal("a medium job queued in a queue full of medium and high ones")
	} else {
		refusal(t, err, dispatch.ReasonQueueFull)
	}
	submit(t, d, job{"high-2", dispatch.Request{Tenant: "w", Class: tenant.High}}, 3, out, &wg)
	refused("medium-2")
	if s := d.Stats(); s.Classes[tenant.Low].Waiting != 0 || s.Classes[tenant.Medium].Waiting != 1 || s.Classes[tenant.High].Waiting != 2 {
		t.Fatalf("classes %+v", s.Classes)
	}
	var got []string
	l := held
	for range 3 {
		n := next(t, l, out)
		got = append(got, n.job.name)
		l = n.lease
	}
	l.Release(time.Second)
	if fmt.Sprint(got) != "[high high-2 medium-1]" {
		t.Errorf("served %v", got)
	}
	wg.Wait()
	checkIdle(t, d, 4)
}
