// Package leaktest finds goroutines that outlive a package's tests. A
// TestMain runs the tests, then calls Check with the stack fragments that
// mark the package's own goroutines (third-party ones such as
// sentinel-golang's clock are left alone).
package leaktest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Main runs m and exits, failing the run if goroutines whose stacks contain
// any of marks are still alive a short while after the tests.
func Main(m *testing.M, marks ...string) {
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(3*time.Second, marks...); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// Leaked returns the stacks of the goroutines that contain any of marks,
// waiting up to wait for them to wind down; "" when there are none.
func Leaked(wait time.Duration, marks ...string) string {
	deadline := time.Now().Add(wait)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "leaktest.Leaked") {
				continue
			}
			for _, mark := range marks {
				if strings.Contains(g, mark) {
					leaked = append(leaked, g)
					break
				}
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(20 * time.Millisecond) // goroutines winding down; bounded by wait
	}
}
