//go:build !cgo || nonvml

package nvml

import (
	"context"
	"log/slog"
	"testing"
)

func TestBuiltWithoutNVMLReportsUnavailableOnce(t *testing.T) {
	rec := &reporter{}
	lg := &logs{}
	s := New(Config{Reporter: rec, Logger: slog.New(lg)})
	s.Run(context.Background()) // returns by itself
	assertUnavailableOnce(t, rec, lg, "built without NVML support")
	if _, err := s.SampleOnce(context.Background()); !isUnavailable(err) {
		t.Fatalf("SampleOnce: %v", err)
	}
	if n := len(lg.all()); n != 1 {
		t.Fatalf("%d log records, want 1", n)
	}
}
