package engine_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestMain runs the tests with HOME in an empty folder and fails if anything
// was written there: sentinel-golang writes ~/logs/csp unless it is set up
// not to, and the engine must write no files.
func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "sluice-engine-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	code := m.Run()
	var written []string
	filepath.WalkDir(home, func(path string, d os.DirEntry, err error) error {
		if path != home {
			written = append(written, path)
		}
		return nil
	})
	if len(written) > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "the engine wrote files: %v\n", written)
		code = 1
	}
	os.RemoveAll(home)
	os.Exit(code)
}
