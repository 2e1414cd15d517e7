package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// farm shares the ComfyUI backends between tenants: an exact number of
// slots per backend, and a bounded queue, fair between tenants and weighted
// by cost, for jobs that find every slot taken.
type farm struct {
	d       *dispatch.Dispatcher
	clients map[string]*comfyui.Client
}

var _ httpapi.Runner = (*farm)(nil)

func newFarm(clients []*comfyui.Client, slots, maxQueue, tenantInFlight int, maxWait time.Duration) (*farm, error) {
	f := &farm{clients: make(map[string]*comfyui.Client, len(clients))}
	var backends []dispatch.BackendConfig
	for _, c := range clients {
		if _, dup := f.clients[c.BaseURL()]; dup {
			return nil, fmt.Errorf("--comfyui %s given twice", c.BaseURL())
		}
		f.clients[c.BaseURL()] = c
		backends = append(backends, dispatch.BackendConfig{Name: c.BaseURL(), Slots: slots})
	}
	d, err := dispatch.New(dispatch.Config{Backends: backends, MaxQueue: maxQueue, MaxWait: maxWait, TenantInFlight: tenantInFlight})
	if err != nil {
		return nil, fmt.Errorf("backends: %w", err)
	}
	f.d = d
	return f, nil
}

// Run waits for a slot, runs the job on that backend and frees the slot.
func (f *farm) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	lease, err := f.d.Acquire(ctx, job.Tenant, max(job.Cost, 1))
	if err != nil {
		var r *dispatch.Refusal
		if errors.As(err, &r) {
			return nil, &httpapi.BusyError{Reason: r.Error(), RetryAfter: r.RetryAfter, OverShare: r.Reason == dispatch.ReasonTenantBusy}
		}
		return nil, err
	}
	// The slot is free as soon as ComfyUI has executed the prompt, while
	// its output is still being fetched; Release is idempotent, so the
	// second call only covers jobs that failed before that.
	start := time.Now()
	cj := job.Job
	cj.OnExecuted = func() { lease.Release(time.Since(start)) }
	res, err := f.clients[lease.Backend()].Run(ctx, cj)
	lease.Release(time.Since(start))
	return res, err
}

// healthReporter passes GPU samples on to the engine and, from whether a
// backend answers /system_stats, takes it out of the farm after failing
// samples in a row and back in at its first answer: a circuit breaker whose
// probe is the sampling itself.
type healthReporter struct {
	eng     *engine.Engine
	d       *dispatch.Dispatcher
	backend string
	log     *slog.Logger

	mu       sync.Mutex
	failures int
	out      bool
}

// failuresToTrip is how many failed samples in a row take a backend out.
const failuresToTrip = 3

func (h *healthReporter) ReportGPUs(source string, gpus []engine.GPU, err error) {
	h.eng.ReportGPUs(source, gpus, err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.failures++
		if h.failures >= failuresToTrip && !h.out {
			h.out = true
			h.d.SetHealthy(h.backend, false)
			h.log.Warn("backend taken out: it does not answer", slog.String("backend", h.backend), slog.Any("error", err))
		}
		return
	}
	h.failures = 0
	if h.out {
		h.out = false
		h.d.SetHealthy(h.backend, true)
		h.log.Info("backend back in", slog.String("backend", h.backend))
	}
}
