//go:build !cgo || nonvml

package nvml

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/engine"
)

// Variant names this build: "nonvml", NVML is left out (CGO_ENABLED=0 or
// the nonvml tag); "cgo" in a build that reads NVML. `sluice version` and
// /api/system show it.
const Variant = "nonvml"

// noLibrary stands in for NVML in a build without it (no cgo, or the nonvml
// tag): it is never available.
type noLibrary struct{}

func defaultLibrary() library { return noLibrary{} }

func (noLibrary) open() error {
	return fmt.Errorf("%w: built without NVML support", ErrUnavailable)
}

func (l noLibrary) read(context.Context, time.Time) ([]engine.GPU, error) {
	return nil, l.open()
}

func (noLibrary) close() error { return nil }
