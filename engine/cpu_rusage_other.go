//go:build !unix

package engine

import (
	"errors"
	"fmt"
	"runtime"
	"time"
)

// ProcessCPUTime is not implemented here: the CPU rule then never refuses.
func ProcessCPUTime() (time.Duration, error) {
	return 0, fmt.Errorf("process cpu time on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
