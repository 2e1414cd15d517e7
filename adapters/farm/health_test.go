package farm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
)

// TestJobOfOnlyBackendTakenOutWaitsForIt: a job queued on the only
// backend, not yet running there, is taken back when the backend is taken
// out, waits in the farm's queue instead of failing, and runs on the
// backend when it is back.
func TestJobOfOnlyBackendTakenOutWaitsForIt(t *testing.T) {
	f, bs, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 4}, 1)
	a := bs[0]
	errc := runAsync(f, context.Background(), generate("192.0.2.1"))
	first := a.next(t) // accepted by ComfyUI, not running
	for range failuresToTrip {
		f.probed(f.members["a"], errors.New("connection refused"))
	}
	if !errors.Is(context.Cause(first.ctx), errPulledBack) {
		t.Fatalf("the job was not taken back from the backend: %v", context.Cause(first.ctx))
	}
	waitFor(t, func() bool { return f.Stats().Queued == 1 })
	select {
	case err := <-errc:
		t.Fatalf("the job ended while its backend was out: %v", err)
	default:
	}
	f.probed(f.members["a"], nil) // back
	a.next(t).finish(nil)
	if err := <-errc; err != nil {
		t.Fatalf("the job failed: %v", err)
	}
}

// TestTakingOutLeavesRunningJobsAndRefusesWaiters: taking out the last
// backend leaves the job executing there (it shows progress), takes back
// the one not yet running, and answers the jobs waiting for a slot at once.
func TestTakingOutLeavesRunningJobsAndRefusesWaiters(t *testing.T) {
	f, bs, clk := fakeFarm(t, Config{Slots: 2, TenantInFlight: 4}, 1)
	a := bs[0]
	ctx := context.Background()
	running := runAsync(f, ctx, generate("192.0.2.1"))
	r1 := a.next(t)
	r1.job.OnRunning()
	pending := runAsync(f, ctx, generate("192.0.2.2"))
	r2 := a.next(t)
	waiting := runAsync(f, ctx, generate("192.0.2.3"))
	waitFor(t, func() bool { return f.Stats().Queued == 1 })

	clk.Advance(10 * time.Second)
	r1.job.OnProgress(3, 10) // progress just now
	f.setOut("a", true)
	if err := <-waiting; !isBusy(err) {
		t.Fatalf("the job waiting for a slot: %v, want a 503 at once", err)
	}
	if !errors.Is(context.Cause(r2.ctx), errPulledBack) {
		t.Fatalf("the job not running was not taken back: %v", context.Cause(r2.ctx))
	}
	if r1.ctx.Err() != nil {
		t.Fatalf("the running job was interrupted: %v", context.Cause(r1.ctx))
	}
	r1.finish(nil)
	if err := <-running; err != nil {
		t.Fatalf("the running job: %v", err)
	}
	// The one taken back waits, and runs when the backend is back.
	waitFor(t, func() bool { return f.Stats().Queued == 1 })
	f.setOut("a", false)
	a.next(t).finish(nil)
	if err := <-pending; err != nil {
		t.Fatalf("the job taken back: %v", err)
	}
}

// TestStalledJobRunsElsewhere: a job executing on a backend that is out,
// with no progress for Config.Stall, is interrupted and runs elsewhere.
func TestStalledJobRunsElsewhere(t *testing.T) {
	f, bs, clk := fakeFarm(t, Config{Slots: 1, TenantInFlight: 4, Stall: time.Minute}, 2)
	errc := runAsync(f, context.Background(), generate("192.0.2.1"))
	r := bs[0].next(t)
	r.job.OnRunning()
	f.setOut("a", true)
	clk.Advance(30 * time.Second)
	f.probed(f.members["a"], errors.New("connection refused"))
	if r.ctx.Err() != nil {
		t.Fatal("a job that ran 30 s ago was interrupted")
	}
	clk.Advance(30 * time.Second)
	f.probed(f.members["a"], errors.New("connection refused"))
	if !errors.Is(context.Cause(r.ctx), errStalled) {
		t.Fatalf("the stalled job was not interrupted: %v", context.Cause(r.ctx))
	}
	bs[1].next(t).finish(nil)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestSlowProbeIsHealthy: a probe answered within the probe timeout, however
// slow, is healthy; three not answered within it take the backend out.
func TestSlowProbeIsHealthy(t *testing.T) {
	f, bs, clk := fakeFarm(t, Config{Slots: 1, ProbeTimeout: 5 * time.Second, Interval: 2 * time.Second}, 1)
	a := bs[0]
	a.setGPUs(func(ctx context.Context) ([]engine.GPU, error) {
		clk.Advance(4 * time.Second) // loading a model: a slow answer
		return nil, nil
	})
	for range 5 {
		if err := f.Sample(context.Background(), "a"); err != nil {
			t.Fatalf("a probe answered in 4 s of 5 failed: %v", err)
		}
	}
	if !f.Stats().Backends[0].Healthy {
		t.Fatal("slow answers took the backend out")
	}
	a.setGPUs(func(ctx context.Context) ([]engine.GPU, error) {
		clk.Advance(5 * time.Second) // no answer within the timeout
		<-ctx.Done()
		return nil, context.Cause(ctx)
	})
	for i := range failuresToTrip {
		err := f.Sample(context.Background(), "a")
		if !errors.Is(err, errProbeTimeout) {
			t.Fatalf("probe %d: %v, want a probe timeout", i, err)
		}
		if healthy := f.Stats().Backends[0].Healthy; healthy != (i < failuresToTrip-1) {
			t.Fatalf("after %d timed-out probes healthy = %v", i+1, healthy)
		}
	}
}

// TestBrokenWebSocketAndFailedProbeTakeOut: a broken WebSocket asks for a
// probe at once; with that probe failing the backend is out at once (not
// after three), with it answering the backend stays in. It is back when a
// probe succeeds and the WebSocket is up.
func TestBrokenWebSocketAndFailedProbeTakeOut(t *testing.T) {
	f, _, _ := fakeFarm(t, Config{Slots: 1}, 1)
	m := f.members["a"]
	healthy := func() bool { return f.Stats().Backends[0].Healthy }

	f.connection("a", false, errors.New("websocket: close 1006"))
	select {
	case <-m.kick:
	default:
		t.Fatal("a broken WebSocket asked for no probe")
	}
	f.probed(m, nil)
	if !healthy() {
		t.Fatal("taken out by a broken WebSocket while the probe answers")
	}
	f.probed(m, errors.New("connection refused"))
	if healthy() {
		t.Fatal("a broken WebSocket and a failed probe did not take the backend out")
	}
	f.probed(m, nil)
	if healthy() {
		t.Fatal("back in while its WebSocket is still broken")
	}
	f.connection("a", true, nil)
	if !healthy() {
		t.Fatal("not back in with the WebSocket up and the probe answering")
	}
	// With the WebSocket up, one failed probe is not enough.
	f.probed(m, errors.New("connection refused"))
	if !healthy() {
		t.Fatal("one failed probe took the backend out")
	}
}

// TestPressureOnOneBackendSendsJobsToAnother: a backend under GPU pressure
// gets no new job while another can take it; the pressure is applied by
// the probe that saw it, before Sample returns.
func TestPressureOnOneBackendSendsJobsToAnother(t *testing.T) {
	mon := &fakeMonitor{}
	f, bs, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 4, Monitor: mon}, 2)
	mon.set("a", true)
	if err := f.Sample(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats().Backends[0]; !st.Pressure || !st.Healthy {
		t.Fatalf("a after its sample: %+v", st)
	}
	errc := runAsync(f, context.Background(), generate("192.0.2.1"))
	bs[1].next(t).finish(nil) // b, though a is free
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mon.set("a", false)
	f.Sample(context.Background(), "a")
	if f.Stats().Backends[0].Pressure {
		t.Fatal("pressure not lifted by the next sample")
	}
	if mon.reports != 2 {
		t.Fatalf("%d samples reported, want 2", mon.reports)
	}
}

// TestWatchProbesEveryIntervalAndOnKick: Watch probes each backend at
// once, then every interval of the farm's clock, and at once when a broken
// WebSocket asks for it.
func TestWatchProbesEveryIntervalAndOnKick(t *testing.T) {
	mon := &fakeMonitor{}
	f, _, clk := fakeFarm(t, Config{Slots: 1, Monitor: mon, Interval: 2 * time.Second}, 1)
	reports := func() int {
		mon.mu.Lock()
		defer mon.mu.Unlock()
		return mon.reports
	}
	stop := f.Watch()
	defer stop()
	waitFor(t, func() bool { return reports() == 1 && clk.Timers() == 1 }) // first probe; waiting for the interval
	clk.Advance(2 * time.Second)
	waitFor(t, func() bool { return reports() == 2 && clk.Timers() == 1 })
	f.connection("a", false, errors.New("websocket: close 1006"))
	waitFor(t, func() bool { return reports() == 3 && clk.Timers() == 1 })
	if clk.Advance(2*time.Second - time.Nanosecond); reports() != 3 {
		t.Fatal("probed before the interval")
	}
	clk.Advance(time.Nanosecond)
	waitFor(t, func() bool { return reports() == 4 }) // and at the interval after the kick
}

// TestFailedProbeKeepsPressure: a probe that fails (a GPU under pressure
// answers late) does not lift the backend's pressure, which would send it
// new jobs again; the next probe that reads its memory decides.
func TestFailedProbeKeepsPressure(t *testing.T) {
	mon := &fakeMonitor{}
	f, bs, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 4, Monitor: mon}, 2)
	ctx := context.Background()
	mon.set("a", true)
	if err := f.Sample(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	bs[0].setGPUs(func(context.Context) ([]engine.GPU, error) {
		return nil, errors.New("no answer within the probe timeout")
	})
	mon.set("a", false) // what an engine says of a backend with no sample
	if err := f.Sample(ctx, "a"); err == nil {
		t.Fatal("the probe did not fail")
	}
	if st := f.Stats().Backends[0]; !st.Pressure || !st.Healthy {
		t.Fatalf("a after one failed probe: %+v, want still under pressure and healthy", st)
	}
	errc := runAsync(f, ctx, generate("192.0.2.1"))
	bs[1].next(t).finish(nil) // b, though a is free
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	bs[0].setGPUs(nil)
	if err := f.Sample(ctx, "a"); err != nil || f.Stats().Backends[0].Pressure {
		t.Fatalf("a probe reading a's memory again: %v, pressure %v", err, f.Stats().Backends[0].Pressure)
	}
}

// TestBackendWithoutWebSocketComesBack: a backend whose WebSocket cannot
// connect at all (jobs there are followed by polling) is taken out by one
// failed probe, as the rule says, and put back after three probes in a row
// that succeed, instead of staying out for good.
func TestBackendWithoutWebSocketComesBack(t *testing.T) {
	f, _, _ := fakeFarm(t, Config{Slots: 1}, 1)
	m := f.members["a"]
	f.connection("a", false, errors.New("websocket: bad handshake"))
	f.probed(m, errors.New("connection refused"))
	healthy := func() bool { return f.Stats().Backends[0].Healthy }
	if healthy() {
		t.Fatal("a failed probe with the WebSocket broken: still in")
	}
	for i := range failuresToTrip - 1 {
		f.probed(m, nil)
		if healthy() {
			t.Fatalf("back after %d probes with its WebSocket broken", i+1)
		}
	}
	f.probed(m, errors.New("connection refused")) // the count starts again
	for range failuresToTrip - 1 {
		f.probed(m, nil)
	}
	if healthy() {
		t.Fatal("back after probes that were not in a row")
	}
	f.probed(m, nil)
	if !healthy() {
		t.Fatalf("still out after %d probes in a row that succeeded", failuresToTrip)
	}
}
