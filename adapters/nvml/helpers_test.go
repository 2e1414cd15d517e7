package nvml

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
)

var testNow = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

type report struct {
	source string
	gpus   []engine.GPU
	err    error
}

// reporter records reports and, where notify is set, passes each on.
type reporter struct {
	mu      sync.Mutex
	reports []report
	notify  chan report
}

func (r *reporter) ReportGPUs(source string, gpus []engine.GPU, err error) {
	rep := report{source, gpus, err}
	r.mu.Lock()
	r.reports = append(r.reports, rep)
	r.mu.Unlock()
	if r.notify != nil {
		r.notify <- rep
	}
}

func (r *reporter) all() []report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]report(nil), r.reports...)
}

// logs records log records.
type logs struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logs) Enabled(context.Context, slog.Level) bool { return true }

func (h *logs) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}

func (h *logs) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logs) WithGroup(string) slog.Handler      { return h }

func (h *logs) all() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]slog.Record(nil), h.records...)
}

// manualTicks makes s tick only when the test sends on the returned channel.
func manualTicks(s *Sampler) chan time.Time {
	ticks := make(chan time.Time)
	s.newTicker = func(time.Duration) (<-chan time.Time, func()) { return ticks, func() {} }
	return ticks
}

// checkDevices asserts what any real sample must satisfy.
func checkDevices(t *testing.T, gpus []engine.GPU) {
	t.Helper()
	for _, g := range gpus {
		if g.Source != Source || g.MemoryTotal == 0 || g.MemoryUsed > g.MemoryTotal || g.Utilization < 0 || g.Utilization > 1 {
			t.Errorf("implausible device %+v", g)
		}
	}
}

// assertUnavailableOnce asserts that Run reported the source unavailable
// exactly once, and that it was logged exactly once at info.
func assertUnavailableOnce(t *testing.T, rec *reporter, lg *logs, reason string) {
	t.Helper()
	reps := rec.all()
	if len(reps) != 1 {
		t.Fatalf("want one report, got %d: %+v", len(reps), reps)
	}
	if r := reps[0]; r.source != Source || r.gpus != nil || !isUnavailable(r.err) {
		t.Fatalf("want (%q, nil, ErrUnavailable), got %+v", Source, r)
	}
	want := "NVML not available: " + reason + "; GPU metrics come from ComfyUI's /system_stats only"
	recs := lg.all()
	if len(recs) != 1 || recs[0].Level != slog.LevelInfo || (reason != "" && recs[0].Message != want) {
		t.Fatalf("want one info record %q, got %d: %v", want, len(recs), recs)
	}
}
