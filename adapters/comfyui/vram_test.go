package comfyui_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

type report struct {
	source string
	gpus   []engine.GPU
	err    error
}

type recorder struct {
	mu      sync.Mutex
	reports []report
}

func (r *recorder) ReportGPUs(source string, gpus []engine.GPU, err error) {
	r.mu.Lock()
	r.reports = append(r.reports, report{source, gpus, err})
	r.mu.Unlock()
}

func TestVRAMWatcherReadsSystemStats(t *testing.T) {
	const total = 16 << 30
	srv := comfyuitest.NewServer(comfyuitest.Options{Devices: []comfyuitest.Device{
		{Name: "cuda:0 NVIDIA GeForce RTX 4080 : cudaMallocAsync", VRAMTotal: total, VRAMFree: total / 4},
		{Name: "cpu", Type: "cpu", Index: 1},
	}})
	defer srv.Close()
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	w := &comfyui.VRAMWatcher{Client: client, Reporter: rec, Clock: clock.NewFake(now)}
	w.SampleOnce(context.Background())
	srv.SetVRAMFree(0, total/10)
	w.SampleOnce(context.Background())

	if len(rec.reports) != 2 {
		t.Fatalf("%d reports", len(rec.reports))
	}
	first := rec.reports[0]
	if first.source != "comfyui "+srv.URL || first.err != nil || len(first.gpus) != 1 {
		t.Fatalf("first report %+v", first)
	}
	g := first.gpus[0]
	if g.ID != srv.URL+"#0" || g.Backend != srv.URL || g.MemoryTotal != total || g.MemoryUsed != total*3/4 || g.Utilization != -1 || !g.SampledAt.Equal(now) {
		t.Fatalf("gpu %+v", g)
	}
	if used := rec.reports[1].gpus[0].MemoryUsed; used != total-total/10 {
		t.Fatalf("after SetVRAMFree: used %d", used)
	}
}

func TestVRAMWatcherReportsUnreachable(t *testing.T) {
	srv := comfyuitest.NewServer(comfyuitest.Options{})
	url := srv.URL
	srv.Close()
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	(&comfyui.VRAMWatcher{Client: client, Reporter: rec, Interval: 200 * time.Millisecond}).SampleOnce(context.Background())
	if len(rec.reports) != 1 || rec.reports[0].err == nil || rec.reports[0].gpus != nil {
		t.Fatalf("an unreachable backend must be reported as an error: %+v", rec.reports)
	}
}

func TestOnExecutedBeforeOutputFetched(t *testing.T) {
	srv := comfyuitest.NewServer(comfyuitest.Options{})
	defer srv.Close()
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	calls := 0
	res, err := client.Run(context.Background(), comfyui.Job{Resource: "zimage_generate", Prompt: "a kite", Width: 256, Height: 256,
		OnExecuted: func() { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 || len(res.Image) == 0 {
		t.Fatalf("OnExecuted called %d times; image %d bytes", calls, len(res.Image))
	}
}
