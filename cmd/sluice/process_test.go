package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// serveChildEnv, set to 1, makes the test binary run sluice's main
// instead of the tests: a gateway in a process of its own.
const serveChildEnv = "SLUICE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(serveChildEnv) == "1" {
		main() // exits on error
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startServeProcess runs `sluice serve` as startServe does, but in a
// process of its own (this test binary running main), stopped by SIGINT.
// Two gateways cannot share the test's process: sentinel-golang keeps its
// rules and statistics process-wide, and serve's engine claims them.
func startServeProcess(t *testing.T, extra ...string) *gateway {
	t.Helper()
	return startServeWith(t, func(ctx context.Context, args []string, stderr io.Writer) error {
		cmd := exec.CommandContext(ctx, os.Args[0], args...)
		cmd.Env = append(os.Environ(), serveChildEnv+"=1")
		cmd.Stderr = stderr
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		cmd.WaitDelay = 20 * time.Second
		err := cmd.Run()
		if err != nil && ctx.Err() != nil && cmd.ProcessState != nil && cmd.ProcessState.Success() {
			return nil // stopped by its signal, cleanly
		}
		return err
	}, extra...)
}
