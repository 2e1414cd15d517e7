package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/farm"
	"github.com/sluicehq/sluice/adapters/nvml"
	"github.com/sluicehq/sluice/engine"
)

// watchGPUs samples every backend's GPU memory (through the farm, which
// also takes backends that stop answering out) and this host's GPUs
// through NVML, where it has them, into the engine, and returns a function
// that stops the sampling and waits for it.
func watchGPUs(backends *farm.Farm, eng *engine.Engine, every time.Duration, log *slog.Logger) func() {
	stopFarm := backends.Watch(eng, every)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { runNVML(ctx, eng, every, log) })
	return func() {
		cancel()
		wg.Wait()
		stopFarm()
	}
}

// runNVML samples this host's GPUs through NVML until ctx ends; where the
// NVIDIA library is absent it says so once and stops.
func runNVML(ctx context.Context, eng *engine.Engine, every time.Duration, log *slog.Logger) {
	nvml.New(nvml.Config{Reporter: eng, Interval: every, Logger: log}).Run(ctx)
}
