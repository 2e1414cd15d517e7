package etcd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

// One real etcd serves the package's tests; each test works under its own
// prefix.
var shared struct {
	etcd   *Embedded
	client *clientv3.Client
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-etcd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e, err := StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, err := NewClient(ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared.etcd, shared.client = e, c
	code := m.Run()
	c.Close()
	e.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fixture is a store under the test's own prefix, an engine, and a running
// watcher.
type fixture struct {
	store  *Store
	eng    *engine.Engine
	w      *Watcher
	cancel context.CancelFunc
	done   chan struct{}
}

func newFixture(t testing.TB, client *clientv3.Client, configure func(*Watcher)) *fixture {
	t.Helper()
	store := NewStore(client, testPrefix(t))
	eng, err := engine.New(engine.Options{Namespace: fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(WatcherConfig{Store: store, Engine: eng, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if configure != nil {
		configure(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fixture{store: store, eng: eng, w: w, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(f.done); w.Run(ctx) }()
	t.Cleanup(func() { f.stop(); eng.Close() })
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not ready")
	}
	return f
}

// stop ends the watcher and waits for it.
func (f *fixture) stop() {
	f.cancel()
	<-f.done
}

// put writes a raw value as an operator with etcdctl would, and waits until
// the watcher has seen it.
func (f *fixture) put(t testing.TB, name, value string) Status {
	t.Helper()
	resp, err := f.store.Client().Put(context.Background(), f.store.Key(name), value)
	if err != nil {
		t.Fatal(err)
	}
	return f.wait(t, resp.Header.Revision)
}

func (f *fixture) wait(t testing.TB, rev int64) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := f.w.WaitRevision(ctx, rev)
	if err != nil {
		t.Fatalf("revision %d never seen: %v (status %+v)", rev, err, st)
	}
	return st
}

// admitted guards n calls and counts those admitted.
func admitted(t testing.TB, eng *engine.Engine, resource string, n int) int {
	t.Helper()
	ok := 0
	for range n {
		tok, err := eng.Guard(context.Background(), engine.Call{Resource: resource, Origin: "192.0.2.1"})
		if err == nil {
			ok++
			tok.Exit(nil)
		}
	}
	return ok
}

func TestPutChangesEnforcementWithoutRestart(t *testing.T) {
	f := newFixture(t, shared.client, nil)
	st := f.put(t, "ddcolor_person", "resource: ddcolor_person\nflow: [{threshold: 2, window: 10s}]\n")
	if st.AppliedRevision != st.Revision || st.LastRejection != nil {
		t.Fatalf("status %+v", st)
	}
	if n := admitted(t, f.eng, "ddcolor_person", 5); n != 2 {
		t.Fatalf("threshold 2: admitted %d", n)
	}
	f.put(t, "ddcolor_person", `{"resource": "ddcolor_person", "flow": [{"threshold": 6, "window": "10s"}]}`)
	if n := admitted(t, f.eng, "ddcolor_person", 10); n != 4 {
		t.Fatalf("raised to 6 (2 spent): admitted %d more, want 4", n)
	}
	// Deleting the key removes the resource's rules.
	resp, err := f.store.Client().Delete(context.Background(), f.store.Key("ddcolor_person"))
	if err != nil {
		t.Fatal(err)
	}
	f.wait(t, resp.Header.Revision)
	if n := admitted(t, f.eng, "ddcolor_person", 20); n != 20 {
		t.Fatalf("after delete: admitted %d of 20", n)
	}
}

func TestBadPutKeepsLastGoodRules(t *testing.T) {
	f := newFixture(t, shared.client, nil)
	f.put(t, "ddcolor_person", "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n")
	for _, tc := range []struct{ name, key, value, want string }{
		{"invalid value", "ddcolor_person", "resource: ddcolor_person\nflow: [{threshold: -5}]\n", "flow[0].threshold: must be > 0, got -5"},
		{"not yaml", "ddcolor_person", "resource: [", "not valid YAML or JSON"},
		{"wrong document for key", "ddcolor_person", "resource: zimage_generate\n", "holds the document of zimage_generate; this key is for ddcolor_person"},
		{"system key with a resource", "system", "resource: ddcolor_person\n", "holds the document of ddcolor_person; this key is for system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := f.w.Status()
			st := f.put(t, tc.key, tc.value)
			r := st.LastRejection
			if r == nil || r.Revision != st.Revision || r.Key != f.store.Key(tc.key) || !strings.Contains(strings.Join(r.Errors, "\n"), tc.want) {
				t.Fatalf("rejection %+v, want one naming %q", r, tc.want)
			}
			if st.Rejections != good.Rejections+1 {
				t.Fatalf("rejections counted %d, want %d", st.Rejections, good.Rejections+1)
			}
			if st.AppliedRevision != good.AppliedRevision {
				t.Fatalf("applied revision moved to %d", st.AppliedRevision)
			}
			if got := f.eng.Rules().Resources["ddcolor_person"].Flow[0].Threshold; got != 1 {
				t.Fatalf("rules in force changed: threshold %v", got)
			}
			// Fix it again so each case starts from good rules.
			f.put(t, "ddcolor_person", "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n")
			f.store.Client().Delete(context.Background(), f.store.Key("system"))
		})
	}
}

func TestWatcherSurvivesEtcdRestart(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := e.Endpoints()[0]
	client, err := NewClient(ClientConfig{Endpoints: []string{endpoint}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	f := newFixture(t, client, nil)
	f.put(t, "zimage_generate", "resource: zimage_generate\nflow: [{threshold: 3, window: 10s}]\n")

	e.Close() // etcd goes away
	// The gateway goes on with the rules it has.
	if n := admitted(t, f.eng, "zimage_generate", 5); n != 3 {
		t.Fatalf("with etcd down: admitted %d, want 3", n)
	}
	e, err = StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// A change made as soon as etcd is back is caught up on.
	other, err := NewClient(ClientConfig{Endpoints: []string{endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := other.Put(ctx, f.store.Key("zimage_generate"), "resource: zimage_generate\nflow: [{threshold: 9, window: 10s}]\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.w.WaitRevision(ctx, resp.Header.Revision); err != nil {
		t.Fatalf("change after the restart never applied: %v", err)
	}
	if got := f.eng.Rules().Resources["zimage_generate"].Flow[0].Threshold; got != 9 {
		t.Fatalf("threshold %v, want 9", got)
	}
	f.stop() // before etcd, which otherwise waits for the open watch
}

func TestCompactedRevisionListsAgain(t *testing.T) {
	var store *Store
	once, compacted := false, make(chan struct{})
	f := newFixture(t, shared.client, func(w *Watcher) {
		store = w.store
		// Between the first listing and its watch, the rules change and
		// etcd compacts those revisions away: the watch must fail and the
		// watcher list again.
		w.beforeWatch = func(rev int64) {
			if once {
				return
			}
			once = true
			defer close(compacted)
			ctx := context.Background()
			store.Client().Put(ctx, store.Key("ddcolor_building"), "resource: ddcolor_building\nflow: [{threshold: 4}]\n")
			resp, _ := store.Client().Put(ctx, store.Key("ddcolor_building"), "resource: ddcolor_building\nflow: [{threshold: 7}]\n")
			if _, err := store.Client().Compact(ctx, resp.Header.Revision); err != nil {
				panic(err)
			}
		}
	})
	<-compacted
	resp, err := store.Client().Get(context.Background(), store.Key("ddcolor_building"))
	if err != nil {
		t.Fatal(err)
	}
	f.wait(t, resp.Header.Revision)
	if r := f.eng.Rules().Resources["ddcolor_building"]; r == nil || r.Flow[0].Threshold != 7 {
		t.Fatalf("after compaction the fresh listing was not applied: %+v", r)
	}
}

func TestStoreApplyValidatesAllAndWritesNothingOnError(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	ctx := context.Background()
	docs, err := rules.Parse("good.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 2}]\n---\nsystem: {load: 8}\n"))
	if err != nil {
		t.Fatal(err)
	}
	changes, rev, err := store.Apply(ctx, docs)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 || changes[0].Action != "created" || changes[1].Name != "system" || rev == 0 {
		t.Fatalf("changes %+v", changes)
	}
	// Applying the same again changes nothing and writes nothing.
	changes, rev2, err := store.Apply(ctx, docs)
	if err != nil || changes[0].Action != "unchanged" || changes[1].Action != "unchanged" || rev2 != rev {
		t.Fatalf("re-apply: %+v %d %v", changes, rev2, err)
	}
	// One bad document among good ones: nothing is written.
	mixed, err := rules.Parse("mixed.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 3}]\n---\nresource: zimage_generate\nflow: [{threshold: 1}]\ncost: {param: size, values: {\"2048\": 5}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = store.Apply(ctx, mixed)
	var list rules.Errors
	if !errors.As(err, &list) || !strings.Contains(list.Error(), "costs 5 but flow[0].threshold is 1") {
		t.Fatalf("err = %v", err)
	}
	snap, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Revision != rev || len(snap.Values) != 2 || !strings.Contains(string(snap.Values[store.Key("ddcolor_person")]), "threshold: 2") {
		t.Fatalf("a failed apply wrote something: rev %d, %d keys", snap.Revision, len(snap.Values))
	}
	// Put validates against the rest; Delete removes.
	if _, err := store.Put(ctx, "ddcolor_person", []byte("resource: ddcolor_person\nflow: [{threshold: 0}]\n")); !errors.As(err, &list) {
		t.Fatalf("bad put: %v", err)
	}
	if _, err := store.Delete(ctx, "zimage_generate"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of a missing document: %v", err)
	}
	if _, err := store.Delete(ctx, "system"); err != nil {
		t.Fatal(err)
	}
}

func TestSeedOnlyWhenEmpty(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if ok, err := store.Seed(ctx, set); !ok || err != nil {
		t.Fatalf("first seed: %v %v", ok, err)
	}
	snap, _ := store.Load(ctx)
	if len(snap.Values) != len(set.Docs) {
		t.Fatalf("seeded %d keys, want %d", len(snap.Values), len(set.Docs))
	}
	built, err := store.Build(snap.Values)
	if err != nil || built.Resources["ddcolor_building"].Flow[0].WarmUp == nil {
		t.Fatalf("seeded rules do not build back: %v", err)
	}
	if ok, err := store.Seed(ctx, set); ok || err != nil {
		t.Fatalf("second seed wrote again: %v %v", ok, err)
	}
}

// engineSeq gives every engine of the test binary its own sentinel-golang
// namespace, so windows of earlier tests (or earlier -count runs) do not
// leak into later ones.
var engineSeq atomic.Int64

// testPrefix gives every store of the test binary its own prefix in the
// shared etcd, so earlier tests (or earlier -count runs) leave nothing behind.
func testPrefix(t testing.TB) string {
	return fmt.Sprintf("/test/%s#%d", t.Name(), engineSeq.Add(1))
}

// TestDeleteTouchesOnlyItsKey: a delete succeeds while another key holds
// an invalid document, removes only its own key, and leaves the invalid
// one as it was.
func TestDeleteTouchesOnlyItsKey(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	ctx := context.Background()
	docs, err := rules.Parse("good.yaml", []byte("resource: zimage_generate\nflow: [{threshold: 2}]\n---\nsystem: {load: 8}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Apply(ctx, docs); err != nil {
		t.Fatal(err)
	}
	// Written by hand, past the store's validation: an invalid document.
	bad := "resource: ddcolor_person\nflow: [{threshold: -1}]\n"
	if _, err := shared.client.Put(ctx, store.Key("ddcolor_person"), bad); err != nil {
		t.Fatal(err)
	}
	// Before the fix: "ddcolor_person: flow[0].threshold: must be > 0" refused this.
	if _, err := store.Delete(ctx, "zimage_generate"); err != nil {
		t.Fatalf("delete beside an invalid document: %v", err)
	}
	snap, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := snap.Values[store.Key("zimage_generate")]; ok {
		t.Fatal("zimage_generate is still there")
	}
	if len(snap.Values) != 2 || string(snap.Values[store.Key("ddcolor_person")]) != bad || snap.Values[store.Key("system")] == nil {
		t.Fatalf("the delete touched other keys: %q", snap.Values)
	}
	// Deleting the invalid document itself is fine too.
	if _, err := store.Delete(ctx, "ddcolor_person"); err != nil {
		t.Fatalf("delete of the invalid document: %v", err)
	}
}

// TestNewProblemsOnlyCountsTheChange: newProblems reports a problem the
// change brings and ignores those the set had before.
func TestNewProblemsOnlyCountsTheChange(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	bad := []byte("resource: ddcolor_person\nflow: [{threshold: -1}]\n")
	good := []byte("resource: zimage_generate\nflow: [{threshold: 2}]\n")
	before := map[string][]byte{store.Key("ddcolor_person"): bad, store.Key("zimage_generate"): good}
	if err := store.newProblems(before, map[string][]byte{store.Key("ddcolor_person"): bad}); err != nil {
		t.Fatalf("an old problem counted: %v", err)
	}
	err := store.newProblems(map[string][]byte{store.Key("zimage_generate"): good}, before)
	var list rules.Errors
	if !errors.As(err, &list) || len(list) != 1 || !strings.Contains(list[0].Error(), "flow[0].threshold: must be > 0") {
		t.Fatalf("a new problem was not reported: %v", err)
	}
}

// TestPutProblemsCarryTheDocumentsLines: a rejected Put locates its
// problems in the document sent, not in the form etcd would store.
func TestPutProblemsCarryTheDocumentsLines(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	doc := "# a comment first\nresource: ddcolor_person\nflow:\n\n  - {window: 1s, threshold: -1}\n"
	_, err := store.Put(context.Background(), "ddcolor_person", []byte(doc))
	var list rules.Errors
	if !errors.As(err, &list) || len(list) != 1 || list[0].Path != "flow[0].threshold" || list[0].Line != 5 || list[0].Column != 29 {
		t.Fatalf("err = %v (at %d:%d)", err, list[0].Line, list[0].Column)
	}
}

// TestApplySinceRefusesAChangedDocument: a document written after the
// snapshot it was compared with is not replaced.
func TestApplySinceRefusesAChangedDocument(t *testing.T) {
	store := NewStore(shared.client, testPrefix(t))
	ctx := context.Background()
	v1, _ := rules.Parse("a.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 2}]\n"))
	if _, _, err := store.Apply(ctx, v1); err != nil {
		t.Fatal(err)
	}
	seen, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Another writer adds a ban meanwhile.
	other, _ := rules.Parse("b.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 2}]\nban: {blocks: 3, within: 10s, for: 1m}\n"))
	if _, _, err := store.Apply(ctx, other); err != nil {
		t.Fatal(err)
	}
	v2, _ := rules.Parse("c.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 3}]\n"))
	if _, _, err := store.ApplySince(ctx, v2, seen); !errors.Is(err, ErrChangedSince) {
		t.Fatalf("err = %v, want ErrChangedSince", err)
	}
	snap, _ := store.Load(ctx)
	if !strings.Contains(string(snap.Values[store.Key("ddcolor_person")]), "ban:") {
		t.Fatalf("the other writer's document was replaced: %q", snap.Values[store.Key("ddcolor_person")])
	}
	// A key not in docs may change: only what is replaced is checked.
	z, _ := rules.Parse("z.yaml", []byte("resource: zimage_generate\nflow: [{threshold: 1}]\n"))
	if _, _, err := store.ApplySince(ctx, z, snap); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.ApplySince(ctx, v2, snap); err != nil {
		t.Fatalf("with a fresh snapshot: %v", err)
	}
}
