package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
)

// AlarmMonitor watches etcd's alarms. A NOSPACE alarm (the database has
// reached its quota, see EmbeddedConfig.QuotaBackendBytes) makes etcd
// refuse every write — rule changes, job records — until an operator
// compacts, defragments and disarms it; the monitor logs it and NoSpace
// says so, for /readyz.
type AlarmMonitor struct {
	c        *clientv3.Client
	clock    clock.Clock
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	nospace bool
}

// NewAlarmMonitor checks c's alarms every interval (default 30s), each
// check bounded by timeout (default 5s); Run starts it.
func NewAlarmMonitor(c *clientv3.Client, interval, timeout time.Duration, clk clock.Clock, log *slog.Logger) *AlarmMonitor {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &AlarmMonitor{c: c, clock: clock.Or(clk), interval: interval, timeout: timeout, log: log}
}

// Run checks the alarms until ctx ends.
func (a *AlarmMonitor) Run(ctx context.Context) {
	for {
		if err := a.Check(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("cannot read etcd's alarms", slog.Any("error", err))
		}
		tick, stop := clock.NewTimer(a.clock, a.interval)
		select {
		case <-tick:
		case <-ctx.Done():
			stop()
			return
		}
	}
}

// Check reads the alarms once. A NOSPACE alarm raised or cleared since the
// last check is logged. An error leaves what is known as it was.
func (a *AlarmMonitor) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.c.AlarmList(ctx)
	if err != nil {
		return fmt.Errorf("etcd: alarms: %w", err)
	}
	nospace := false
	for _, m := range resp.Alarms {
		if m.Alarm == etcdserverpb.AlarmType_NOSPACE {
			nospace = true
		}
	}
	a.mu.Lock()
	was := a.nospace
	a.nospace = nospace
	a.mu.Unlock()
	switch {
	case nospace && !was:
		a.log.Error("etcd is out of space (NOSPACE alarm): it refuses rule changes and job records until compacted, defragmented and disarmed (etcdctl alarm disarm); not ready")
	case !nospace && was:
		a.log.Info("etcd's NOSPACE alarm is cleared")
	}
	return nil
}

// NoSpace reports whether etcd had a NOSPACE alarm at the last check.
func (a *AlarmMonitor) NoSpace() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nospace
}
