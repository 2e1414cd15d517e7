//go:build unix

package engine

import (
	"fmt"
	"syscall"
	"time"
)

// ProcessCPUTime returns the user and system CPU time the process has used
// (the CPU rule's measure outside a cgroup, and the benchmarks' cpu-ns/op).
func ProcessCPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
