// Package nvml reads this host's NVIDIA GPUs through NVML
// (github.com/NVIDIA/go-nvml) and reports them to the engine: for every
// device its index, name, memory used and total, and utilisation, as an
// engine.GPU with ID "nvml:<index>" and Source "nvml".
//
// A Sampler initialises NVML once, on its first sample. Where that fails —
// no NVIDIA driver on the host (ERROR_LIBRARY_NOT_FOUND), the driver not
// loaded, or a binary built without NVML — it logs once at info that the GPU
// metrics come from ComfyUI's /system_stats only, Run reports the source as
// unavailable once (an error wrapping ErrUnavailable) and returns: a gateway
// on a host without GPUs runs exactly as it would otherwise. A device that
// cannot be read is left out of the sample and named in the error; the
// others are still reported.
//
//	s := nvml.New(nvml.Config{Reporter: eng, Interval: 2 * time.Second, Logger: log})
//	go s.Run(ctx) // samples until ctx ends, then shuts NVML down
//
// go-nvml needs cgo. A build without cgo (CGO_ENABLED=0), or with the
// nonvml build tag, leaves NVML out: New then returns a Sampler that
// reports "NVML not available: built without NVML support". The exported API
// is the same in both builds.
//
// # Checking against a real GPU
//
// The tests use go-nvml's mock package and need no GPU. To check the sampler
// against real devices, build the test binary and run it on the GPU host:
//
//	go test -c -o nvml.test ./adapters/nvml && ./nvml.test -test.run TestRealDevice -test.v
//
// TestRealDevice skips where NVML is not available and otherwise checks that
// every device has memory total > 0, used <= total and a utilisation in
// [0, 1].
package nvml
