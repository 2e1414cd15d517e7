package farm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/sluicehq/sluice/engine/clock"
)

// Health.
//
// A backend is probed every Config.Interval: GET /system_stats, bounded by
// Config.ProbeTimeout. An answer within the timeout is healthy however slow
// it is (a ComfyUI loading a model answers late, not never). The rule:
//
//   - a backend is taken out after failuresToTrip failed probes in a row
//     (an error, or no answer within the timeout), or at once when its
//     client's WebSocket is broken and a probe fails too (the break makes
//     the farm probe at once);
//   - it is put back in at its first probe that succeeds while its
//     WebSocket is not broken (or when the WebSocket reconnects after a
//     probe that succeeded).
//
// Taking a backend out stops new jobs going to it (dispatch.SetHealthy) and
// pulls back the jobs not yet executing there (see Farm.Run); it never
// interrupts a job that is executing there and showing progress. While a
// backend is out, every probe checks its jobs again for stalls.

// failuresToTrip is how many failed probes in a row take a backend out.
const failuresToTrip = 3

// errProbeTimeout is the cause of a probe cut off at Config.ProbeTimeout.
var errProbeTimeout = errors.New("no answer within the probe timeout")

// Watch starts probing every backend every Config.Interval, and returns a
// function that stops the probes and waits for them.
func (f *Farm) Watch() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, name := range f.names {
		m := f.members[name]
		wg.Go(func() { f.watch(ctx, m) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// watch probes m at once, then every interval and whenever kicked, until
// ctx ends.
func (f *Farm) watch(ctx context.Context, m *member) {
	for {
		f.probe(ctx, m)
		tick, stop := clock.NewTimer(f.clk, f.interval)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-tick:
		case <-m.kick:
			stop()
		}
	}
}

// Sample probes backend now and returns once its sample is reported and
// acted on: its health and its GPU pressure are then current. For a change
// that must show at once (the simulator's GPU memory set by an operator).
func (f *Farm) Sample(ctx context.Context, backend string) error {
	m := f.members[backend]
	if m == nil {
		return fmt.Errorf("farm: no backend %s", backend)
	}
	return f.probe(ctx, m)
}

// probe reads m's GPUs once, within the probe timeout, reports them to the
// monitor and updates m's health and GPU pressure from the outcome.
func (f *Farm) probe(ctx context.Context, m *member) error {
	m.probeMu.Lock()
	defer m.probeMu.Unlock()
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timeout, stop := clock.NewTimer(f.clk, f.probeTimeout)
	defer stop()
	go func() {
		select {
		case <-timeout:
			cancel(errProbeTimeout)
		case <-pctx.Done():
		}
	}()
	gpus, err := m.b.GPUs(pctx, f.clk.Now())
	stop() // before reporting: a test that sees the report sees no probe timer
	if err != nil && errors.Is(context.Cause(pctx), errProbeTimeout) {
		err = fmt.Errorf("%w (%s): %w", errProbeTimeout, f.probeTimeout, err)
	}
	if ctx.Err() != nil { // stopping: not the backend's fault
		return err
	}
	if f.monitor != nil {
		f.monitor.ReportGPUs("comfyui "+m.name, gpus, err)
		f.pressure(m, err == nil && f.monitor.BackendPressure(m.name))
	}
	f.probed(m, err)
	return err
}

// pressure sends m no new job while its GPU is under pressure.
func (f *Farm) pressure(m *member, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.pressure == on {
		return
	}
	m.pressure = on
	if on {
		f.log.Warn("backend's GPU under pressure: no new jobs for it", slog.String("backend", m.name))
	} else {
		f.log.Info("backend's GPU pressure over", slog.String("backend", m.name))
	}
	f.d.SetPressure(m.name, on)
}

// probed applies the health rule to a probe's outcome.
func (f *Farm) probed(m *member, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		m.failures++
		if !m.out && (m.failures >= failuresToTrip || m.wsDown) {
			f.takeOutLocked(m, err)
		}
	} else {
		m.failures = 0
		if m.out && !m.wsDown {
			f.putBackLocked(m)
		}
	}
	if m.out {
		f.sweepLocked(m)
	}
}

// connection is a client's WebSocket connecting (up) or breaking.
func (f *Farm) connection(backend string, up bool, err error) {
	f.mu.Lock()
	m := f.members[backend]
	if m == nil {
		f.mu.Unlock()
		return
	}
	m.wsDown = !up
	if up && m.out && m.failures == 0 {
		f.putBackLocked(m)
	}
	f.mu.Unlock()
	if !up {
		f.log.Info("backend's WebSocket broken: probing it now", slog.String("backend", backend), slog.Any("error", err))
		select {
		case m.kick <- struct{}{}:
		default: // a probe is asked for already
		}
	}
}

func (f *Farm) takeOutLocked(m *member, err error) {
	m.out = true
	f.log.Warn("backend taken out of the farm", slog.String("backend", m.name), slog.Int("failed_probes", m.failures),
		slog.Bool("websocket_broken", m.wsDown), slog.Any("error", err))
	f.d.SetHealthy(m.name, false)
}

func (f *Farm) putBackLocked(m *member) {
	m.out = false
	f.log.Info("backend back in the farm", slog.String("backend", m.name))
	f.d.SetHealthy(m.name, true)
}

// sweepLocked cuts short, on a backend that is out, the jobs not executing
// there yet (they go back into the queue at their place) and those
// executing with no sign of progress for the stall time (they run once
// more elsewhere). Jobs showing progress, and jobs whose prompt has
// executed (their output is being fetched), are left alone.
func (f *Farm) sweepLocked(m *member) {
	now := f.clk.Now()
	for a := range m.jobs {
		switch {
		case a.executed:
		case !a.started:
			a.cancel(errPulledBack)
		case now.Sub(a.lastSign) >= f.stall:
			a.cancel(errStalled)
		}
	}
}

// setOut takes a backend out of the farm or puts it back in, whatever the
// probes say: for tests.
func (f *Farm) setOut(backend string, out bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.members[backend]
	switch {
	case out && !m.out:
		f.takeOutLocked(m, errors.New("taken out by hand"))
		f.sweepLocked(m)
	case !out && m.out:
		f.putBackLocked(m)
	}
}
