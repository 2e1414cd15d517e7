package prometheus_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain runs the tests with HOME in an empty folder, and fails the
// package if anything was written there (sentinel-golang writes ~/logs
// unless the engine sets it up not to) or if goroutines of sluice's
// outlive the tests.
func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "sluice-prometheus-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	code := m.Run()
	if code == 0 {
		if written := filesUnder(home); len(written) > 0 {
			fmt.Fprintf(os.Stderr, "files written: %v\n", written)
			code = 1
		}
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.RemoveAll(home)
	os.Exit(code)
}

func filesUnder(dir string) []string {
	var files []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if path != dir {
			files = append(files, path)
		}
		return nil
	})
	return files
}

func leakedGoroutines() string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "leakedGoroutines") {
				continue
			}
			if strings.Contains(g, "github.com/sluicehq/sluice/") || strings.Contains(g, "net/http/httptest") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(20 * time.Millisecond) // goroutines are winding down; wait for them, bounded
	}
}
