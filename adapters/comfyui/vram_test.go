package comfyui_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

func TestGPUsReadsSystemStats(t *testing.T) {
	const total = 16 << 30
	srv := comfyuitest.NewServer(comfyuitest.Options{Devices: []comfyuitest.Device{
		{Name: "cuda:0 NVIDIA GeForce RTX 4080 : cudaMallocAsync", VRAMTotal: total, VRAMFree: total / 4},
	}})
	defer srv.Close()
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	gpus, err := client.GPUs(context.Background(), now)
	if err != nil || len(gpus) != 1 {
		t.Fatalf("gpus %+v, %v", gpus, err)
	}
	g := gpus[0]
	if g.ID != srv.URL+"#0" || g.Backend != srv.URL || g.Type != "cuda" || g.MemoryTotal != total || g.MemoryUsed != total*3/4 || g.Utilization != -1 || !g.SampledAt.Equal(now) {
		t.Fatalf("gpu %+v", g)
	}
	srv.SetVRAMFree(0, total/10)
	if gpus, _ = client.GPUs(context.Background(), now); gpus[0].MemoryUsed != total-total/10 {
		t.Fatalf("after SetVRAMFree: used %d", gpus[0].MemoryUsed)
	}
}

// TestGPUsAsRealComfyUIReports: a CPU-only ComfyUI's device ("index":
// null) comes back as a CPU, and PyTorch's cached memory, which vram_free
// already holds, is not counted twice.
func TestGPUsAsRealComfyUIReports(t *testing.T) {
	const gb = 1 << 30
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"system": {"os": "posix", "comfyui_version": "0.3.64"}, "devices": [
			{"name": "cpu", "type": "cpu", "index": null, "vram_total": 34359738368, "vram_free": 17179869184, "torch_vram_total": 34359738368, "torch_vram_free": 17179869184},
			{"name": "cuda:1 NVIDIA L4", "type": "cuda", "index": 1, "vram_total": 25769803776, "vram_free": 10737418240, "torch_vram_total": 8589934592, "torch_vram_free": 4294967296}]}`))
	}))
	defer srv.Close()
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	stats, err := client.SystemStats(context.Background())
	if err != nil || stats.Devices[0].Index != nil || stats.Devices[1].Index == nil || *stats.Devices[1].Index != 1 {
		t.Fatalf("system stats %+v, %v", stats, err)
	}
	gpus, err := client.GPUs(context.Background(), time.Now())
	if err != nil || len(gpus) != 2 {
		t.Fatalf("devices %+v, %v", gpus, err)
	}
	if c := gpus[0]; c.Type != "cpu" || c.Index != -1 || c.ID != srv.URL+"#cpu" {
		t.Fatalf("cpu device %+v", c)
	}
	// 24 GB, 10 GB free of which 4 GB PyTorch's cache: 14 GB used.
	if g := gpus[1]; g.Type != "cuda" || g.Index != 1 || g.ID != srv.URL+"#1" || g.MemoryUsed != 14*gb || g.MemoryTotal != 24*gb {
		t.Fatalf("gpu %+v", g)
	}
}

func TestGPUsUnreachable(t *testing.T) {
	srv := comfyuitest.NewServer(comfyuitest.Options{})
	url := srv.URL
	srv.Close()
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	if gpus, err := client.GPUs(context.Background(), time.Now()); err == nil || gpus != nil {
		t.Fatalf("an unreachable backend: %+v, %v", gpus, err)
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
