package nvml

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// Source is the name samples are reported under.
const Source = "nvml"

// ErrUnavailable is wrapped by every error that says NVML cannot be used on
// this host or in this build.
var ErrUnavailable = errors.New("NVML not available")

// Reporter takes GPU samples; *engine.Engine is one.
type Reporter interface {
	ReportGPUs(source string, gpus []engine.GPU, err error)
}

var _ Reporter = (*engine.Engine)(nil)

// Config configures a Sampler.
type Config struct {
	// Reporter receives Run's samples; required by Run.
	Reporter Reporter
	// Interval is the time between samples in Run; default 2s.
	Interval time.Duration
	// Clock stamps SampledAt; default the system clock.
	Clock clock.Clock
	// Logger; default discards.
	Logger *slog.Logger
}

// library is NVML as the sampler uses it: the real one over go-nvml, or the
// stand-in of a build without NVML.
type library interface {
	// open initialises the library; an error wraps ErrUnavailable and says
	// why.
	open() error
	// read samples every device: those it could read, and an error naming
	// each it could not.
	read(ctx context.Context, now time.Time) ([]engine.GPU, error)
	// close shuts the library down.
	close() error
}

// Sampler samples this host's GPUs through NVML. It is safe for concurrent
// use; its samples are taken one at a time.
type Sampler struct {
	lib       library
	reporter  Reporter
	interval  time.Duration
	clock     clock.Clock
	log       *slog.Logger
	newTicker func(time.Duration) (<-chan time.Time, func())

	mu      sync.Mutex
	opened  bool  // open was tried
	openErr error // why open failed
	closed  bool
}

// New returns a Sampler over the system's NVML library. It does not touch
// the library yet: the first sample initialises it.
func New(cfg Config) *Sampler { return newSampler(defaultLibrary(), cfg) }

func newSampler(lib library, cfg Config) *Sampler {
	s := &Sampler{
		lib:       lib,
		reporter:  cfg.Reporter,
		interval:  cfg.Interval,
		clock:     clock.Or(cfg.Clock),
		log:       cfg.Logger,
		newTicker: systemTicker,
	}
	if s.interval <= 0 {
		s.interval = 2 * time.Second
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return s
}

func systemTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// SampleOnce reads every device once, initialising NVML on the first call.
// It returns the devices it could read, with an error joining one error per
// device it could not; nil and an error wrapping ErrUnavailable where NVML
// cannot be initialised (tried once, then remembered) or the sampler is
// closed.
func (s *Sampler) SampleOnce(ctx context.Context) ([]engine.GPU, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.openLocked(); err != nil {
		return nil, err
	}
	return s.lib.read(ctx, s.clock.Now())
}

func (s *Sampler) openLocked() error {
	if s.closed {
		return fmt.Errorf("%w: sampler closed", ErrUnavailable)
	}
	if !s.opened {
		s.opened = true
		if err := s.lib.open(); err != nil {
			s.openErr = err
			s.log.Info(err.Error() + "; GPU metrics come from ComfyUI's /system_stats only")
		}
	}
	return s.openErr
}

// Close shuts NVML down if the sampler initialised it. Later samples fail
// with ErrUnavailable. Closing again does nothing.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.opened || s.openErr != nil {
		return nil
	}
	return s.lib.close()
}

// Run samples at once and then every Interval, reporting each sample, until
// ctx ends; then it closes the sampler. Where NVML is not available it
// reports that once and returns.
//
// A sample in which some devices could be read is reported without an error
// (the engine drops the GPUs of a source reported with an error) and the
// failing devices are logged at warn, once per change; a sample with no
// device read is reported with its error.
func (s *Sampler) Run(ctx context.Context) {
	defer func() {
		if err := s.Close(); err != nil {
			s.log.Warn("shutting NVML down failed", slog.Any("error", err))
		}
	}()
	if s.reporter == nil {
		s.log.Error("nvml: Run needs Config.Reporter; not sampling")
		return
	}
	tick, stop := s.newTicker(s.interval)
	defer stop()
	var lastErr string
	for {
		gpus, err := s.SampleOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrUnavailable) {
			s.reporter.ReportGPUs(Source, nil, err)
			return
		}
		s.report(gpus, err, &lastErr)
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
	}
}

// report passes a sample on and logs a change in its errors; lastErr holds
// what was logged last ("" while all is well).
func (s *Sampler) report(gpus []engine.GPU, err error, lastErr *string) {
	switch {
	case err == nil:
		if *lastErr != "" {
			s.log.Info("NVML devices read again", slog.Int("gpus", len(gpus)))
			*lastErr = ""
		}
		s.reporter.ReportGPUs(Source, gpus, nil)
	case len(gpus) > 0:
		if key := "some: " + err.Error(); key != *lastErr {
			s.log.Warn("some NVML devices could not be read; reporting the others", slog.Int("gpus", len(gpus)), slog.Any("error", err))
			*lastErr = key
		}
		s.reporter.ReportGPUs(Source, gpus, nil)
	default:
		if key := "all: " + err.Error(); key != *lastErr {
			s.log.Warn("reading GPUs through NVML failed", slog.Any("error", err))
			*lastErr = key
		}
		s.reporter.ReportGPUs(Source, nil, err)
	}
}
