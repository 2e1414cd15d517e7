package farm

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// fakeBackend is a backend whose jobs and probes the test drives.
type fakeBackend struct {
	name string
	runs chan *fakeRun // each Run announces itself here

	mu   sync.Mutex
	gpus func(ctx context.Context) ([]engine.GPU, error) // nil: one idle GPU
	// auto, if set, runs the jobs instead of the test.
	auto func(ctx context.Context, job comfyui.Job) error
}

// fakeRun is one Run call on a fakeBackend: the test calls the job's
// callbacks and ends it with finish.
type fakeRun struct {
	job  comfyui.Job
	ctx  context.Context
	done chan error
}

func (r *fakeRun) finish(err error) { r.done <- err }

func (b *fakeBackend) Run(ctx context.Context, job comfyui.Job) (*comfyui.Result, error) {
	if b.auto != nil {
		if err := b.auto(ctx, job); err != nil {
			return nil, err
		}
		job.OnExecuted()
		return &comfyui.Result{PromptID: "p", Image: []byte("png")}, nil
	}
	r := &fakeRun{job: job, ctx: ctx, done: make(chan error, 1)}
	b.runs <- r
	select {
	case err := <-r.done:
		if err != nil {
			return nil, err
		}
		if job.OnExecuted != nil {
			job.OnExecuted()
		}
		return &comfyui.Result{PromptID: "p", Image: []byte("png")}, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (b *fakeBackend) GPUs(ctx context.Context, now time.Time) ([]engine.GPU, error) {
	b.mu.Lock()
	f := b.gpus
	b.mu.Unlock()
	if f != nil {
		return f(ctx)
	}
	return []engine.GPU{{ID: b.name + "#0", Source: "comfyui", Backend: b.name, Type: "cuda", MemoryTotal: 100, MemoryUsed: 10, SampledAt: now}}, nil
}

func (b *fakeBackend) setGPUs(f func(ctx context.Context) ([]engine.GPU, error)) {
	b.mu.Lock()
	b.gpus = f
	b.mu.Unlock()
}

// next waits for the next Run on b.
func (b *fakeBackend) next(t *testing.T) *fakeRun {
	t.Helper()
	select {
	case r := <-b.runs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("no job reached %s", b.name)
		return nil
	}
}

// fakeMonitor records GPU reports and says which backends are under
// pressure as the test sets it.
type fakeMonitor struct {
	mu       sync.Mutex
	reports  int
	pressure map[string]bool
}

func (m *fakeMonitor) ReportGPUs(string, []engine.GPU, error) {
	m.mu.Lock()
	m.reports++
	m.mu.Unlock()
}

func (m *fakeMonitor) BackendPressure(backend string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pressure[backend]
}

func (m *fakeMonitor) set(backend string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pressure == nil {
		m.pressure = make(map[string]bool)
	}
	m.pressure[backend] = on
}

// fakeFarm is a farm of fake backends "a", "b", ... with a fake clock.
func fakeFarm(t *testing.T, cfg Config, n int) (*Farm, []*fakeBackend, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	cfg.Clock = clk
	var bs []backend
	var fakes []*fakeBackend
	cfg.Backends = nil
	for i := range n {
		name := string(rune('a' + i))
		fb := &fakeBackend{name: name, runs: make(chan *fakeRun, 8)}
		fakes = append(fakes, fb)
		bs = append(bs, fb)
		cfg.Backends = append(cfg.Backends, comfyui.Config{BaseURL: name})
	}
	f := &Farm{}
	if err := f.init(cfg, bs); err != nil {
		t.Fatal(err)
	}
	return f, fakes, clk
}

// runAsync runs job on f in the background.
func runAsync(f *Farm, ctx context.Context, job httpapi.Job) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := f.Run(ctx, job)
		errc <- err
	}()
	return errc
}

// waitFor spins until cond holds: it waits on the farm's state, not on time.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		runtime.Gosched()
	}
}

func isBusy(err error) bool {
	var busy *httpapi.BusyError
	return errors.As(err, &busy)
}
