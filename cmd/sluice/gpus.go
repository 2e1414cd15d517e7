package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/nvml"
	"github.com/sluicehq/sluice/engine"
)

// watchGPUs samples every backend's GPU memory from /system_stats (and this
// host's GPUs through NVML, where it has them) into the engine, takes
// backends that stop answering out of the farm, and returns a function that
// stops the sampling and waits for it.
func watchGPUs(backends *farm, eng *engine.Engine, every time.Duration, log *slog.Logger) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for name, c := range backends.clients {
		health := &healthReporter{eng: eng, farm: backends, backend: name, log: log}
		w := &comfyui.VRAMWatcher{Client: c, Reporter: health, Interval: every, Logger: log}
		wg.Go(func() { w.Run(ctx) })
	}
	wg.Go(func() { runNVML(ctx, eng, every, log) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// runNVML samples this host's GPUs through NVML until ctx ends; where the
// NVIDIA library is absent it says so once and stops.
func runNVML(ctx context.Context, eng *engine.Engine, every time.Duration, log *slog.Logger) {
	nvml.New(nvml.Config{Reporter: eng, Interval: every, Logger: log}).Run(ctx)
}
