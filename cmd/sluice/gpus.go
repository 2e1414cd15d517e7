package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/farm"
	"github.com/sluicehq/sluice/adapters/nvml"
	"github.com/sluicehq/sluice/engine"
)

// watchGPUs starts the farm's health probes (which sample every backend's
// GPU memory into the engine) and samples this host's GPUs through NVML,
// where it has them; it returns a function that stops both and waits.
func watchGPUs(backends *farm.Farm, eng *engine.Engine, every time.Duration, log *slog.Logger) func() {
	stopFarm := backends.Watch()
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

// sampledSimulator is the built-in simulator whose GPU memory, when set,
// is sampled into the farm and the engine before the setter returns.
type sampledSimulator struct {
	*comfyuitest.Server
	farm *farm.Farm
}

// SetVRAMUsed sets the simulator's memory in use and samples it at once.
func (s sampledSimulator) SetVRAMUsed(ratio float64) {
	s.Server.SetVRAMUsed(ratio)
	s.farm.Sample(context.Background(), s.URL) // bounded by the probe timeout
}
