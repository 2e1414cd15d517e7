package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// TiersKey is the etcd key of the tiers document: <prefix>/tiers, beside
// the rules (not under <prefix>/rules/).
func (s *Store) TiersKey() string { return s.prefix + "/tiers" }

// TiersDocument is the tiers document as etcd holds it.
type TiersDocument struct {
	// Value is the document; nil when etcd holds none (the built-in
	// tiers apply).
	Value       []byte
	ModRevision int64
	// Revision is etcd's revision when it was read.
	Revision int64
}

// GetTiers reads the tiers document.
func (s *Store) GetTiers(ctx context.Context) (TiersDocument, error) {
	resp, err := s.c.Get(ctx, s.TiersKey())
	if err != nil {
		return TiersDocument{}, fmt.Errorf("etcd: get %s: %w", s.TiersKey(), err)
	}
	d := TiersDocument{Revision: resp.Header.Revision}
	if len(resp.Kvs) == 1 {
		d.Value, d.ModRevision = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
	}
	return d, nil
}

// PutTiers validates doc as the tiers document and writes it. An invalid
// one is refused with rules.Errors naming the key, and nothing is written.
func (s *Store) PutTiers(ctx context.Context, doc []byte) (int64, error) {
	if _, err := rules.ParseTiers(s.TiersKey(), doc); err != nil {
		return 0, err
	}
	resp, err := s.c.Put(ctx, s.TiersKey(), string(doc))
	if err != nil {
		return 0, fmt.Errorf("etcd: put %s: %w", s.TiersKey(), err)
	}
	return resp.Header.Revision, nil
}

// PutTiersSince is PutTiers, refusing with ErrChangedSince (writing
// nothing) when the tiers document is no longer at modRevision, the
// ModRevision a GetTiers saw (0: no document then): what an operator
// confirmed is what is replaced.
func (s *Store) PutTiersSince(ctx context.Context, doc []byte, modRevision int64) (int64, error) {
	key := s.TiersKey()
	if _, err := rules.ParseTiers(key, doc); err != nil {
		return 0, err
	}
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRevision)).Then(clientv3.OpPut(key, string(doc))).Commit()
	if err != nil {
		return 0, fmt.Errorf("etcd: put %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("%s %w (mod revision %d); nothing was written", key, ErrChangedSince, modRevision)
	}
	return resp.Header.Revision, nil
}

// SeedTiers writes doc as the tiers document if etcd holds none, after
// validating it, and reports whether it did.
func (s *Store) SeedTiers(ctx context.Context, doc []byte) (bool, error) {
	if _, err := rules.ParseTiers(s.TiersKey(), doc); err != nil {
		return false, err
	}
	key := s.TiersKey()
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(doc))).Commit()
	if err != nil {
		return false, fmt.Errorf("etcd: seed %s: %w", key, err)
	}
	return resp.Succeeded, nil
}

// TiersWatcherConfig configures a TiersWatcher.
type TiersWatcherConfig struct {
	Store  *Store
	Logger *slog.Logger
	Clock  clock.Clock
	// OnChange, when set, is called with every tiers document put in
	// force (the first one included), from Run's goroutine.
	OnChange func(*rules.Tiers)
	// MinBackoff and MaxBackoff bound the wait between attempts to read
	// again after a failure (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
}

// TiersWatcher keeps the tiers in force in step with the tiers document
// in etcd. It reads the key, then watches it; every update is validated
// whole and either swapped in atomically or rejected, keeping the last
// good tiers and recording why. With no document in etcd the built-in
// tiers (rules.DefaultTiers) apply. Lost watches and compaction are
// survived by reading again with backoff.
type TiersWatcher struct {
	store    *Store
	log      *slog.Logger
	clock    clock.Clock
	onChange func(*rules.Tiers)
	min, max time.Duration

	tiers atomic.Pointer[rules.Tiers]

	mu      sync.Mutex
	status  TiersStatus
	changed chan struct{} // closed and replaced whenever status changes
	ready   chan struct{}
}

// TiersStatus is what a TiersWatcher knows.
type TiersStatus struct {
	// Source is "etcd <key>" or "built-in" (no document in etcd).
	Source string `json:"source"`
	// Revision is the etcd revision last seen, applied or rejected.
	Revision int64 `json:"revision"`
	// AppliedRevision is the revision of the tiers in force (0: the
	// built-in ones since start), and AppliedAt when they were applied.
	AppliedRevision int64     `json:"applied_revision"`
	AppliedAt       time.Time `json:"applied_at,omitzero"`
	// LastRejection is the most recent update refused; nil if none.
	LastRejection *Rejection `json:"last_rejection,omitempty"`
	// Rejections counts the updates refused since start.
	Rejections uint64 `json:"rejections"`
}

// NewTiersWatcher makes a watcher with the built-in tiers in force; Run
// starts it.
func NewTiersWatcher(cfg TiersWatcherConfig) *TiersWatcher {
	w := &TiersWatcher{
		store:    cfg.Store,
		log:      cfg.Logger,
		clock:    clock.Or(cfg.Clock),
		onChange: cfg.OnChange,
		min:      cfg.MinBackoff,
		max:      cfg.MaxBackoff,
		changed:  make(chan struct{}),
		ready:    make(chan struct{}),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.tiers.Store(rules.DefaultTiers())
	w.status.Source = "built-in"
	return w
}

// Tiers returns the tiers in force. It never returns nil; the value is
// never changed after it is returned.
func (w *TiersWatcher) Tiers() *rules.Tiers { return w.tiers.Load() }

// Ready is closed once the first read of etcd has been applied (or
// rejected: then the built-in tiers stay).
func (w *TiersWatcher) Ready() <-chan struct{} { return w.ready }

// Status returns what the watcher knows now.
func (w *TiersWatcher) Status() TiersStatus {
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
func (w *TiersWatcher) WaitRevision(ctx context.Context, rev int64) (TiersStatus, error) {
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

// Run reads the tiers document and watches it until ctx ends. Failures
// never stop it: it reads again with backoff while the tiers in force
// stay; a watch silent past its window (a half-open connection) is made
// again (see Follower).
func (w *TiersWatcher) Run(ctx context.Context) error {
	f := Follower{Client: w.store.Client(), Key: w.store.TiersKey(), Name: "tiers", Logger: w.log, Clock: w.clock,
		MinBackoff: w.min, MaxBackoff: w.max, List: w.sync, Apply: w.apply}
	f.Run(ctx)
	return nil
}

func (w *TiersWatcher) sync(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := w.store.GetTiers(lctx)
	if err != nil {
		return 0, err
	}
	rev := d.Revision
	if d.Value != nil {
		rev = d.ModRevision
	}
	w.update(d.Revision, rev, d.Value)
	return d.Revision, nil
}

// apply takes the changes of the document after the listing.
func (w *TiersWatcher) apply(events []*clientv3.Event) {
	for _, ev := range events {
		var value []byte
		if ev.Type != clientv3.EventTypeDelete {
			value = ev.Kv.Value
		}
		w.update(ev.Kv.ModRevision, ev.Kv.ModRevision, value)
	}
}

// update validates value (nil: no document, the built-in tiers) seen at
// revision rev, written at modRev, and puts it in force or records why
// not.
func (w *TiersWatcher) update(rev, modRev int64, value []byte) {
	key := w.store.TiersKey()
	var (
		next   *rules.Tiers
		err    error
		source = "etcd " + key
	)
	if value == nil {
		next, source, modRev = rules.DefaultTiers(), "built-in", 0
	} else {
		next, err = rules.ParseTiers(key, value)
	}
	w.mu.Lock()
	same := err == nil && w.status.AppliedRevision == modRev && w.status.Source == source && w.status.Revision > 0
	w.mu.Unlock()
	// The new tiers are handed over before the status says so: whoever
	// waits for the revision (WaitRevision) finds them in force.
	switch {
	case err != nil:
		w.log.Warn("tiers update rejected; keeping the tiers in force", slog.String("key", key), slog.Int64("revision", rev), slog.Any("errors", messages(err)))
	case !same:
		w.tiers.Store(next)
		w.log.Info("tiers applied", slog.String("source", source), slog.Int64("revision", modRev), slog.Int("tiers", len(next.Tiers)))
		if w.onChange != nil {
			w.onChange(next)
		}
	}
	w.mu.Lock()
	w.status.Revision = rev
	switch {
	case err != nil:
		w.status.LastRejection = &Rejection{Key: key, Revision: rev, Errors: messages(err), At: w.clock.Now()}
		w.status.Rejections++
	case !same:
		w.status.Source, w.status.AppliedRevision, w.status.AppliedAt = source, modRev, w.clock.Now()
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
