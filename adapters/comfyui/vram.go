package comfyui

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// BaseURL is the ComfyUI server the client talks to.
func (c *Client) BaseURL() string { return c.base }

// GPUs reads the server's GPUs from /system_stats: how a gateway that does
// not share a host with the GPUs sees their memory. ComfyUI reports no
// utilisation, so it is -1. Devices that are not CUDA GPUs (a CPU-only
// server reports "cpu") are left out.
func (c *Client) GPUs(ctx context.Context, now time.Time) ([]engine.GPU, error) {
	stats, err := c.SystemStats(ctx)
	if err != nil {
		return nil, err
	}
	var out []engine.GPU
	for _, d := range stats.Devices {
		if d.Type != "cuda" || d.VRAMTotal <= 0 {
			continue
		}
		free := min(max(d.VRAMFree, 0), d.VRAMTotal)
		out = append(out, engine.GPU{
			ID:          fmt.Sprintf("%s#%d", c.base, d.Index),
			Source:      "comfyui",
			Backend:     c.base,
			Index:       d.Index,
			Name:        d.Name,
			MemoryUsed:  uint64(d.VRAMTotal - free),
			MemoryTotal: uint64(d.VRAMTotal),
			Utilization: -1,
			SampledAt:   now,
		})
	}
	return out, nil
}

// GPUReporter takes GPU samples; *engine.Engine is one.
type GPUReporter interface {
	ReportGPUs(source string, gpus []engine.GPU, err error)
}

var _ GPUReporter = (*engine.Engine)(nil)

// VRAMWatcher samples a backend's GPUs every Interval and reports them.
type VRAMWatcher struct {
	Client   *Client
	Reporter GPUReporter
	Interval time.Duration // default 2s
	Clock    clock.Clock   // default the system clock
	Logger   *slog.Logger
}

// Source is the name the watcher reports under: "comfyui <base URL>".
func (w *VRAMWatcher) Source() string { return "comfyui " + w.Client.BaseURL() }

// SampleOnce reads the backend once and reports what it saw (or that it
// could not).
func (w *VRAMWatcher) SampleOnce(ctx context.Context) {
	clk := clock.Or(w.Clock)
	interval := w.interval()
	sctx, cancel := context.WithTimeout(ctx, interval)
	defer cancel()
	gpus, err := w.Client.GPUs(sctx, clk.Now())
	if err != nil && w.Logger != nil {
		w.Logger.Debug("reading GPU memory from ComfyUI failed", slog.String("backend", w.Client.BaseURL()), slog.Any("error", err))
	}
	w.Reporter.ReportGPUs(w.Source(), gpus, err)
}

func (w *VRAMWatcher) interval() time.Duration {
	if w.Interval <= 0 {
		return 2 * time.Second
	}
	return w.Interval
}

// Run samples until ctx ends.
func (w *VRAMWatcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval())
	defer t.Stop()
	for {
		w.SampleOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
