package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
)

// Follower keeps something in step with a key or a prefix in etcd: it
// lists it, then watches the changes after the listing, and lists again
// (with backoff) after a failure, a compaction or a silent watch. The rule
// watcher, the tiers watcher and the API key table all follow etcd this
// way.
//
// A quiet watch asks etcd for progress every ProgressInterval; one that
// has heard nothing for SilenceWindow (a half-open connection) is dropped
// and listed again, so a change cannot stay hidden for long. The watch
// starts at the listing's revision itself and skips what the listing
// holds: etcd answers no progress request of a watch whose start revision
// is still in the future, so a watch from listing + 1 on a quiet etcd
// would hear nothing and be dropped every window.
type Follower struct {
	Client *clientv3.Client
	// Key is followed, with every key under it when Prefix is set.
	Key    string
	Prefix bool
	// Name says what is followed in log lines ("rules", "tiers").
	Name   string
	Logger *slog.Logger
	// Clock times progress requests and the silence window (the backoff
	// between listings is real time: it paces calls to etcd).
	Clock clock.Clock
	// ProgressInterval defaults to 5s, SilenceWindow to 3 of them,
	// MinBackoff and MaxBackoff to 100ms and 5s.
	ProgressInterval, SilenceWindow time.Duration
	MinBackoff, MaxBackoff          time.Duration

	// List reads what is followed and puts it in force (or records why
	// not); it returns the revision of its read.
	List func(ctx context.Context) (int64, error)
	// Apply takes the changes after the listing, in order.
	Apply func(events []*clientv3.Event)
	// Heard, if set, is told each time etcd answers the watch (a change or
	// a progress notification), with the revision etcd is at; List tells
	// its own.
	Heard func(revision int64)
	// BeforeWatch, if set (tests), runs between a listing and its watch.
	BeforeWatch func(listRevision int64)
}

var (
	errCompacted = errors.New("watch revision compacted")
	// errSilent ends a watch that has heard nothing for the silence window.
	errSilent = errors.New("the watch heard nothing from etcd (no change, no progress notification) within its window")
)

// Run follows until ctx ends. Failures never stop it.
func (f *Follower) Run(ctx context.Context) {
	f.defaults()
	backoff := f.MinBackoff
	for ctx.Err() == nil {
		rev, err := f.List(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			f.Logger.Warn("cannot read "+f.Name+" in etcd; keeping what is in force", slog.Any("error", err), slog.Duration("retry_in", backoff))
			sleep(ctx, backoff)
			backoff = min(backoff*2, f.MaxBackoff)
			continue
		}
		if f.BeforeWatch != nil {
			f.BeforeWatch(rev)
		}
		started := time.Now()
		err = f.watch(ctx, rev)
		if ctx.Err() != nil {
			break
		}
		f.Logger.Warn(f.Name+" watch ended; reading again", slog.Any("error", err))
		if time.Since(started) < f.MaxBackoff {
			// A watch that fails soon after it starts (etcd refusing it)
			// must not turn the relisting into a busy loop.
			sleep(ctx, backoff)
			backoff = min(backoff*2, f.MaxBackoff)
		} else {
			backoff = f.MinBackoff
		}
	}
}

func (f *Follower) defaults() {
	if f.Logger == nil {
		f.Logger = slog.New(slog.DiscardHandler)
	}
	f.Clock = clock.Or(f.Clock)
	if f.MinBackoff <= 0 {
		f.MinBackoff = 100 * time.Millisecond
	}
	if f.MaxBackoff < f.MinBackoff {
		f.MaxBackoff = max(5*time.Second, f.MinBackoff)
	}
	if f.ProgressInterval <= 0 {
		f.ProgressInterval = 5 * time.Second
	}
	if f.SilenceWindow <= 0 {
		f.SilenceWindow = 3 * f.ProgressInterval
	}
}

// sleep waits d of real time, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// watch follows the changes after revision listed until the watch fails
// or falls silent.
func (f *Follower) watch(ctx context.Context, listed int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithRev(listed), clientv3.WithProgressNotify()}
	if f.Prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	ch := f.Client.Watch(wctx, f.Key, opts...)
	heard := f.Clock.Now()
	for {
		tick, stop := clock.NewTimer(f.Clock, f.ProgressInterval)
		select {
		case resp, ok := <-ch:
			stop()
			if !ok {
				if err := ctx.Err(); err != nil {
					return err
				}
				return errors.New("watch channel closed")
			}
			if err := f.handle(resp, listed); err != nil {
				return err
			}
			heard = f.Clock.Now()
		case <-tick:
			if quiet := f.Clock.Now().Sub(heard); quiet >= f.SilenceWindow {
				return fmt.Errorf("%w (quiet for %s)", errSilent, quiet.Round(time.Millisecond))
			}
			// Answered on the watch channel; a broken connection leaves it
			// unanswered and the window runs out.
			rctx, rcancel := context.WithTimeout(wctx, f.ProgressInterval)
			if err := f.Client.RequestProgress(rctx); err != nil && wctx.Err() == nil {
				f.Logger.Debug(f.Name+" watch: progress request failed", slog.Any("error", err))
			}
			rcancel()
		case <-wctx.Done():
			stop()
			return ctx.Err()
		}
	}
}

// handle takes one watch response: a failure, a progress notification or
// changes. Events at or before revision listed are in the listing already.
func (f *Follower) handle(resp clientv3.WatchResponse, listed int64) error {
	if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
		return fmt.Errorf("%w: revision %d is gone (compacted at %d)", errCompacted, listed, resp.CompactRevision)
	}
	if err := resp.Err(); err != nil {
		return err
	}
	events := resp.Events
	for len(events) > 0 && events[0].Kv.ModRevision <= listed {
		events = events[1:]
	}
	if len(events) > 0 {
		f.Apply(events)
	}
	// Heard after Apply: a follower that moves its revision on when etcd
	// answers (WaitRevision) must not say it has seen the response's
	// revision before its changes are in force.
	if f.Heard != nil {
		f.Heard(resp.Header.Revision)
	}
	return nil
}
