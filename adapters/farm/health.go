package farm

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/engine"
)

// Watch samples every backend's GPU memory from /system_stats every
// interval into eng, takes backends that stop answering out of the farm
// and puts them back at their first answer. It returns a function that
// stops the sampling and waits for it.
func (f *Farm) Watch(eng *engine.Engine, every time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, name := range f.names {
		health := &healthReporter{eng: eng, farm: f, backend: name, log: f.log}
		w := &comfyui.VRAMWatcher{Client: f.clients[name], Reporter: health, Interval: every, Logger: f.log}
		wg.Go(func() { w.Run(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// healthReporter passes GPU samples on to the engine and, from whether a
// backend answers /system_stats, takes it out of the farm after failing
// samples in a row and back in at its first answer: a circuit breaker whose
// probe is the sampling itself.
type healthReporter struct {
	eng     *engine.Engine
	farm    *Farm
	backend string
	log     *slog.Logger

	mu       sync.Mutex
	failures int
}

// failuresToTrip is how many failed samples in a row take a backend out.
const failuresToTrip = 3

func (h *healthReporter) ReportGPUs(source string, gpus []engine.GPU, err error) {
	h.eng.ReportGPUs(source, gpus, err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.failures++
		if h.failures == failuresToTrip {
			h.log.Warn("backend taken out: it does not answer", slog.String("backend", h.backend), slog.Any("error", err))
			h.farm.setOut(h.backend, true)
		}
		return
	}
	if h.failures >= failuresToTrip {
		h.log.Info("backend back in", slog.String("backend", h.backend))
	}
	h.failures = 0
	h.farm.setOut(h.backend, false)
}
