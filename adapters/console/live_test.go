package console_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/console"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// viewer is one open /api/live stream.
type viewer struct {
	resp *http.Response
	r    *bufio.Reader
}

// watch opens /api/live on srv; it fails the test unless the answer is an
// event stream.
func watch(t *testing.T, srv *httptest.Server, header map[string]string) *viewer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/live", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		hr.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /api/live: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return &viewer{resp: resp, r: bufio.NewReader(resp.Body)}
}

// next reads the next "stats" event, as sent: "event: stats\ndata: ...\n\n".
func (v *viewer) next(t *testing.T) []byte {
	t.Helper()
	for {
		var block []byte
		for {
			line, err := v.r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("reading the stream: %v", err)
			}
			block = append(block, line...)
			if len(line) == 1 {
				break
			}
		}
		if bytes.HasPrefix(block, []byte("event: stats\n")) {
			return block
		}
	}
}

// liveSnapshot decodes an event's data.
type liveSnapshot struct {
	Time      time.Time `json:"time"`
	Resources []struct {
		Resource string `json:"resource"`
		Passed   uint64 `json:"passed_total"`
		Waiting  *int   `json:"waiting"`
	} `json:"resources"`
	System struct {
		CPUUsage float64 `json:"cpu_usage"`
	} `json:"system"`
}

func decodeEvent(t *testing.T, ev []byte) liveSnapshot {
	t.Helper()
	data, ok := bytes.CutPrefix(ev, []byte("event: stats\ndata: "))
	if !ok || !bytes.HasSuffix(data, []byte("\n\n")) {
		t.Fatalf("event %q", ev)
	}
	var s liveSnapshot
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("event data %q: %v", data, err)
	}
	return s
}

// tick moves the hub's clock one interval once the hub waits on it.
func tick(t *testing.T, c *clock.Fake) {
	t.Helper()
	waitFor(t, "the sampler to wait", func() bool { return c.Timers() == 1 })
	c.Advance(time.Second)
}

// waitFor polls cond, which another goroutine makes true, for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func serveRig(t *testing.T, rg *rig) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(rg.router)
	t.Cleanup(srv.Close)
	t.Cleanup(rg.con.Close) // before srv.Close: the streams end
	return srv
}

func TestLiveViewersGetTheSameBytes(t *testing.T) {
	rg := newRig(t, console.Config{})
	srv := serveRig(t, rg)
	a, b := watch(t, srv, nil), watch(t, srv, nil)
	// The first event comes at once, before the clock moves.
	first := a.next(t)
	if got := b.next(t); !bytes.Equal(got, first) {
		t.Fatalf("first events differ:\n%s\n%s", first, got)
	}
	if s := decodeEvent(t, first); !s.Time.Equal(start) || s.System.CPUUsage != 0.25 || len(s.Resources) != 1 || s.Resources[0].Waiting != nil {
		t.Fatalf("first snapshot %+v", s)
	}
	tick(t, rg.clock)
	second := a.next(t)
	if got := b.next(t); !bytes.Equal(got, second) {
		t.Fatalf("second events differ:\n%s\n%s", second, got)
	}
	if s := decodeEvent(t, second); !s.Time.Equal(start.Add(time.Second)) {
		t.Fatalf("second snapshot at %v, want a second later", s.Time)
	}
	if rg.con.Viewers() != 2 {
		t.Fatalf("%d viewers, want 2", rg.con.Viewers())
	}
}

func TestLiveSnapshotChangesAfterTraffic(t *testing.T) {
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{Namespace: t.Name() + "/", CPU: idleCPU{}}, set)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	rg := newRig(t, console.Config{Engine: eng})
	v := watch(t, serveRig(t, rg), nil)
	passed := func(ev []byte) uint64 {
		for _, r := range decodeEvent(t, ev).Resources {
			if r.Resource == "zimage_generate" {
				return r.Passed
			}
		}
		t.Fatalf("no zimage_generate in %s", ev)
		return 0
	}
	if n := passed(v.next(t)); n != 0 {
		t.Fatalf("passed %d before any traffic", n)
	}
	for i := range 3 {
		tok, err := eng.Guard(context.Background(), engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1", Size: 512})
		if err != nil {
			t.Fatalf("call %d refused: %v", i, err)
		}
		tok.Exit(nil)
	}
	tick(t, rg.clock)
	if n := passed(v.next(t)); n != 3 {
		t.Fatalf("passed %d after 3 calls, want 3", n)
	}
}

// blockingWriter is a viewer whose writes of events block until released:
// a viewer on a stalled connection.
type blockingWriter struct {
	header  http.Header
	release chan struct{}
	mu      sync.Mutex
	events  [][]byte
	entered chan struct{} // told when a write of an event begins
	wrote   chan struct{} // told when it ends
}

func (w *blockingWriter) Header() http.Header { return w.header }
func (w *blockingWriter) WriteHeader(int)     {}
func (w *blockingWriter) Flush()              {}

func (w *blockingWriter) Write(p []byte) (int, error) {
	if !bytes.HasPrefix(p, []byte("event:")) {
		return len(p), nil
	}
	w.entered <- struct{}{}
	<-w.release
	w.mu.Lock()
	w.events = append(w.events, bytes.Clone(p))
	w.mu.Unlock()
	w.wrote <- struct{}{}
	return len(p), nil
}

func TestLiveSlowViewerDoesNotStallOthers(t *testing.T) {
	rg := newRig(t, console.Config{})
	srv := serveRig(t, rg)
	slow := &blockingWriter{header: http.Header{}, release: make(chan struct{}), entered: make(chan struct{}, 16), wrote: make(chan struct{}, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rg.router.ServeHTTP(slow, httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/live", nil))
	}()
	defer func() { cancel(); <-done }()
	fast := watch(t, srv, nil)
	fast.next(t)
	<-slow.entered
	// The slow viewer is stuck writing the first event; three more are
	// published and the fast viewer gets each.
	var last []byte
	for i := range 3 {
		rg.src.add(1)
		tick(t, rg.clock)
		last = fast.next(t)
		if s := decodeEvent(t, last); s.Resources[0].Passed != uint64(i+1) {
			t.Fatalf("event %d: passed %d", i+1, s.Resources[0].Passed)
		}
	}
	close(slow.release)
	<-slow.wrote // the first event
	<-slow.wrote // then the latest, skipping those between
	slow.mu.Lock()
	defer slow.mu.Unlock()
	if len(slow.events) != 2 || decodeEvent(t, slow.events[0]).Resources[0].Passed != 0 || !bytes.Equal(slow.events[1], last) {
		t.Fatalf("the slow viewer wrote %d events: %q; want the first, then the latest", len(slow.events), slow.events)
	}
}

func TestLiveStreamEndsWithTheViewer(t *testing.T) {
	rg := newRig(t, console.Config{})
	v := watch(t, serveRig(t, rg), nil)
	v.next(t)
	v.resp.Body.Close()
	waitFor(t, "the stream to end", func() bool { return rg.con.Viewers() == 0 })
}

// TestShutdownDoesNotWaitForViewers: Close, registered to run when the
// server's shutdown begins, ends the streams, so a graceful shutdown
// returns at once instead of waiting out its grace.
func TestShutdownDoesNotWaitForViewers(t *testing.T) {
	rg := newRig(t, console.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rg.router, ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(rg.con.Close)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/api/live")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	v := &viewer{resp: resp, r: bufio.NewReader(resp.Body)}
	v.next(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a viewer: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(v.r); err != nil {
		t.Fatalf("the stream did not end cleanly: %v", err)
	}
}

func TestLiveNeedsTheLoginWithProtectReads(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken, ProtectReads: true})
	srv := serveRig(t, rg)
	resp, err := srv.Client().Get(srv.URL + "/api/live")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no credentials: %d, want 401", resp.StatusCode)
	}
	ck := rg.sessionCookie(t)
	watch(t, srv, map[string]string{"Cookie": ck.Name + "=" + ck.Value}).next(t)
	watch(t, srv, map[string]string{"Authorization": "Bearer " + testToken}).next(t)
	if rec := rg.do(req{method: http.MethodGet, path: "/api/live", header: map[string]string{"Authorization": "Bearer wrong"}}); rec.Code != http.StatusUnauthorized {
		t.Fatalf("a wrong token: %d", rec.Code)
	}
	// Without --protect-reads the feed is open.
	open := newRig(t, console.Config{AdminToken: testToken})
	watch(t, serveRig(t, open), nil).next(t)
}
