package nvml

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

func isUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// fakeLibrary is a library whose samples the test sets.
type fakeLibrary struct {
	openErr error
	gpus    []engine.GPU
	err     error
	opens   int
	closes  int
}

func (f *fakeLibrary) open() error { f.opens++; return f.openErr }
func (f *fakeLibrary) close() error {
	f.closes++
	return nil
}

func (f *fakeLibrary) read(context.Context, time.Time) ([]engine.GPU, error) {
	return f.gpus, f.err
}

func TestRunReportsEveryTickAndLogsErrorChangesOnce(t *testing.T) {
	gpu := engine.GPU{ID: "nvml:0", Source: Source, MemoryUsed: 1, MemoryTotal: 2}
	lib := &fakeLibrary{gpus: []engine.GPU{gpu}}
	rec := &reporter{notify: make(chan report)}
	lg := &logs{}
	s := newSampler(lib, Config{Reporter: rec, Logger: slog.New(lg)})
	ticks := manualTicks(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }() // samples the first step at once

	deviceErr := errors.New("nvml device 1: GetMemoryInfo: ERROR_GPU_IS_LOST")
	steps := []struct {
		name     string
		gpus     []engine.GPU
		err      error
		wantGPUs int
		wantErr  bool
		wantLogs int // records logged so far
	}{
		{"healthy", []engine.GPU{gpu}, nil, 1, false, 0},
		{"one device lost: the other is reported without error", []engine.GPU{gpu}, deviceErr, 1, false, 1},
		{"still lost: not logged again", []engine.GPU{gpu}, deviceErr, 1, false, 1},
		{"no device read: reported as an error", nil, deviceErr, 0, true, 2},
		{"recovered", []engine.GPU{gpu}, nil, 1, false, 3},
	}
	for i, st := range steps {
		if i > 0 {
			lib.gpus, lib.err = st.gpus, st.err // Run is waiting for the tick
			ticks <- testNow
		}
		r := <-rec.notify
		if r.source != Source || len(r.gpus) != st.wantGPUs || (r.err != nil) != st.wantErr {
			t.Errorf("%s: report %+v", st.name, r)
		}
		if n := len(lg.all()); n != st.wantLogs {
			t.Errorf("%s: %d log records, want %d: %v", st.name, n, st.wantLogs, lg.all())
		}
	}
	cancel()
	<-done
	if lib.opens != 1 || lib.closes != 1 {
		t.Errorf("opened %d, closed %d times; want once each", lib.opens, lib.closes)
	}
}

func TestRunWithoutReporterReturns(t *testing.T) {
	lib := &fakeLibrary{}
	lg := &logs{}
	newSampler(lib, Config{Logger: slog.New(lg)}).Run(context.Background())
	if recs := lg.all(); len(recs) != 1 || recs[0].Level != slog.LevelError {
		t.Fatalf("want one error record, got %v", recs)
	}
	if lib.opens != 0 {
		t.Fatal("NVML initialised with nowhere to report")
	}
}

func TestCloseShutsDownOnlyWhatWasOpened(t *testing.T) {
	t.Run("never sampled", func(t *testing.T) {
		lib := &fakeLibrary{}
		s := newSampler(lib, Config{})
		if err := s.Close(); err != nil || lib.closes != 0 {
			t.Fatalf("Close: %v, %d library closes", err, lib.closes)
		}
		if _, err := s.SampleOnce(context.Background()); !isUnavailable(err) || lib.opens != 0 {
			t.Fatalf("SampleOnce after Close: %v, %d opens", err, lib.opens)
		}
	})
	t.Run("unavailable", func(t *testing.T) {
		lib := &fakeLibrary{openErr: ErrUnavailable}
		s := newSampler(lib, Config{})
		s.SampleOnce(context.Background())
		if err := s.Close(); err != nil || lib.closes != 0 {
			t.Fatalf("Close: %v, %d library closes", err, lib.closes)
		}
	})
	t.Run("sampled, closed twice", func(t *testing.T) {
		lib := &fakeLibrary{}
		s := newSampler(lib, Config{})
		if _, err := s.SampleOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s.Close()
		if lib.closes != 1 {
			t.Fatalf("%d library closes, want 1", lib.closes)
		}
	})
}

func TestSampleOnceHonoursContext(t *testing.T) {
	lib := &fakeLibrary{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newSampler(lib, Config{}).SampleOnce(ctx); !errors.Is(err, context.Canceled) || lib.opens != 0 {
		t.Fatalf("SampleOnce on a cancelled context: %v, %d opens", err, lib.opens)
	}
}

// TestRealLibrary runs the sampler over this host's real NVML (or, in a
// build without it, the stand-in). Without an NVIDIA driver it must report
// the source unavailable once, log it once and return; with one, it must
// read plausible devices. Either way nothing crashes.
func TestRealLibrary(t *testing.T) {
	rec := &reporter{}
	lg := &logs{}
	s := New(Config{Reporter: rec, Logger: slog.New(lg), Clock: clock.NewFake(testNow)})
	defer s.Close()
	gpus, err := s.SampleOnce(context.Background())
	if err != nil {
		if !isUnavailable(err) {
			t.Fatalf("SampleOnce: %v; want nil or ErrUnavailable", err)
		}
		t.Logf("NVML not available here, as expected without an NVIDIA driver: %v", err)
		s.Run(context.Background()) // must return by itself
		assertUnavailableOnce(t, rec, lg, strings.TrimPrefix(err.Error(), "NVML not available: "))
		return
	}
	t.Logf("NVML available: %d GPUs", len(gpus))
	checkDevices(t, gpus)
}

// TestRealDevice checks the sampler against the GPUs of the host it runs on;
// see the package documentation. It skips where NVML is not available.
func TestRealDevice(t *testing.T) {
	s := New(Config{})
	gpus, err := s.SampleOnce(context.Background())
	if isUnavailable(err) {
		t.Skipf("needs an NVIDIA GPU and driver: %v", err)
	}
	if err != nil {
		t.Fatalf("SampleOnce: %v", err)
	}
	if len(gpus) == 0 {
		t.Fatal("NVML is available but reports no GPU")
	}
	for _, g := range gpus {
		t.Logf("%s %q: %d of %d MiB used, utilisation %.2f", g.ID, g.Name, g.MemoryUsed>>20, g.MemoryTotal>>20, g.Utilization)
	}
	checkDevices(t, gpus)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
