package etcd

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
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
		go f.pipe(up, c)
		go f.pipe(c, up)
	}
}

// pipe copies src to dst, holding what it read while frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.cond.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
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
