package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// Applier takes a validated rule set; *engine.Engine is one.
type Applier interface {
	Apply(*rules.Set) error
}

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	Store  *Store
	Engine Applier
	Logger *slog.Logger
	Clock  clock.Clock
	// MinBackoff and MaxBackoff bound the wait between attempts to list
	// again after a failure (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
	// ProgressInterval is how long a watch may be quiet before the watcher
	// asks etcd how far it has got (a progress request, answered on the
	// watch itself; default 5s). The watch also asks etcd for its own
	// periodic progress notifications.
	ProgressInterval time.Duration
	// SilenceWindow is how long the watcher may hear nothing from etcd —
	// no event, no progress notification, no listing — before it counts
	// as silent: Live says false (so /readyz says not ready: the rules in
	// force may be stale) and the watch is dropped and made again (default
	// 3 × ProgressInterval).
	SilenceWindow time.Duration
}

// Watcher keeps an engine's rules in step with etcd.
type Watcher struct {
	store    *Store
	eng      Applier
	log      *slog.Logger
	clock    clock.Clock
	min, max time.Duration
	interval time.Duration
	window   time.Duration

	// values is etcd's view as last seen; owned by Run.
	values      map[string][]byte
	lastApplied map[string][]byte

	mu      sync.Mutex
	status  Status
	changed chan struct{} // closed and replaced whenever status changes
	ready   chan struct{}

	// beforeWatch, when set (tests), runs between a list and the watch
	// that follows it.
	beforeWatch func(listRevision int64)
}

// Status is what the watcher knows.
type Status struct {
	// Revision is the etcd revision last seen, applied or rejected.
	Revision int64 `json:"revision"`
	// AppliedRevision is the revision of the rules in force, and
	// AppliedAt when they were applied.
	AppliedRevision int64     `json:"applied_revision"`
	AppliedAt       time.Time `json:"applied_at"`
	// LastRejection is the most recent update refused; nil if none.
	LastRejection *Rejection `json:"last_rejection,omitempty"`
	// Rejections counts the updates refused since start.
	Rejections uint64 `json:"rejections"`
	// HeardAt is when etcd last answered the watcher: a listing, a change
	// or a progress notification.
	HeardAt time.Time `json:"heard_at"`
}

// Rejection is an update that did not validate: the rules in force stayed.
type Rejection struct {
	Key      string    `json:"key"`
	Revision int64     `json:"revision"`
	Errors   []string  `json:"errors"`
	At       time.Time `json:"at"`
}

// NewWatcher makes a watcher; Run starts it.
func NewWatcher(cfg WatcherConfig) *Watcher {
	w := &Watcher{
		store:    cfg.Store,
		eng:      cfg.Engine,
		log:      cfg.Logger,
		clock:    clock.Or(cfg.Clock),
		min:      cfg.MinBackoff,
		max:      cfg.MaxBackoff,
		interval: cfg.ProgressInterval,
		window:   cfg.SilenceWindow,
		changed:  make(chan struct{}),
		ready:    make(chan struct{}),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.min <= 0 {
		w.min = 100 * time.Millisecond
	}
	if w.max < w.min {
		w.max = max(5*time.Second, w.min)
	}
	if w.interval <= 0 {
		w.interval = 5 * time.Second
	}
	if w.window <= 0 {
		w.window = 3 * w.interval
	}
	return w
}

// Ready is closed once the first listing has been applied (or rejected:
// then the engine keeps the rules it had).
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Status returns what the watcher knows now.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	if s.LastRejection != nil {
		r := *s.LastRejection
		s.LastRejection = &r
	}
	return s
}

// WaitRevision waits until the watcher has seen revision rev (applied or
// rejected it), or ctx ends.
func (w *Watcher) WaitRevision(ctx context.Context, rev int64) (Status, error) {
	for {
		w.mu.Lock()
		s, ch := w.status, w.changed
		w.mu.Unlock()
		if s.Revision >= rev {
			return w.Status(), nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return w.Status(), ctx.Err()
		}
	}
}

var errCompacted = errors.New("watch revision compacted")

// Run lists the rules and watches them until ctx ends. Failures never stop
// it: it lists again with backoff while the engine keeps its last good rules.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := w.min
	for ctx.Err() == nil {
		rev, err := w.sync(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			w.log.Warn("cannot list rules in etcd; keeping the rules in force", slog.Any("error", err), slog.Duration("retry_in", backoff))
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, w.max)
			continue
		}
		if w.beforeWatch != nil {
			w.beforeWatch(rev)
		}
		started := time.Now()
		err = w.watch(ctx, rev)
		if ctx.Err() != nil {
			break
		}
		w.log.Warn("rule watch ended; listing again", slog.Any("error", err))
		if time.Since(started) < w.max {
			// A watch that fails soon after it starts (etcd refusing it)
			// must not turn the relisting into a busy loop.
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, w.max)
		} else {
			backoff = w.min
		}
	}
	return nil
}

// sync lists every document and applies them; it returns the revision of
// the listing.
func (w *Watcher) sync(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	snap, err := w.store.Load(lctx)
	if err != nil {
		return 0, err
	}
	w.values = snap.Values
	w.heard()
	w.update(snap.Revision, "")
	return snap.Revision, nil
}

// errSilent ends a watch that has heard nothing for the silence window.
var errSilent = errors.New("the watch heard nothing from etcd (no change, no progress notification) within its window")

// watch follows the changes after revision listed, until the watch fails
// or falls silent. A quiet watch asks etcd for progress every interval;
// one that has heard nothing for the silence window is dropped.
//
// The watch starts at listed itself, not listed+1, and skips the events
// the listing already holds: etcd sends no progress notification to a
// watch whose start revision is still in the future, so a watch from
// listed+1 on a quiet etcd would hear nothing and be dropped again and
// again.
func (w *Watcher) watch(ctx context.Context, listed int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := w.store.Client().Watch(wctx, w.store.rulesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(listed), clientv3.WithProgressNotify())
	for {
		tick, stop := clock.NewTimer(w.clock, w.interval)
		select {
		case resp, ok := <-ch:
			stop()
			if !ok {
				if err := ctx.Err(); err != nil {
					return err
				}
				return errors.New("watch channel closed")
			}
			if err := w.handle(resp, listed); err != nil {
				return err
			}
		case <-tick:
			quiet := w.clock.Now().Sub(w.Status().HeardAt)
			if quiet >= w.window {
				return fmt.Errorf("%w (quiet for %s)", errSilent, quiet.Round(time.Millisecond))
			}
			// Answered on the watch channel; a broken connection leaves it
			// unanswered and the window runs out.
			rctx, rcancel := context.WithTimeout(wctx, w.interval)
			if err := w.store.Client().RequestProgress(rctx); err != nil && wctx.Err() == nil {
				w.log.Debug("rule watch: progress request failed", slog.Any("error", err))
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
func (w *Watcher) handle(resp clientv3.WatchResponse, listed int64) error {
	if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
		return fmt.Errorf("%w: revision %d is gone (compacted at %d)", errCompacted, listed, resp.CompactRevision)
	}
	if err := resp.Err(); err != nil {
		return err
	}
	w.heard()
	events := resp.Events
	for len(events) > 0 && events[0].Kv.ModRevision <= listed {
		events = events[1:]
	}
	if len(events) == 0 {
		return nil // progress notification, or only what was listed
	}
	keys := make([]string, 0, len(events))
	for _, ev := range events {
		k := string(ev.Kv.Key)
		if ev.Type == clientv3.EventTypeDelete {
			delete(w.values, k)
		} else {
			w.values[k] = ev.Kv.Value
		}
		keys = append(keys, k)
	}
	w.update(events[len(events)-1].Kv.ModRevision, strings.Join(slices.Compact(keys), ", "))
	return nil
}

// heard records that etcd answered.
func (w *Watcher) heard() {
	now := w.clock.Now()
	w.mu.Lock()
	w.status.HeardAt = now
	w.mu.Unlock()
}

// Live reports whether the watcher has heard from etcd within its silence
// window, and for how long it has not: when it has not, the rules in force
// may be stale (a half-open connection, etcd gone), and the gateway is not
// ready.
func (w *Watcher) Live() (bool, time.Duration) {
	quiet := w.clock.Now().Sub(w.Status().HeardAt)
	return quiet < w.window, quiet
}

// update builds the candidate rule set from w.values and applies it, or
// records why not. keys names what changed ("" for a full listing).
func (w *Watcher) update(rev int64, keys string) {
	var (
		rejected *Rejection
		applied  bool
	)
	unchanged := w.lastApplied != nil && maps.EqualFunc(w.values, w.lastApplied, func(a, b []byte) bool { return string(a) == string(b) })
	if !unchanged {
		set, err := w.store.Build(w.values)
		if err == nil {
			err = w.eng.Apply(set)
		}
		if err != nil {
			rejected = &Rejection{Key: keys, Revision: rev, Errors: messages(err), At: w.clock.Now()}
			if keys == "" {
				rejected.Key = w.store.rulesPrefix()
			}
			w.log.Warn("rule update rejected; keeping the last good rules",
				slog.String("key", rejected.Key), slog.Int64("revision", rev), slog.Any("errors", rejected.Errors))
		} else {
			w.lastApplied = maps.Clone(w.values)
			applied = true
			w.log.Info("rules applied from etcd", slog.Int64("revision", rev), slog.Int("documents", len(w.values)), slog.String("changed", keys))
		}
	}
	w.mu.Lock()
	w.status.Revision = rev
	if applied || unchanged {
		w.status.AppliedRevision = rev // the rules in force are etcd's at rev
	}
	if applied {
		w.status.AppliedAt = w.clock.Now()
	}
	if rejected != nil {
		w.status.LastRejection = rejected
		w.status.Rejections++
	}
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	select {
	case <-w.ready:
	default:
		close(w.ready)
	}
}

func messages(err error) []string {
	var list rules.Errors
	if errors.As(err, &list) {
		return list.Messages()
	}
	return []string{err.Error()}
}
