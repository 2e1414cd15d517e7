package etcd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
	"go.etcd.io/etcd/pkg/v3/featuregate"
	"go.etcd.io/etcd/server/v3/features"
)

// freezer is a TCP proxy that can stop passing bytes while keeping every
// connection open: a half-open path, as a peer that vanished without a
// word or a network that drops everything.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	conns  []net.Conn
	// hungUp counts the connections the client side closed.
	hungUp int
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	f.cond = sync.NewCond(&f.mu)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return "http://" + f.ln.Addr().String() }

func (f *freezer) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, up)
		f.mu.Unlock()
		go f.pipe(up, c, true)
		go f.pipe(c, up, false)
	}
}

// pipe copies src to dst, holding what it read while frozen (and still
// reading, so that it sees a side hang up).
func (f *freezer) pipe(dst, src net.Conn, fromClient bool) {
	chunks := make(chan []byte, 4096)
	go func() {
		defer close(chunks)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- bytes.Clone(buf[:n])
			}
			if err != nil {
				if fromClient {
					f.mu.Lock()
					f.hungUp++
					f.mu.Unlock()
				}
				return
			}
		}
	}()
	defer dst.Close()
	for chunk := range chunks {
		f.mu.Lock()
		for f.frozen {
			f.cond.Wait()
		}
		f.mu.Unlock()
		if _, err := dst.Write(chunk); err != nil {
			return
		}
	}
}

func (f *freezer) freeze(on bool) {
	f.mu.Lock()
	f.frozen = on
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *freezer) close() {
	f.ln.Close()
	f.freeze(false)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

// eventually polls cond until it holds, failing after a deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFrozenConnectionIsNotLive: the watcher's connection to etcd goes
// half-open (a proxy between them stops passing bytes, connections left
// open). A rule change made meanwhile cannot reach the gateway, so the
// watcher must stop saying it is live (/readyz: not ready) within its
// silence window, rather than serving stale rules as ready for ever; when
// the path comes back it catches up and is live again.
func TestFrozenConnectionIsNotLive(t *testing.T) {
	proxy := newFreezer(t, strings.TrimPrefix(shared.etcd.Endpoints()[0], "http://"))
	client, err := NewClient(ClientConfig{Endpoints: []string{proxy.addr()}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	f := newFixture(t, client, func(w *Watcher) { w.interval, w.window = 50*time.Millisecond, 400*time.Millisecond })
	defer f.stop()

	// A quiet watch stays live: progress answers keep coming.
	heard := f.w.Status().HeardAt
	eventually(t, "a progress answer on a quiet watch", func() bool { return f.w.Status().HeardAt.After(heard.Add(200 * time.Millisecond)) })
	if live, quiet := f.w.Live(); !live {
		t.Fatalf("not live on a healthy connection (quiet for %s)", quiet)
	}

	proxy.freeze(true)
	// An operator changes a rule through another connection.
	resp, err := shared.client.Put(context.Background(), f.store.Key("zimage_generate"), "resource: zimage_generate\nflow: [{threshold: 7, window: 10s}]\n")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, "not live on a frozen connection", func() bool { live, _ := f.w.Live(); return !live })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s to notice", took)
	}
	if st := f.w.Status(); st.Revision >= resp.Header.Revision {
		t.Fatalf("the change reached a frozen watcher: %+v", st)
	}

	proxy.freeze(false)
	f.wait(t, resp.Header.Revision)
	eventually(t, "live again", func() bool { live, _ := f.w.Live(); return live })
}

// TestNoSpaceAlarm: an embedded etcd past its quota raises NOSPACE and
// refuses writes; the monitor reports it.
func TestNoSpaceAlarm(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", QuotaBackendBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := NewClient(ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := NewAlarmMonitor(c, time.Hour, 0, nil, nil)
	if err := m.Check(context.Background()); err != nil || m.NoSpace() {
		t.Fatalf("fresh etcd: nospace %v, %v", m.NoSpace(), err)
	}
	value := strings.Repeat("x", 100<<10)
	var perr error
	for i := 0; i < 100 && perr == nil; i++ {
		_, perr = c.Put(context.Background(), "/fill/"+string(rune('a'+i%26))+strings.Repeat("k", i), value)
	}
	if perr == nil || !strings.Contains(perr.Error(), "space exceeded") {
		t.Fatalf("writes past the quota: %v", perr)
	}
	if err := m.Check(context.Background()); err != nil || !m.NoSpace() {
		t.Fatalf("past the quota: nospace %v, %v", m.NoSpace(), err)
	}
}

// TestEmbeddedRunsForMonths: the embedded etcd compacts itself, has a
// quota and sends watch progress notifications, by default.
func TestEmbeddedRunsForMonths(t *testing.T) {
	cfg := shared.etcd.etcd.Config()
	if cfg.AutoCompactionMode != "periodic" || cfg.AutoCompactionRetention != DefaultCompactionRetention.String() {
		t.Errorf("auto-compaction %q %q; want periodic %s", cfg.AutoCompactionMode, cfg.AutoCompactionRetention, DefaultCompactionRetention)
	}
	if cfg.QuotaBackendBytes != DefaultQuotaBackendBytes {
		t.Errorf("quota %d", cfg.QuotaBackendBytes)
	}
	if cfg.WatchProgressNotifyInterval != DefaultProgressNotifyInterval {
		t.Errorf("progress notifications every %s", cfg.WatchProgressNotifyInterval)
	}
	for _, f := range []featuregate.Feature{features.LeaseCheckpoint, features.LeaseCheckpointPersist} {
		if !cfg.ServerFeatureGate.Enabled(f) {
			t.Errorf("feature %s off: leases get their whole TTL again at each start", f)
		}
	}
}

// TestEmbeddedCompactsItself: with a short retention, old revisions are
// compacted away by the server itself.
func TestEmbeddedCompactsItself(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", CompactionRetention: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := NewClient(ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, err := c.Put(context.Background(), "/k", "v0")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first revision compacted", func() bool {
		if _, err := c.Put(context.Background(), "/k", "v"); err != nil {
			t.Fatal(err)
		}
		_, err := c.Get(context.Background(), "/k", clientv3.WithRev(first.Header.Revision))
		return err != nil && strings.Contains(err.Error(), "compacted")
	})
}

// TestKeepAliveDropsAHalfOpenConnection: the client pings a quiet
// connection and, when no answer comes, drops it (to dial again) instead
// of waiting on it for ever.
func TestKeepAliveDropsAHalfOpenConnection(t *testing.T) {
	proxy := newFreezer(t, strings.TrimPrefix(shared.etcd.Endpoints()[0], "http://"))
	// 5s is the most often etcd lets a client ping.
	client, err := NewClient(ClientConfig{Endpoints: []string{proxy.addr()}, KeepAliveTime: 5 * time.Second, KeepAliveTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Put(context.Background(), testPrefix(t)+"/k", "v"); err != nil {
		t.Fatal(err)
	}
	proxy.freeze(true)
	deadline := time.Now().Add(20 * time.Second)
	for {
		proxy.mu.Lock()
		n := proxy.hungUp
		proxy.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the client still holds the half-open connection 20s after it froze")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestQuietEtcdKeepsTheWatchLive: on an etcd where nothing is written
// after the listing (a fresh `make run`), every progress request is
// answered, so the watch stays live and is never dropped and listed again.
// etcd answers no progress request of a watch whose start revision is still
// in the future: a watch from the listing's revision + 1 heard nothing and
// was dropped every silence window.
func TestQuietEtcdKeepsTheWatchLive(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	client, err := NewClient(ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Put(t.Context(), testPrefix(t)+"/rules/resources/zimage_generate", "resource: zimage_generate\nflow: [{threshold: 7, window: 10s}]\n"); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	var watches atomic.Int32
	f := newFixture(t, client, func(w *Watcher) {
		w.clock, w.interval, w.window = clk, time.Second, 3*time.Second
		w.beforeWatch = func(int64) { watches.Add(1) }
	})
	defer f.stop()
	for i := range 5 { // past the silence window
		eventually(t, "the watch waiting on its progress timer", func() bool { return clk.Timers() == 1 })
		clk.Advance(time.Second)
		eventually(t, fmt.Sprintf("progress answer %d", i+1), func() bool { return f.w.Status().HeardAt.Equal(clk.Now()) })
	}
	if n := watches.Load(); n != 1 {
		t.Errorf("the watch started %d times, want once (dropped for silence on a healthy etcd)", n)
	}
	if live, quiet := f.w.Live(); !live {
		t.Errorf("not live (quiet for %s)", quiet)
	}
}
