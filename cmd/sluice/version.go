package main

import (
	"fmt"
	"runtime"

	"github.com/sluicehq/sluice/adapters/nvml"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
)

// buildInfo names this binary for GET /api/system.
func buildInfo() dashboardapi.Build {
	return dashboardapi.Build{Version: version, NVML: nvml.Variant}
}

// versionLine is what `sluice version` prints: the version, the NVML
// variant ("cgo": reads NVIDIA GPUs; "nonvml": built without) and the Go
// toolchain, e.g. "sluice v1.4.0 (nvml: cgo, go1.26.8 linux/amd64)".
func versionLine() string {
	return fmt.Sprintf("sluice %s (nvml: %s, %s %s/%s)", version, nvml.Variant, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
