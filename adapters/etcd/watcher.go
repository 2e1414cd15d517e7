package etcd

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

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

// Run lists the rules and watches them until ctx ends. Failures never stop
// it: it lists again with backoff while the engine keeps its last good rules.
func (w *Watcher) Run(ctx context.Context) error {
	f := Follower{Client: w.store.Client(), Key: w.store.rulesPrefix(), Prefix: true, Name: "rules",
		Logger: w.log, Clock: w.clock, ProgressInterval: w.interval, SilenceWindow: w.window,
		MinBackoff: w.min, MaxBackoff: w.max, List: w.sync, Apply: w.apply, Heard: func(int64) { w.heard() }, BeforeWatch: w.beforeWatch}
	f.Run(ctx)
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

// apply takes the changes after the listing.
func (w *Watcher) apply(events []*clientv3.Event) {
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
