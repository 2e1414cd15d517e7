package comfyui

import (
	"testing"

	"github.com/sluicehq/sluice/adapters/internal/leaktest"
)

// TestMain fails the package if goroutines of the client, the fake server or
// the WebSocket library outlive the tests.
func TestMain(m *testing.M) {
	leaktest.Main(m, "sluice/adapters/comfyui", "coder/websocket")
}
