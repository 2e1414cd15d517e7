//go:build cgo && !nonvml

package nvml

import (
	"context"
	"errors"
	"fmt"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/sluicehq/sluice/engine"
)

// Variant names this build: "cgo" when NVML is compiled in (go-nvml, which
// loads libnvidia-ml.so.1 with dlopen when a Sampler starts, so the binary
// runs without an NVIDIA driver), "nonvml" when it is left out
// (CGO_ENABLED=0 or the nonvml tag). `sluice version` and /api/system show it.
const Variant = "cgo"

// nvmlLibrary reads the GPUs through go-nvml.
type nvmlLibrary struct{ lib gonvml.Interface }

func defaultLibrary() library { return nvmlLibrary{gonvml.New()} }

func (l nvmlLibrary) open() error {
	switch ret := l.lib.Init(); ret {
	case gonvml.SUCCESS:
		return nil
	case gonvml.ERROR_LIBRARY_NOT_FOUND:
		return fmt.Errorf("%w: NVIDIA driver library libnvidia-ml.so.1 not found (%w)", ErrUnavailable, ret)
	default:
		return fmt.Errorf("%w: nvml.Init: %w", ErrUnavailable, ret)
	}
}

func (l nvmlLibrary) close() error {
	if ret := l.lib.Shutdown(); ret != gonvml.SUCCESS {
		return fmt.Errorf("nvml.Shutdown: %w", ret)
	}
	return nil
}

func (l nvmlLibrary) read(ctx context.Context, now time.Time) ([]engine.GPU, error) {
	n, ret := l.lib.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return nil, fmt.Errorf("nvml.DeviceGetCount: %w", ret)
	}
	gpus := make([]engine.GPU, 0, n)
	var errs []error
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		g, ok, err := l.readDevice(i, now)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			gpus = append(gpus, g)
		}
	}
	return gpus, errors.Join(errs...)
}

// readDevice reads device i. ok is false where the device cannot be
// reported (no handle or no memory figures); err may come with ok true when
// only its name or utilisation failed.
func (l nvmlLibrary) readDevice(i int, now time.Time) (g engine.GPU, ok bool, err error) {
	fail := func(call string, ret gonvml.Return) error {
		return fmt.Errorf("nvml device %d: %s: %w", i, call, ret)
	}
	dev, ret := l.lib.DeviceGetHandleByIndex(i)
	if ret != gonvml.SUCCESS {
		return g, false, fail("DeviceGetHandleByIndex", ret)
	}
	// GetMemoryInfo (v1) counts the driver's reservation as used (Used =
	// Total - Free): what matters for whether another job fits.
	mem, ret := dev.GetMemoryInfo()
	if ret != gonvml.SUCCESS {
		return g, false, fail("GetMemoryInfo", ret)
	}
	g = engine.GPU{
		ID:          fmt.Sprintf("nvml:%d", i),
		Source:      Source,
		Index:       i,
		MemoryUsed:  mem.Used,
		MemoryTotal: mem.Total,
		Utilization: -1,
		SampledAt:   now,
	}
	var errs []error
	if name, ret := dev.GetName(); ret == gonvml.SUCCESS {
		g.Name = name
	} else {
		errs = append(errs, fail("GetName", ret))
	}
	// Utilisation is not supported on some devices (MIG mode, some vGPUs):
	// that is no error, the GPU simply has none to report.
	switch u, ret := dev.GetUtilizationRates(); ret {
	case gonvml.SUCCESS:
		g.Utilization = min(float64(u.Gpu)/100, 1)
	case gonvml.ERROR_NOT_SUPPORTED:
	default:
		errs = append(errs, fail("GetUtilizationRates", ret))
	}
	return g, true, errors.Join(errs...)
}
