package farm

// Integration tests: the farm with the real comfyui.Client on comfyuitest
// fakes. Each fake sits behind a listener the test controls, so that a
// backend can be cut off the way a network partition or a crashed ComfyUI
// cuts it off (its HTTP answers fail and its WebSockets break) while the
// fake itself keeps its queue and goes on executing. The farm runs on one
// fake clock (probes, probe timeouts, stalls), the clients on another
// (polls, queue checks, WebSocket reconnects): nothing waits on real time
// windows, and a test waits only for states it can observe.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/rules"
)

// comfyBackend is a comfyuitest fake served through a listener the test
// can cut.
type comfyBackend struct {
	fake *comfyuitest.Server
	url  string
	srv  *http.Server

	down     atomic.Bool // every request answers 503, new WebSockets refused
	wsRefuse atomic.Bool // only /ws is refused: HTTP answers as usual
	stats    atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	gate   chan struct{} // non-nil: /system_stats waits for it to close
	gated  chan struct{} // told when a /system_stats request waits at the gate
	failSt bool          // /system_stats answers 500

	connMu sync.Mutex
	wsUp   []bool // the client's OnConnection reports, in order
}

// newComfyBackend starts a fake ComfyUI with opts behind a controllable
// listener; t.Cleanup stops both.
func newComfyBackend(t *testing.T, opts comfyuitest.Options) *comfyBackend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &comfyBackend{fake: comfyuitest.NewHandler(opts), url: "http://" + l.Addr().String(), conns: map[net.Conn]struct{}{}}
	b.srv = &http.Server{
		Handler:           b,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			b.mu.Lock()
			defer b.mu.Unlock()
			switch st {
			case http.StateNew:
				b.conns[c] = struct{}{}
			case http.StateClosed:
				delete(b.conns, c)
			}
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.srv.Serve(l)
	}()
	t.Cleanup(func() {
		b.fake.Close() // ends its WebSocket handlers
		b.srv.Close()
		<-done
	})
	return b
}

func (b *comfyBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if b.down.Load() || b.wsRefuse.Load() && strings.HasSuffix(r.URL.Path, "/ws") {
		http.Error(w, "backend unreachable", http.StatusServiceUnavailable)
		return
	}
	if strings.HasSuffix(r.URL.Path, "/system_stats") {
		b.stats.Add(1)
		b.mu.Lock()
		gate, gated, fail := b.gate, b.gated, b.failSt
		b.mu.Unlock()
		if gate != nil {
			gated <- struct{}{}
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		if fail {
			http.Error(w, "stats failed", http.StatusInternalServerError)
			return
		}
	}
	b.fake.ServeHTTP(w, r)
}

// cut makes the backend unreachable: its answers fail and its open
// connections, WebSockets included, break. The fake goes on executing.
func (b *comfyBackend) cut() {
	b.down.Store(true)
	b.breakConns()
}

// breakConns closes every connection to the backend, hijacked WebSockets
// included (http.Server forgets those, so the listener's own record is
// used).
func (b *comfyBackend) breakConns() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		c.Close()
	}
}

// mend makes the backend reachable again.
func (b *comfyBackend) mend() { b.down.Store(false) }

// onConnection records the client's WebSocket reports.
func (b *comfyBackend) onConnection(up bool, _ error) {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	b.wsUp = append(b.wsUp, up)
}

// lastWS reports the client's last WebSocket report, and whether there was one.
func (b *comfyBackend) lastWS() (up, ok bool) {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	if len(b.wsUp) == 0 {
		return false, false
	}
	return b.wsUp[len(b.wsUp)-1], true
}

// gateStats makes /system_stats wait until the returned function is called
// (once or more);
// each request waiting announces itself on the returned channel.
func (b *comfyBackend) gateStats() (<-chan struct{}, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	gate, gated := make(chan struct{}), make(chan struct{}, 16)
	b.gate, b.gated = gate, gated
	return gated, sync.OnceFunc(func() {
		b.mu.Lock()
		b.gate = nil
		b.mu.Unlock()
		close(gate)
	})
}

func (b *comfyBackend) failStats(fail bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failSt = fail
}

// integ is a farm of real clients on comfyBackends.
type integ struct {
	f        *Farm
	backends []*comfyBackend
	farmClk  *clock.Fake // probes, probe timeouts, stalls
	comfyClk *clock.Fake // the clients' polls, queue checks and reconnects
}

// newInteg builds a farm of n fake ComfyUIs (options from opts) with real
// clients, and closes it at the end of the test after checking that it
// holds nothing: no slot, no waiter, no tenant.
func newInteg(t *testing.T, cfg Config, opts []comfyuitest.Options) *integ {
	t.Helper()
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	it := &integ{farmClk: clock.NewFake(start), comfyClk: clock.NewFake(start)}
	cfg.Backends = nil
	for _, o := range opts {
		b := newComfyBackend(t, o)
		it.backends = append(it.backends, b)
		cfg.Backends = append(cfg.Backends, comfyui.Config{BaseURL: b.url, Clock: it.comfyClk, OnConnection: b.onConnection})
	}
	cfg.Clock = it.farmClk
	cfg.Interval = cmpOr(cfg.Interval, 2*time.Second)
	cfg.ProbeTimeout = cmpOr(cfg.ProbeTimeout, 5*time.Second)
	cfg.MaxWait = cmpOr(cfg.MaxWait, time.Minute)
	cfg.TenantInFlight = cmpOr(cfg.TenantInFlight, 8)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	it.f = f
	t.Cleanup(func() {
		f.Close()
		st := f.Stats()
		for _, b := range st.Backends {
			if b.InUse != 0 {
				t.Errorf("backend %s still holds %d slots", b.Name, b.InUse)
			}
		}
		if st.Queued != 0 || len(st.Tenants) != 0 {
			t.Errorf("the farm still holds jobs: %+v", st)
		}
	})
	return it
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

// healthy reports whether backend i is in the farm.
func (it *integ) healthy(i int) bool {
	return it.f.Stats().Backends[it.index(i)].Healthy
}

// index is backend i's place in Stats().Backends (sorted by name).
func (it *integ) index(i int) int {
	return slices.IndexFunc(it.f.Stats().Backends, func(b dispatch.BackendStats) bool { return b.Name == it.backends[i].url })
}

// reconnect advances the clients' clock until backend i's client reports
// its WebSocket up again (each step lets a reconnect backoff run out).
func (it *integ) reconnect(t *testing.T, i int) {
	t.Helper()
	waitFor(t, func() bool {
		if up, ok := it.backends[i].lastWS(); ok && up {
			return true
		}
		it.comfyClk.Advance(time.Second)
		return false
	})
}

// outcome is what a job run in the background returned.
type outcome struct {
	res *comfyui.Result
	err error
}

// tracked is a job with its callbacks recorded.
type tracked struct {
	job     httpapi.Job
	started chan string // "backend prompt" per OnStarted
	running chan struct{}
	done    chan outcome
}

// track makes a Z-Image job of tenant whose callbacks the test can watch.
func track(tenant string, seed int64) *tracked {
	tr := &tracked{started: make(chan string, 8), running: make(chan struct{}, 8), done: make(chan outcome, 1)}
	tr.job = httpapi.Job{Job: comfyui.Job{Resource: "zimage_generate", Prompt: "a lighthouse", Width: 64, Height: 48, Seed: seed}, Tenant: tenant, Cost: 1}
	tr.job.OnStarted = func(backend, promptID string) { tr.started <- backend + " " + promptID }
	tr.job.OnRunning = func() { tr.running <- struct{}{} }
	return tr
}

// start runs tr on f in the background.
func (tr *tracked) start(f *Farm) *tracked {
	go func() {
		res, err := f.Run(context.Background(), tr.job)
		tr.done <- outcome{res, err}
	}()
	return tr
}

// queuedOn waits for tr's prompt to be accepted by a backend and returns
// the backend's URL and the prompt's ID.
func (tr *tracked) queuedOn(t *testing.T) (backend, promptID string) {
	t.Helper()
	select {
	case s := <-tr.started:
		backend, promptID, _ = strings.Cut(s, " ")
		return backend, promptID
	case o := <-tr.done:
		t.Fatalf("the job ended before it was queued: %v", o.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the job was never queued on a backend")
	}
	return "", ""
}

// result waits for tr's end.
func (tr *tracked) result(t *testing.T) outcome {
	t.Helper()
	select {
	case o := <-tr.done:
		return o
	case <-time.After(20 * time.Second):
		t.Fatal("the job never ended")
		return outcome{}
	}
}

// image waits for tr's end, which must be an image of prompt promptID of
// backend b, the very one the fake produced.
func (tr *tracked) image(t *testing.T, b *comfyBackend, promptID string) {
	t.Helper()
	o := tr.result(t)
	if o.err != nil {
		t.Fatalf("the job failed: %v", o.err)
	}
	if o.res.PromptID != promptID {
		t.Fatalf("the result is of prompt %s, want %s", o.res.PromptID, promptID)
	}
	r, err := b.fake.CheckOutput(o.res.Image, promptID)
	if err != nil {
		t.Fatalf("the result is not what ComfyUI produced: %v", err)
	}
	if r.Dx() != 64 || r.Dy() != 48 {
		t.Fatalf("the result is %v, want 64×48", r)
	}
}

// ended reports, without waiting, whether tr has ended yet.
func (tr *tracked) ended() bool {
	select {
	case o := <-tr.done:
		tr.done <- o
		return true
	default:
		return false
	}
}

// hold is a JobTime that blocks each prompt, once it has started running
// (execution_start sent), until the test lets it go on.
type hold struct {
	started chan struct{} // one per prompt started
	release chan struct{} // one lets one prompt go on
	quit    chan struct{} // closed: every prompt goes on
}

func newHold() *hold {
	return &hold{started: make(chan struct{}, 8), release: make(chan struct{}, 8), quit: make(chan struct{})}
}

func (h *hold) jobTime(comfyuitest.Prompt) time.Duration {
	h.started <- struct{}{}
	select {
	case <-h.release:
	case <-h.quit:
	}
	return time.Millisecond
}

// TestIntegRestartWhileQueuedRequeuesOnce (issue 10 item 1): the ComfyUI of
// a backend restarts while a job waits in its queue. The real client finds
// the prompt lost at its reconnect, queues it once more there, and the
// caller gets the image that second prompt produced; the restart alone
// (its WebSocket broke, its probe answers) does not take the backend out.
func TestIntegRestartWhileQueuedRequeuesOnce(t *testing.T) {
	it := newInteg(t, Config{Slots: 1}, []comfyuitest.Options{{}, {}})
	stop := it.f.Watch()
	defer stop()
	// Both fakes hold their queues: the job waits there, not running.
	for _, b := range it.backends {
		b.fake.Pause()
	}
	tr := track("192.0.2.1", 7).start(it.f)
	backend, first := tr.queuedOn(t)
	i := slices.IndexFunc(it.backends, func(b *comfyBackend) bool { return b.url == backend })
	b := it.backends[i]
	waitFor(t, func() bool { up, ok := b.lastWS(); return ok && up })

	b.fake.Restart()
	_, second := tr.queuedOn(t)
	if second == first {
		t.Fatalf("queued again under the same id %s", first)
	}
	// Still on the same backend, still in the farm.
	if got := b.fake.Prompts(); len(got) != 2 || got[0].ID != first || got[1].ID != second {
		t.Fatalf("the backend got prompts %v, want %s then %s", ids(got), first, second)
	}
	b.fake.Resume()
	tr.image(t, b, second)
	if !it.healthy(i) {
		t.Fatal("a ComfyUI restart took its backend out of the farm")
	}
	other := it.backends[1-i]
	if n := len(other.fake.Prompts()); n != 0 {
		t.Fatalf("the other backend got %d prompts", n)
	}
	select {
	case s := <-tr.started:
		t.Fatalf("queued a third time: %s", s)
	default:
	}
}

func ids(ps []comfyuitest.QueuedPrompt) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

// TestIntegOnlyBackendDiesJobWaitsForIt (issue 10 item 2): the only
// backend dies (its probes fail, its WebSocket breaks) while a job is
// queued there, not running. The job goes back into the farm's queue and
// runs when the backend is back, within the queue wait; the request that
// was merely waiting for a slot is refused at once.
func TestIntegOnlyBackendDiesJobWaitsForIt(t *testing.T) {
	it := newInteg(t, Config{Slots: 1}, []comfyuitest.Options{{}})
	stop := it.f.Watch()
	defer stop()
	b := it.backends[0]
	b.fake.Pause()
	queued := track("192.0.2.1", 1).start(it.f)
	_, first := queued.queuedOn(t)
	waitFor(t, func() bool { up, ok := b.lastWS(); return ok && up })
	waiting := track("192.0.2.2", 2).start(it.f)
	waitFor(t, func() bool { return it.f.Stats().Queued == 1 })

	// ComfyUI dies: its WebSocket breaks, which makes the farm probe it at
	// once, and the probe fails.
	b.cut()
	if o := waiting.result(t); !isBusy(o.err) || !strings.Contains(o.err.Error(), "no healthy backend") {
		t.Fatalf("the request waiting for a slot: %v, want a 503 for no backend at once", o.err)
	}
	waitFor(t, func() bool { return !it.healthy(0) && it.f.Stats().Queued == 1 })
	if queued.ended() {
		t.Fatalf("the job queued on the backend ended: %v", queued.result(t).err)
	}
	// A new request is refused at once too.
	if _, err := it.f.Run(context.Background(), track("192.0.2.3", 3).job); !isBusy(err) {
		t.Fatalf("a new request with no backend: %v, want a 503", err)
	}

	// It comes back (restarted: its queue is gone) well within the queue
	// wait.
	b.fake.Restart()
	b.fake.Resume()
	b.mend()
	if err := it.f.Sample(context.Background(), b.url); err != nil {
		t.Fatalf("probe of the backend back: %v", err)
	}
	it.reconnect(t, 0)
	_, second := queued.queuedOn(t)
	queued.image(t, b, second)
	if second == first {
		t.Fatal("the job's result came from the prompt of the dead ComfyUI")
	}
	if !it.healthy(0) {
		t.Fatal("the backend is not back in the farm")
	}
}

// TestIntegBackendOutLeavesRunningJobMovesQueuedOne (issue 10 item 3): of
// two backends, one is cut off (probes fail, WebSocket broken) while a job
// executes there and another waits in its ComfyUI queue. The one executing
// is not interrupted and completes there once the backend is reachable
// again; the one waiting runs on the other backend, and its prompt left on
// the cut-off ComfyUI is deleted there when it is reachable again, before
// it could run: never on two backends.
func TestIntegBackendOutLeavesRunningJobMovesQueuedOne(t *testing.T) {
	h := newHold()
	it := newInteg(t, Config{Slots: 2}, []comfyuitest.Options{{JobTime: h.jobTime}, {}})
	t.Cleanup(func() { close(h.quit) }) // before the fakes close
	a, b := it.backends[0], it.backends[1]
	// Both jobs go to a: b is out while they are given their slots (and
	// no probe runs yet to put it back).
	it.f.setOut(b.url, true)
	running := track("192.0.2.1", 1).start(it.f)
	onA, runningID := running.queuedOn(t)
	<-h.started // executing on a, held
	select {
	case <-running.running:
	case <-time.After(10 * time.Second):
		t.Fatal("the farm never heard that the job runs")
	}
	waiting := track("192.0.2.2", 2).start(it.f)
	onA2, waitingID := waiting.queuedOn(t)
	if onA != a.url || onA2 != a.url {
		t.Fatalf("jobs queued on %s and %s, want both on %s", onA, onA2, a.url)
	}
	it.f.setOut(b.url, false)
	stop := it.f.Watch()
	defer stop()

	a.cut()
	waitFor(t, func() bool { return !it.healthy(0) })
	// The job waiting in a's queue now runs on b.
	onB, movedID := waiting.queuedOn(t)
	if onB != b.url {
		t.Fatalf("the job taken back went to %s, want %s", onB, b.url)
	}
	waiting.image(t, b, movedID)

	// a is reachable again: the client deletes the prompt it could not
	// delete while a was cut off, before a gets to run it.
	a.mend()
	it.reconnect(t, 0)
	waitFor(t, func() bool { return slices.Contains(a.fake.Deletes(), waitingID) })
	if running.ended() {
		t.Fatalf("the job executing on the backend taken out ended: %v", running.result(t).err)
	}
	h.release <- struct{}{}
	running.image(t, a, runningID)
	if it.f.Sample(context.Background(), a.url) != nil || !it.healthy(0) {
		t.Fatal("a is not back in the farm")
	}
	if n := a.fake.QueueRemaining(); n != 0 {
		t.Fatalf("a still has %d prompts to run: the job taken back would run there too", n)
	}
	select {
	case <-a.fake.Done(waitingID):
		t.Fatalf("the job taken back ran on a too")
	default:
	}
	if slices.ContainsFunc(a.fake.Interrupts(), func(i comfyuitest.Interrupt) bool { return i.PromptID == runningID || i.PromptID == "" }) {
		t.Fatalf("the running job was interrupted: %+v", a.fake.Interrupts())
	}
}

// TestIntegSlowStatsNeverTakesOut (issue 10 item 3): /system_stats
// answering late, within the probe timeout, is healthy however often it
// happens; only probes past the timeout count as failed, three of them in
// a row taking the backend out.
func TestIntegSlowStatsNeverTakesOut(t *testing.T) {
	const timeout = 5 * time.Second
	it := newInteg(t, Config{Slots: 1, Interval: time.Second, ProbeTimeout: timeout}, []comfyuitest.Options{{}})
	b := it.backends[0]
	// probe runs one probe whose answer waits until the farm's clock has
	// moved by late, and returns its error.
	probe := func(late time.Duration) error {
		gated, release := b.gateStats()
		defer release()
		errc := make(chan error, 1)
		go func() { errc <- it.f.Sample(context.Background(), b.url) }()
		<-gated // the probe's timeout timer is set before its request
		it.farmClk.Advance(late)
		if late < timeout {
			release()
		}
		return <-errc
	}
	for i := range 2 * failuresToTrip {
		if err := probe(timeout - time.Millisecond); err != nil {
			t.Fatalf("slow probe %d: %v", i, err)
		}
		if !it.healthy(0) {
			t.Fatalf("slow probe %d took the backend out", i)
		}
	}
	tr := track("192.0.2.1", 1).start(it.f)
	_, id := tr.queuedOn(t)
	tr.image(t, b, id)
	// No answer within the timeout: a failure; the third in a row takes
	// the backend out.
	for i := range failuresToTrip {
		if err := probe(timeout); !errors.Is(err, errProbeTimeout) {
			t.Fatalf("probe %d past the timeout: %v", i, err)
		}
		if out := !it.healthy(0); out != (i == failuresToTrip-1) {
			t.Fatalf("after %d probes past the timeout: out %v", i+1, out)
		}
	}
}

// TestIntegGPUPressurePerBackend (issue 10 item 4): with the real engine's
// GPU rule, memory pressure on one backend's GPU (as its /system_stats
// reports it) sends new jobs to the other; the engine admits them. With
// both under pressure the engine refuses; a job admitted before waits and
// runs on the first backend whose pressure ends.
func TestIntegGPUPressurePerBackend(t *testing.T) {
	set, err := rules.ParseSet("gpu.yaml", []byte("gpu: {memory_used_ratio: 0.8}\n"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	engClk := clock.NewFake(start) // the farm's clock stamps the samples: both stay at start
	eng, err := engine.New(engine.Options{Namespace: t.Name() + "/", Clock: engClk}, set)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	it := newInteg(t, Config{Slots: 1, Monitor: eng}, []comfyuitest.Options{{}, {}})
	a, b := it.backends[0], it.backends[1]
	ctx := context.Background()
	sample := func(bk *comfyBackend) {
		t.Helper()
		if err := it.f.Sample(ctx, bk.url); err != nil {
			t.Fatal(err)
		}
	}
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	admits := func() bool {
		t.Helper()
		tok, err := eng.Guard(ctx, call)
		if err == nil {
			tok.Exit(nil)
			return true
		}
		var ref *engine.Refusal
		if !errors.As(err, &ref) || ref.Kind != engine.KindGPU {
			t.Fatalf("refused by %v, want the GPU rule", err)
		}
		return false
	}
	sample(a)
	sample(b)
	a.fake.SetVRAMUsed(0.95)
	sample(a)
	if st := it.f.Stats().Backends[it.index(0)]; !st.Pressure || !st.Healthy {
		t.Fatalf("backend a at 95%% of its memory: %+v, want under pressure and healthy", st)
	}
	if !admits() {
		t.Fatal("pressure on one backend of two refused a job")
	}
	for i := range 3 {
		tr := track("192.0.2.1", int64(i)).start(it.f)
		on, id := tr.queuedOn(t)
		if on != b.url {
			t.Fatalf("job %d went to %s, under pressure", i, on)
		}
		tr.image(t, b, id)
	}
	if n := len(a.fake.Prompts()); n != 0 {
		t.Fatalf("the backend under pressure got %d prompts", n)
	}

	b.fake.SetVRAMUsed(0.9)
	sample(b)
	if admits() {
		t.Fatal("every backend under pressure, and the engine admitted a job")
	}
	// A job admitted before the pressure waits for a backend without it.
	waiting := track("192.0.2.2", 9).start(it.f)
	waitFor(t, func() bool { return it.f.Stats().Queued == 1 })
	a.fake.SetVRAMUsed(0.1)
	sample(a)
	on, id := waiting.queuedOn(t)
	if on != a.url {
		t.Fatalf("the waiting job went to %s, want %s (its pressure is over)", on, a.url)
	}
	waiting.image(t, a, id)
	if !admits() {
		t.Fatal("one backend free of pressure, and the engine refused")
	}
}

// TestIntegWebSocketSignal (issue 10 items 3 and 5): the real client's
// OnConnection reaches the farm, which probes the backend at once. A
// broken WebSocket alone does not take the backend out, nor does one
// failed probe alone; both together do. It is back once a probe succeeds
// and its WebSocket is up again.
func TestIntegWebSocketSignal(t *testing.T) {
	it := newInteg(t, Config{Slots: 1}, []comfyuitest.Options{{}})
	b := it.backends[0]
	ctx := context.Background()
	stop := it.f.Watch()
	defer stop()
	waitFor(t, func() bool { return b.stats.Load() >= 1 }) // the first probe
	tr := track("192.0.2.1", 1).start(it.f)
	_, id := tr.queuedOn(t)
	tr.image(t, b, id)
	if up, ok := b.lastWS(); !ok || !up {
		t.Fatal("the client's WebSocket never reported up")
	}
	// One failed probe with the WebSocket up: still in.
	b.failStats(true)
	if it.f.Sample(ctx, b.url) == nil || !it.healthy(0) {
		t.Fatal("one failed probe with the WebSocket up: want a failure, the backend still in")
	}
	b.failStats(false)
	if it.f.Sample(ctx, b.url) != nil {
		t.Fatal("probe failed")
	}
	// The WebSocket breaks and cannot reconnect: the farm probes at once;
	// the probe answers, so the backend stays in.
	probes := b.stats.Load()
	b.wsRefuse.Store(true)
	b.breakConns()
	waitFor(t, func() bool { return b.stats.Load() > probes })
	if it.f.Sample(ctx, b.url) != nil || !it.healthy(0) { // after the probe the break asked for
		t.Fatal("a broken WebSocket alone took the backend out")
	}
	if up, _ := b.lastWS(); up {
		t.Fatal("the client did not report its WebSocket down")
	}
	// A failed probe now takes it out.
	b.failStats(true)
	if it.f.Sample(ctx, b.url) == nil || it.healthy(0) {
		t.Fatal("a failed probe with the WebSocket broken: want the backend out")
	}
	// Probes answer again, the WebSocket is still refused: still out.
	b.failStats(false)
	if it.f.Sample(ctx, b.url) != nil || it.healthy(0) {
		t.Fatal("back in while its WebSocket is still broken")
	}
	b.wsRefuse.Store(false)
	it.reconnect(t, 0)
	waitFor(t, func() bool { return it.healthy(0) })
	tr = track("192.0.2.1", 2).start(it.f)
	_, id = tr.queuedOn(t)
	tr.image(t, b, id)
}

// TestIntegOnlyBackendNeverBackRefusesAfterQueueWait (issue 10 item 2): a
// job taken back from the only backend waits for it up to the queue wait
// on the farm's clock, then is answered 503; nothing stays held.
func TestIntegOnlyBackendNeverBackRefusesAfterQueueWait(t *testing.T) {
	const wait = 30 * time.Second
	it := newInteg(t, Config{Slots: 1, MaxWait: wait}, []comfyuitest.Options{{}})
	stop := it.f.Watch()
	defer stop()
	b := it.backends[0]
	b.fake.Pause()
	tr := track("192.0.2.1", 1).start(it.f)
	tr.queuedOn(t)
	waitFor(t, func() bool { up, ok := b.lastWS(); return ok && up })
	b.cut()
	waitFor(t, func() bool { return !it.healthy(0) && it.f.Stats().Queued == 1 })
	it.farmClk.Advance(wait - time.Second)
	if tr.ended() {
		t.Fatalf("refused before the queue wait: %v", tr.result(t).err)
	}
	it.farmClk.Advance(time.Second)
	if o := tr.result(t); !isBusy(o.err) || !strings.Contains(o.err.Error(), "waited too long") {
		t.Fatalf("after the queue wait: %v, want a 503 for waiting too long", o.err)
	}
}
