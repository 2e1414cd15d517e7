package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

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

func newVersionCmd(s streams) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, and whether this build reads NVIDIA GPUs",
		Long: `version prints sluice's version, its NVML variant ("cgo": reads NVIDIA GPUs through
NVML; "nonvml": built without, GPU memory then comes from ComfyUI's /system_stats) and
the Go toolchain it was built with.`,
		Example: `  sluice version
  sluice --version`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(s.out, versionLine())
			return nil
		},
	}
}
