package etcd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// tiersFixture runs a TiersWatcher under the test's prefix and records
// what it hands OnChange.
type tiersFixture struct {
	store *Store
	w     *TiersWatcher

	mu      sync.Mutex
	changes []*rules.Tiers
}

func newTiersFixture(t *testing.T, before func(*Store)) *tiersFixture {
	t.Helper()
	f := &tiersFixture{store: NewStore(shared.client, testPrefix(t))}
	if before != nil {
		before(f.store)
	}
	f.w = NewTiersWatcher(TiersWatcherConfig{Store: f.store, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnChange: func(ts *rules.Tiers) { f.mu.Lock(); f.changes = append(f.changes, ts); f.mu.Unlock() }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-f.w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("tiers watcher not ready")
	}
	return f
}

func (f *tiersFixture) put(t *testing.T, value string) TiersStatus {
	t.Helper()
	resp, err := f.store.Client().Put(context.Background(), f.store.TiersKey(), value)
	if err != nil {
		t.Fatal(err)
	}
	return f.wait(t, resp.Header.Revision)
}

func (f *tiersFixture) wait(t *testing.T, rev int64) TiersStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := f.w.WaitRevision(ctx, rev)
	if err != nil {
		t.Fatalf("revision %d never seen: %v", rev, err)
	}
	return st
}

func (f *tiersFixture) changeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.changes)
}

func (f *tiersFixture) lastChange() *rules.Tiers {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changes[len(f.changes)-1]
}

const goldTiers = `tiers:
  - name: anonymous
    daily_quota: 5
  - name: gold
    daily_quota: 1000
    in_flight: 4
    priority: high
    rate: {threshold: 10, window: 1s}
`

func TestTiersAbsentKeyMeansDefaults(t *testing.T) {
	f := newTiersFixture(t, nil)
	st := f.w.Status()
	if st.Source != "built-in" || st.AppliedRevision != 0 || st.LastRejection != nil {
		t.Fatalf("status %+v", st)
	}
	anon, _ := f.w.Tiers().Tier(tenant.AnonymousTier)
	if anon.DailyQuota != 50 {
		t.Fatalf("anonymous quota %d, want the built-in 50", anon.DailyQuota)
	}
	if f.changeCount() != 1 || len(f.lastChange().Tiers) != 3 {
		t.Fatalf("OnChange calls %d; want one with the built-in tiers", f.changeCount())
	}
}

func TestTiersUpdatesAppliedAndBadOnesRejected(t *testing.T) {
	f := newTiersFixture(t, nil)

	st := f.put(t, goldTiers)
	if st.LastRejection != nil || st.Source != "etcd "+f.store.TiersKey() || st.AppliedRevision != st.Revision {
		t.Fatalf("good update: status %+v", st)
	}
	gold, ok := f.w.Tiers().Tier("gold")
	if !ok || gold.DailyQuota != 1000 || gold.Priority != tenant.High || gold.Rate.Threshold != 10 {
		t.Fatalf("gold tier %+v %v", gold, ok)
	}
	if f.changeCount() != 2 || f.lastChange() != f.w.Tiers() {
		t.Fatalf("OnChange calls %d; want the update handed over", f.changeCount())
	}
	good := f.w.Tiers()

	st = f.put(t, strings.Replace(goldTiers, "daily_quota: 1000", "daily_quota: lots", 1))
	if f.w.Tiers() != good {
		t.Fatal("a bad update replaced the tiers in force")
	}
	r := st.LastRejection
	want := f.store.TiersKey() + `: tiers[1].daily_quota: want an integer >= 0 or "unlimited", got "lots"`
	if r == nil || r.Revision != st.Revision || len(r.Errors) != 1 || r.Errors[0] != want || st.Rejections != 1 {
		t.Fatalf("rejection %+v, want %q", st, want)
	}
	if st.AppliedRevision == st.Revision {
		t.Fatal("the rejected revision counts as applied")
	}
	if f.changeCount() != 2 {
		t.Fatal("OnChange called for a rejected update")
	}

	// Deleting the document puts the built-in tiers back.
	resp, err := f.store.Client().Delete(context.Background(), f.store.TiersKey())
	if err != nil {
		t.Fatal(err)
	}
	st = f.wait(t, resp.Header.Revision)
	if st.Source != "built-in" || len(f.w.Tiers().Tiers) != 3 || f.changeCount() != 3 {
		t.Fatalf("after delete: %+v, %d tiers", st, len(f.w.Tiers().Tiers))
	}
}

func TestTiersDocumentInEtcdAtStart(t *testing.T) {
	f := newTiersFixture(t, func(s *Store) {
		if _, err := s.PutTiers(context.Background(), []byte(goldTiers)); err != nil {
			t.Fatal(err)
		}
	})
	if _, ok := f.w.Tiers().Tier("gold"); !ok || f.changeCount() != 1 {
		t.Fatalf("document in etcd not applied at start (%d changes)", f.changeCount())
	}
}

func TestPutTiersValidatesFirst(t *testing.T) {
	s := NewStore(shared.client, testPrefix(t))
	_, err := s.PutTiers(context.Background(), []byte("tiers:\n  - name: vip\n    daily_quota: unlimited\n"))
	var list rules.Errors
	if !errors.As(err, &list) || !strings.Contains(err.Error(), `no tier named "anonymous"`) {
		t.Fatalf("err = %v", err)
	}
	if d, err := s.GetTiers(context.Background()); err != nil || d.Value != nil {
		t.Fatalf("an invalid document was written: %q %v", d.Value, err)
	}
	rev, err := s.PutTiers(context.Background(), []byte(goldTiers))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := s.GetTiers(context.Background()); err != nil || string(d.Value) != goldTiers || d.ModRevision != rev {
		t.Fatalf("get %+v %v", d, err)
	}
}

func TestSeedTiersOnlyWhenAbsent(t *testing.T) {
	s := NewStore(shared.client, testPrefix(t))
	if ok, err := s.SeedTiers(context.Background(), []byte("not: [valid")); ok || err == nil {
		t.Fatalf("seeded an invalid document: %v %v", ok, err)
	}
	if ok, err := s.SeedTiers(context.Background(), rules.DefaultTiersSource()); !ok || err != nil {
		t.Fatalf("seed: %v %v", ok, err)
	}
	if _, err := s.PutTiers(context.Background(), []byte(goldTiers)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.SeedTiers(context.Background(), rules.DefaultTiersSource()); ok || err != nil {
		t.Fatalf("seeded over an operator's document: %v %v", ok, err)
	}
	if d, _ := s.GetTiers(context.Background()); string(d.Value) != goldTiers {
		t.Fatalf("document %q", d.Value)
	}
}

// TestTiersWatcherSurvivesEtcdRestart: with etcd gone the tiers in force
// stay; a change made once it is back is applied.
func TestTiersWatcherSurvivesEtcdRestart(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := e.Endpoints()[0]
	store := NewStore(newClient(t, []string{endpoint}), "")
	if _, err := store.PutTiers(context.Background(), []byte(goldTiers)); err != nil {
		t.Fatal(err)
	}
	w := NewTiersWatcher(TiersWatcherConfig{Store: store, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	defer stop()
	<-w.Ready()

	e.Close()
	if _, ok := w.Tiers().Tier("gold"); !ok {
		t.Fatal("with etcd down the tiers in force were dropped")
	}
	e, err = StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	rev, err := store.PutTiers(wctx, []byte(strings.Replace(goldTiers, "daily_quota: 1000", "daily_quota: 2000", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WaitRevision(wctx, rev); err != nil {
		t.Fatalf("change after the restart never applied: %v", err)
	}
	if gold, _ := w.Tiers().Tier("gold"); gold.DailyQuota != 2000 {
		t.Fatalf("gold quota %d, want 2000", gold.DailyQuota)
	}
	stop() // before etcd closes, which otherwise waits for the open watch
}

// PutTiersSince writes only over the document it was told of: a change in
// between (another operator) refuses it, and nothing is written.
func TestPutTiersSinceRefusesAChangedDocument(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	ctx := context.Background()
	d, err := store.GetTiers(ctx)
	if err != nil || d.ModRevision != 0 {
		t.Fatalf("empty: %+v %v", d, err)
	}
	if _, err := store.PutTiersSince(ctx, []byte(goldTiers), d.ModRevision); err != nil {
		t.Fatalf("first write over no document: %v", err)
	}
	seen, _ := store.GetTiers(ctx)
	other := strings.Replace(goldTiers, "daily_quota: 1000", "daily_quota: 2000", 1)
	if _, err := store.PutTiers(ctx, []byte(other)); err != nil { // another operator, in between
		t.Fatal(err)
	}
	mine := strings.Replace(goldTiers, "daily_quota: 1000", "daily_quota: 10", 1)
	if _, err := store.PutTiersSince(ctx, []byte(mine), seen.ModRevision); !errors.Is(err, ErrChangedSince) {
		t.Fatalf("write over a changed document: %v, want ErrChangedSince", err)
	}
	if now, _ := store.GetTiers(ctx); string(now.Value) != other {
		t.Fatalf("etcd holds %q, want the other operator's document", now.Value)
	}
}
