package nvml

import (
	"testing"

	"github.com/sluicehq/sluice/adapters/internal/leaktest"
)

// TestMain fails the package if a Run outlives its test.
func TestMain(m *testing.M) {
	leaktest.Main(m, "sluice/adapters/nvml.(*Sampler)")
}
