package prometheus_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/internal/leaktest"
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
		if leaked := leaktest.Leaked(3*time.Second, "github.com/sluicehq/sluice/", "net/http/httptest"); leaked != "" {
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
