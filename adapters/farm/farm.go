package farm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// Config configures a Farm.
type Config struct {
	// Clients are the backends, one ComfyUI client each; their base URLs
	// name them and must differ.
	Clients []*comfyui.Client
	// Slots is the jobs each backend runs at once (0: dispatch.DefaultSlots).
	Slots int
	// MaxQueue bounds the jobs waiting for a slot, over all tenants.
	MaxQueue int
	// MaxWait bounds how long a job waits for a slot.
	MaxWait time.Duration
	// TenantInFlight bounds the jobs one tenant has running or waiting.
	TenantInFlight int
	// Logger logs the farm's decisions; nil discards them.
	Logger *slog.Logger
}

// Farm shares the ComfyUI backends between tenants and runs jobs on them.
type Farm struct {
	d       *dispatch.Dispatcher
	clients map[string]*comfyui.Client
	names   []string // the backends, in the order given
	log     *slog.Logger

	mu   sync.Mutex
	down map[string]chan struct{} // per backend: closed when it is taken out
	out  map[string]bool
}

// errBackendDown cancels the jobs of a backend taken out of the farm.
var errBackendDown = errors.New("backend taken out of the farm")

var (
	_ httpapi.Runner     = (*Farm)(nil)
	_ httpapi.Prechecker = (*Farm)(nil)
)

// New makes a Farm of cfg's backends, every one healthy.
func New(cfg Config) (*Farm, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Farm{clients: make(map[string]*comfyui.Client, len(cfg.Clients)), log: log,
		down: make(map[string]chan struct{}), out: make(map[string]bool)}
	var backends []dispatch.BackendConfig
	for _, c := range cfg.Clients {
		if _, dup := f.clients[c.BaseURL()]; dup {
			return nil, fmt.Errorf("farm: backend %s given twice", c.BaseURL())
		}
		f.clients[c.BaseURL()] = c
		f.names = append(f.names, c.BaseURL())
		f.down[c.BaseURL()] = make(chan struct{})
		backends = append(backends, dispatch.BackendConfig{Name: c.BaseURL(), Slots: cfg.Slots})
	}
	d, err := dispatch.New(dispatch.Config{Backends: backends, MaxQueue: cfg.MaxQueue, MaxWait: cfg.MaxWait, TenantInFlight: cfg.TenantInFlight})
	if err != nil {
		return nil, fmt.Errorf("farm: %w", err)
	}
	f.d = d
	return f, nil
}

// Stats is a snapshot of the farm's slots and queue.
func (f *Farm) Stats() dispatch.Stats { return f.d.Stats() }

// Run waits for a slot, runs the job on that backend and frees the slot. A
// job whose backend is taken out of the farm while it runs is interrupted
// there and run once more elsewhere: it never runs on two backends at once.
// A refusal of the dispatcher is an *httpapi.BusyError.
func (f *Farm) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	for attempt := 1; ; attempt++ {
		res, backend, err := f.runOnce(ctx, job)
		if err == nil || attempt == 2 || ctx.Err() != nil || !errors.Is(err, errBackendDown) {
			return res, err
		}
		f.log.Warn("job re-run elsewhere: its backend was taken out", slog.String("backend", backend), slog.String("tenant", job.Tenant))
	}
}

func (f *Farm) runOnce(ctx context.Context, job httpapi.Job) (*comfyui.Result, string, error) {
	lease, err := f.d.AcquireWith(ctx, job.Tenant, max(job.Cost, 1), job.OnQueued)
	if err != nil {
		var r *dispatch.Refusal
		if errors.As(err, &r) {
			return nil, "", busy(r)
		}
		return nil, "", err
	}
	// The slot is free as soon as ComfyUI has executed the prompt, while
	// its output is still being fetched (OnExecuted below); Release is
	// idempotent, so this deferred call frees it on every other path: an
	// error, a timeout, a cancellation, the backend taken out, a panic.
	start := time.Now()
	defer func() { lease.Release(time.Since(start)) }()
	backend := lease.Backend()
	// The job's context ends, with errBackendDown as its cause, if the
	// backend is taken out while it runs.
	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f.mu.Lock()
	down := f.down[backend]
	f.mu.Unlock()
	watch := make(chan struct{})
	go func() {
		select {
		case <-down:
			cancel(errBackendDown)
		case <-jobCtx.Done():
		case <-watch:
		}
	}()
	defer close(watch)

	cj := job.Job
	cj.OnExecuted = func() { lease.Release(time.Since(start)) }
	if job.OnStarted != nil {
		cj.OnQueued = func(promptID string) { job.OnStarted(backend, promptID) }
	}
	res, err := f.clients[backend].Run(jobCtx, cj)
	if err != nil && errors.Is(context.Cause(jobCtx), errBackendDown) {
		err = fmt.Errorf("%w: %s: %w", errBackendDown, backend, err)
	}
	return res, backend, err
}

// Precheck says whether the farm would refuse a job of tenant now, so that
// an async job is answered with it at once rather than failing after its
// 202.
func (f *Farm) Precheck(tenant string) error {
	if r := f.d.Check(tenant); r != nil {
		return busy(r)
	}
	return nil
}

// busy is a dispatch refusal as the HTTP API answers it.
func busy(r *dispatch.Refusal) *httpapi.BusyError {
	return &httpapi.BusyError{Reason: r.Error(), RetryAfter: r.RetryAfter, OverShare: r.Reason == dispatch.ReasonTenantBusy}
}

// setOut takes a backend out of the farm (its running jobs are cancelled
// and re-run elsewhere) or puts it back in.
func (f *Farm) setOut(backend string, out bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.out[backend] == out {
		return
	}
	f.out[backend] = out
	if out {
		close(f.down[backend])
	} else {
		f.down[backend] = make(chan struct{})
	}
	f.d.SetHealthy(backend, !out)
}
