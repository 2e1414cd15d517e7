package dispatch_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestMain fails the run if a goroutine is still inside Acquire once every
// test has returned: the tests join all they start, so one left waiting is
// a waiter the Dispatcher lost.
func TestMain(m *testing.M) {
	code := m.Run()
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	if code == 0 && strings.Contains(stacks, "dispatch.(*Dispatcher).Acquire") {
		fmt.Fprintf(os.Stderr, "goroutines left in Acquire:\n%s\n", stacks)
		code = 1
	}
	os.Exit(code)
}
