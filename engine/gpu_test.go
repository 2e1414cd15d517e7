package engine_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

const gib = 1 << 30

// remote is a GPU behind a ComfyUI backend with used of 16 GiB in use.
func remote(clock *clock.Fake, backend string, used float64) engine.GPU {
	return engine.GPU{ID: backend + "#0", Source: "comfyui", Backend: backend, Name: "cuda:0 NVIDIA RTX 4080",
		MemoryUsed: uint64(used * 16 * gib), MemoryTotal: 16 * gib, Utilization: -1, SampledAt: clock.Now()}
}

func TestGPURejectWithHysteresis(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, "gpu: {memory_used_ratio: 0.875}\n", engine.Options{Clock: clock})
	const backend = "http://gpu-1:8188"
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	admits := func() bool {
		toks, refs := burst(t, e, 1, call)
		exitAll(toks)
		if len(refs) == 1 {
			r := refs[0]
			if r.Kind != engine.KindGPU || r.Rule != "system/gpu" || !r.Overload() || r.Threshold != 0.875 {
				t.Fatalf("refusal %+v, want the GPU rule", r)
			}
		}
		return len(toks) == 1
	}
	// 14 of 16 GB is 0.875: pressure from there; it lasts until below 0.825.
	steps := []struct {
		used float64
		want bool // admitted
	}{
		{0.50, true}, {0.80, true}, {0.875, false}, {0.86, false}, {0.83, false}, {0.88, false},
		{0.82, true}, {0.86, true}, {0.87, true}, {0.90, false}, {0.10, true},
	}
	for i, s := range steps {
		e.ReportGPUs("comfyui "+backend, []engine.GPU{remote(clock, backend, s.used)}, nil)
		if got := admits(); got != s.want {
			t.Fatalf("step %d at %.3f used: admitted %v, want %v", i, s.used, got, s.want)
		}
	}
	if st := e.Stats()[2]; st.Refused[engine.KindGPU] != 5 {
		t.Errorf("gpu refusals counted %d, want 5", st.Refused[engine.KindGPU])
	}
}

func TestGPUTightenScalesFlow(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, `resource: ddcolor_person
flow: [{threshold: 10, window: 10s}]
---
gpu: {memory_used_ratio: 0.875, action: tighten, factor: 0.5}
`, engine.Options{Clock: clock})
	const backend = "http://gpu-1:8188"
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	e.ReportGPUs("comfyui "+backend, []engine.GPU{remote(clock, backend, 0.95)}, nil)
	toks, refs := burst(t, e, 8, call)
	if len(toks) != 5 {
		t.Fatalf("tightened to 10×0.5: admitted %d, want 5", len(toks))
	}
	r := refs[0]
	if r.Kind != engine.KindGPU || r.Rule != "system/gpu" || r.Tightened != "ddcolor_person/flow[0]" || r.Threshold != 5 || r.Window != 10*time.Second {
		t.Fatalf("refusal %+v", r)
	}
	sys := e.System()
	if !sys.Pressure.Active || sys.Pressure.Action != "tighten" || sys.Pressure.Factor != 0.5 || len(sys.Pressure.Devices) != 1 || sys.Pressure.Devices[0] != backend+"#0" {
		t.Fatalf("system pressure %+v", sys.Pressure)
	}
	// Restored when the GPU recovers: the full threshold applies again.
	e.ReportGPUs("comfyui "+backend, []engine.GPU{remote(clock, backend, 0.5)}, nil)
	more, _ := burst(t, e, 8, call)
	exitAll(append(toks, more...))
	if len(more) != 5 {
		t.Fatalf("restored to 10 (5 spent): admitted %d more, want 5", len(more))
	}
	if sys := e.System(); sys.Pressure.Active || sys.Pressure.Factor != 1 {
		t.Fatalf("pressure not lifted: %+v", sys.Pressure)
	}
}

func TestGPUPerDeviceStaleAndUnavailable(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, `gpu:
  memory_used_ratio: 0.9
  devices: {"http://small:8188": {memory_used_ratio: 0.6}}
`, engine.Options{Clock: clock})
	call := engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1"}
	// 70% is fine on the big card and too much on the small one.
	e.ReportGPUs("comfyui http://big:8188", []engine.GPU{remote(clock, "http://big:8188", 0.7)}, nil)
	if _, refs := burst(t, e, 1, call); len(refs) != 0 {
		t.Fatal("0.7 on a 0.9 GPU refused")
	}
	e.ReportGPUs("comfyui http://small:8188", []engine.GPU{remote(clock, "http://small:8188", 0.7)}, nil)
	// The small one is under pressure: the farm skips it, but the big one
	// takes jobs, so the gateway admits them.
	if !e.BackendPressure("http://small:8188") || e.BackendPressure("http://big:8188") {
		t.Fatal("0.7 on a GPU limited to 0.6 is not under pressure, or the big one is")
	}
	if toks, refs := burst(t, e, 1, call); len(refs) != 0 {
		t.Fatal("pressure on one backend of two refuses")
	} else {
		exitAll(toks)
	}
	if p := e.System().Pressure; p.Active || len(p.Backends) != 1 || p.Backends[0] != "http://small:8188" || len(p.Devices) != 1 {
		t.Fatalf("pressure %+v, want the small backend, not active", p)
	}
	// A failed probe of the big one (a loaded GPU answers late) keeps its
	// last sample: it still takes jobs, so the gateway does not refuse.
	e.ReportGPUs("comfyui http://big:8188", nil, errors.New("context deadline exceeded"))
	if toks, refs := burst(t, e, 1, call); len(refs) != 0 {
		t.Fatal("a failed probe of the only backend not under pressure made the gateway refuse")
	} else {
		exitAll(toks)
	}
	// Both under pressure: the gateway refuses.
	e.ReportGPUs("comfyui http://big:8188", []engine.GPU{remote(clock, "http://big:8188", 0.95)}, nil)
	if _, refs := burst(t, e, 1, call); len(refs) != 1 {
		t.Fatal("every backend under pressure, and admitted")
	}
	// A source that stops reporting stops holding the pressure.
	clock.Advance(31 * time.Second)
	e.ReportGPUs("nvml", nil, errors.New("NVML not available: library not found"))
	if toks, refs := burst(t, e, 1, call); len(refs) != 0 {
		t.Fatal("a stale sample still refuses")
	} else {
		exitAll(toks)
	}
	sys := e.System()
	if len(sys.Sources) != 3 || sys.Sources[0].Name != "comfyui http://big:8188" || sys.Sources[2].Name != "nvml" || sys.Sources[2].Available || sys.Sources[2].Error == "" {
		t.Fatalf("sources %+v", sys.Sources)
	}
	if len(sys.GPUs) != 2 || math.Abs(sys.GPUs[1].MemoryUsedRatio-0.7) > 1e-6 || sys.GPUs[1].Pressure || e.BackendPressure("http://small:8188") {
		t.Fatalf("gpus %+v", sys.GPUs)
	}
}

func TestGPURuleChangeReevaluates(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, "gpu: {memory_used_ratio: 0.8}\n", engine.Options{Clock: clock})
	e.ReportGPUs("nvml", []engine.GPU{{ID: "nvml:0", Source: "nvml", MemoryUsed: 85, MemoryTotal: 100, Utilization: 0.2, SampledAt: clock.Now()}}, nil)
	if !e.System().Pressure.Active {
		t.Fatal("85% used under a 0.8 rule: no pressure")
	}
	if err := e.Apply(mustSet(t, "gpu: {memory_used_ratio: 0.95}\n")); err != nil {
		t.Fatal(err)
	}
	if e.System().Pressure.Active {
		t.Fatal("raising the threshold to 0.95 did not lift the pressure")
	}
	if err := e.Apply(mustSet(t, "gpu: {utilization: 0.15}\n")); err != nil {
		t.Fatal(err)
	}
	if !e.System().Pressure.Active {
		t.Fatal("utilisation 0.2 over a 0.15 rule: no pressure")
	}
}

// TestGPUHostPressureStaysGlobal: a GPU of this host (NVML) under pressure
// refuses on its own, whatever the backends say; a CPU device a backend
// reports is shown apart and never under pressure.
func TestGPUHostPressureStaysGlobal(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, "gpu: {memory_used_ratio: 0.8}\n", engine.Options{Clock: clock})
	call := engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1"}
	cpu := engine.GPU{ID: "http://cpu:8188#cpu", Source: "comfyui", Backend: "http://cpu:8188", Type: "cpu", Index: -1, Name: "cpu",
		MemoryUsed: 99, MemoryTotal: 100, Utilization: -1, SampledAt: clock.Now()}
	e.ReportGPUs("comfyui http://cpu:8188", []engine.GPU{cpu}, nil)
	e.ReportGPUs("comfyui http://gpu:8188", []engine.GPU{remote(clock, "http://gpu:8188", 0.5)}, nil)
	if toks, refs := burst(t, e, 1, call); len(refs) != 0 {
		t.Fatal("a CPU device at 99% memory counted as a GPU under pressure")
	} else {
		exitAll(toks)
	}
	sys := e.System()
	if len(sys.GPUs) != 1 || len(sys.CPUDevices) != 1 || sys.CPUDevices[0].Type != "cpu" || e.BackendPressure("http://cpu:8188") {
		t.Fatalf("gpus %+v, cpu devices %+v", sys.GPUs, sys.CPUDevices)
	}
	host := engine.GPU{ID: "nvml:0", Source: "nvml", Name: "NVIDIA H100", MemoryUsed: 90, MemoryTotal: 100, Utilization: 0.5, SampledAt: clock.Now()}
	e.ReportGPUs("nvml", []engine.GPU{host}, nil)
	if _, refs := burst(t, e, 1, call); len(refs) != 1 {
		t.Fatal("this host's GPU under pressure, and admitted")
	}
}
