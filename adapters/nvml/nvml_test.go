//go:build cgo && !nonvml

package nvml

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

const gib = 1 << 30

// device is one mocked GPU.
type device struct {
	name       string
	used       uint64
	total      uint64
	util       uint32        // percent
	memErr     gonvml.Return // from GetMemoryInfo
	utilErr    gonvml.Return // from GetUtilizationRates
	noHandle   gonvml.Return // from DeviceGetHandleByIndex
	nameFailed bool
}

func (d *device) mock() *mock.Device {
	return &mock.Device{
		GetNameFunc: func() (string, gonvml.Return) {
			if d.nameFailed {
				return "", gonvml.ERROR_UNKNOWN
			}
			return d.name, gonvml.SUCCESS
		},
		GetMemoryInfoFunc: func() (gonvml.Memory, gonvml.Return) {
			if d.memErr != gonvml.SUCCESS {
				return gonvml.Memory{}, d.memErr
			}
			return gonvml.Memory{Total: d.total, Used: d.used, Free: d.total - d.used}, gonvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (gonvml.Utilization, gonvml.Return) {
			if d.utilErr != gonvml.SUCCESS {
				return gonvml.Utilization{}, d.utilErr
			}
			return gonvml.Utilization{Gpu: d.util, Memory: d.util / 2}, gonvml.SUCCESS
		},
	}
}

// mockNVML is an NVML with the given devices whose Init returns initRet.
func mockNVML(initRet gonvml.Return, devs ...*device) *mock.Interface {
	return &mock.Interface{
		InitFunc:     func() gonvml.Return { return initRet },
		ShutdownFunc: func() gonvml.Return { return gonvml.SUCCESS },
		DeviceGetCountFunc: func() (int, gonvml.Return) {
			return len(devs), gonvml.SUCCESS
		},
		DeviceGetHandleByIndexFunc: func(i int) (gonvml.Device, gonvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, gonvml.ERROR_INVALID_ARGUMENT
			}
			if devs[i].noHandle != gonvml.SUCCESS {
				return nil, devs[i].noHandle
			}
			return devs[i].mock(), gonvml.SUCCESS
		},
	}
}

func mockSampler(lib gonvml.Interface, cfg Config) *Sampler {
	if cfg.Clock == nil {
		cfg.Clock = clock.NewFake(testNow)
	}
	return newSampler(nvmlLibrary{lib}, cfg)
}

func TestSampleOnceMemoryLevels(t *testing.T) {
	const total = 16 * gib
	tests := []struct {
		name     string
		used     uint64
		util     uint32
		wantUtil float64
	}{
		{"10% used, nearly idle", total / 10, 3, 0.03},
		{"87.5% used, at the default threshold", total * 7 / 8, 50, 0.5},
		{"95% used, saturated", total * 95 / 100, 100, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib := mockNVML(gonvml.SUCCESS, &device{name: "NVIDIA GeForce RTX 4080", used: tt.used, total: total, util: tt.util})
			gpus, err := mockSampler(lib, Config{}).SampleOnce(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			want := engine.GPU{ID: "nvml:0", Source: "nvml", Index: 0, Name: "NVIDIA GeForce RTX 4080",
				MemoryUsed: tt.used, MemoryTotal: total, Utilization: tt.wantUtil, SampledAt: testNow}
			if len(gpus) != 1 || gpus[0] != want {
				t.Fatalf("got %+v\nwant [%+v]", gpus, want)
			}
		})
	}
}

func TestSampleOnceTwoDevices(t *testing.T) {
	lib := mockNVML(gonvml.SUCCESS,
		&device{name: "NVIDIA H100 80GB HBM3", used: 70 * gib, total: 80 * gib, util: 97},
		&device{name: "NVIDIA L4", used: 2 * gib, total: 24 * gib, util: 0},
	)
	gpus, err := mockSampler(lib, Config{}).SampleOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []engine.GPU{
		{ID: "nvml:0", Source: "nvml", Index: 0, Name: "NVIDIA H100 80GB HBM3", MemoryUsed: 70 * gib, MemoryTotal: 80 * gib, Utilization: 0.97, SampledAt: testNow},
		{ID: "nvml:1", Source: "nvml", Index: 1, Name: "NVIDIA L4", MemoryUsed: 2 * gib, MemoryTotal: 24 * gib, Utilization: 0, SampledAt: testNow},
	}
	if len(gpus) != len(want) || gpus[0] != want[0] || gpus[1] != want[1] {
		t.Fatalf("got %+v\nwant %+v", gpus, want)
	}
	if n := len(lib.InitCalls()); n != 1 {
		t.Fatalf("Init called %d times", n)
	}
}

func TestSampleOnceDeviceErrors(t *testing.T) {
	ok := func() *device { return &device{name: "ok", used: gib, total: 16 * gib, util: 10} }
	tests := []struct {
		name      string
		broken    *device
		wantIDs   []string // devices reported
		wantErr   string   // in the error; "" for none
		wantIs    error
		wantUtil1 float64 // utilisation of nvml:1 where reported
	}{
		{"memory unreadable: left out", &device{memErr: gonvml.ERROR_GPU_IS_LOST}, []string{"nvml:0", "nvml:2"},
			"nvml device 1: GetMemoryInfo: ERROR_GPU_IS_LOST", gonvml.ERROR_GPU_IS_LOST, 0},
		{"no handle: left out", &device{noHandle: gonvml.ERROR_NO_PERMISSION}, []string{"nvml:0", "nvml:2"},
			"nvml device 1: DeviceGetHandleByIndex: ERROR_NO_PERMISSION", gonvml.ERROR_NO_PERMISSION, 0},
		{"utilisation not supported (MIG): -1, no error", &device{used: gib, total: 16 * gib, utilErr: gonvml.ERROR_NOT_SUPPORTED},
			[]string{"nvml:0", "nvml:1", "nvml:2"}, "", nil, -1},
		{"utilisation failing: kept with -1, named in the error", &device{used: gib, total: 16 * gib, utilErr: gonvml.ERROR_UNKNOWN},
			[]string{"nvml:0", "nvml:1", "nvml:2"}, "nvml device 1: GetUtilizationRates: ERROR_UNKNOWN", gonvml.ERROR_UNKNOWN, -1},
		{"name failing: kept unnamed, named in the error", &device{used: gib, total: 16 * gib, util: 40, nameFailed: true},
			[]string{"nvml:0", "nvml:1", "nvml:2"}, "nvml device 1: GetName: ERROR_UNKNOWN", gonvml.ERROR_UNKNOWN, 0.4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib := mockNVML(gonvml.SUCCESS, ok(), tt.broken, ok())
			gpus, err := mockSampler(lib, Config{}).SampleOnce(context.Background())
			var ids []string
			for _, g := range gpus {
				ids = append(ids, g.ID)
				if g.ID == "nvml:1" && g.Utilization != tt.wantUtil1 {
					t.Errorf("nvml:1 utilisation %v, want %v", g.Utilization, tt.wantUtil1)
				}
			}
			if strings.Join(ids, ",") != strings.Join(tt.wantIDs, ",") {
				t.Errorf("reported %v, want %v", ids, tt.wantIDs)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr || !errors.Is(err, tt.wantIs)):
				t.Errorf("error %v, want %q wrapping %v", err, tt.wantErr, tt.wantIs)
			}
		})
	}
}

func TestSampleOnceCountFails(t *testing.T) {
	lib := mockNVML(gonvml.SUCCESS)
	lib.DeviceGetCountFunc = func() (int, gonvml.Return) { return 0, gonvml.ERROR_UNKNOWN }
	gpus, err := mockSampler(lib, Config{}).SampleOnce(context.Background())
	if gpus != nil || !errors.Is(err, gonvml.ERROR_UNKNOWN) || isUnavailable(err) {
		t.Fatalf("got %v, %v", gpus, err)
	}
}

func TestRunInitFailsReportsUnavailableOnce(t *testing.T) {
	tests := []struct {
		name   string
		ret    gonvml.Return
		reason string
	}{
		{"no NVIDIA library", gonvml.ERROR_LIBRARY_NOT_FOUND, "NVIDIA driver library libnvidia-ml.so.1 not found (ERROR_LIBRARY_NOT_FOUND)"},
		{"driver not loaded", gonvml.ERROR_DRIVER_NOT_LOADED, "nvml.Init: ERROR_DRIVER_NOT_LOADED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib := mockNVML(tt.ret, &device{name: "never read", total: 1})
			rec := &reporter{}
			lg := &logs{}
			s := mockSampler(lib, Config{Reporter: rec, Logger: slog.New(lg)})
			s.Run(context.Background()) // returns by itself
			assertUnavailableOnce(t, rec, lg, tt.reason)
			if err := rec.all()[0].err; !errors.Is(err, tt.ret) {
				t.Errorf("reported %v, want it to wrap %v", err, tt.ret)
			}
			// Later samples fail the same way without trying or logging again.
			if _, err := s.SampleOnce(context.Background()); !isUnavailable(err) {
				t.Errorf("SampleOnce after a failed Init: %v", err)
			}
			if n := len(lg.all()); n != 1 {
				t.Errorf("%d log records, want 1", n)
			}
			if n := len(lib.InitCalls()); n != 1 {
				t.Errorf("Init called %d times, want 1", n)
			}
			if n := len(lib.ShutdownCalls()); n != 0 {
				t.Errorf("Shutdown called %d times after a failed Init", n)
			}
			if n := len(lib.DeviceGetCountCalls()); n != 0 {
				t.Errorf("devices read %d times after a failed Init", n)
			}
		})
	}
}

func TestRunSamplesUntilCancelledThenShutsDown(t *testing.T) {
	const total = 16 * gib
	gpu0 := &device{name: "NVIDIA GeForce RTX 4080", used: total / 10, total: total, util: 5}
	gpu1 := &device{name: "NVIDIA GeForce RTX 4080", used: total / 10, total: total, util: 5}
	lib := mockNVML(gonvml.SUCCESS, gpu0, gpu1)
	rec := &reporter{notify: make(chan report)}
	lg := &logs{}
	s := mockSampler(lib, Config{Reporter: rec, Logger: slog.New(lg)})
	ticks := manualTicks(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()

	if r := <-rec.notify; r.err != nil || len(r.gpus) != 2 || r.gpus[0].MemoryUsed != total/10 {
		t.Fatalf("first report %+v", r)
	}
	gpu0.used, gpu0.util = total*95/100, 100 // Run is waiting for the tick
	ticks <- testNow
	if r := <-rec.notify; r.err != nil || len(r.gpus) != 2 || r.gpus[0].MemoryUsed != total*95/100 || r.gpus[0].Utilization != 1 {
		t.Fatalf("second report %+v", r)
	}
	gpu1.memErr = gonvml.ERROR_GPU_IS_LOST
	ticks <- testNow
	if r := <-rec.notify; r.err != nil || len(r.gpus) != 1 || r.gpus[0].ID != "nvml:0" {
		t.Fatalf("with nvml:1 lost, want nvml:0 reported without error: %+v", r)
	}
	if recs := lg.all(); len(recs) != 1 || recs[0].Level != slog.LevelWarn {
		t.Fatalf("want one warning for the lost device, got %v", recs)
	}
	cancel()
	<-done
	if n := len(lib.ShutdownCalls()); n != 1 {
		t.Fatalf("Shutdown called %d times, want 1", n)
	}
	if err := s.Close(); err != nil || len(lib.ShutdownCalls()) != 1 {
		t.Fatalf("Close after Run: %v, %d Shutdown calls", err, len(lib.ShutdownCalls()))
	}
}

func TestCloseReportsShutdownFailure(t *testing.T) {
	lib := mockNVML(gonvml.SUCCESS)
	lib.ShutdownFunc = func() gonvml.Return { return gonvml.ERROR_UNKNOWN }
	s := mockSampler(lib, Config{})
	if _, err := s.SampleOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, gonvml.ERROR_UNKNOWN) {
		t.Fatalf("Close: %v", err)
	}
}
