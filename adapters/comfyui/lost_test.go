package comfyui_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/engine/clock"
)

// eventually waits, within the test's own deadline, for cond to hold: the
// condition is a state reached over loopback, not a wait that hopes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type runResult struct {
	res *comfyui.Result
	err error
}

func runAsync(c *comfyui.Client, job comfyui.Job) <-chan runResult {
	out := make(chan runResult, 1)
	go func() {
		res, err := c.Run(context.Background(), job)
		out <- runResult{res, err}
	}()
	return out
}

// ComfyUI restarts while the prompt waits in its queue: no event says so,
// the WebSocket breaks, and after the reconnect /queue and /history know
// nothing of it. The client queues it once more and the job gets its image.
func TestRunRequeuesPromptLostInRestart(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	s.Pause()
	c := newClient(t, s.URL, time.Hour) // no /history polling to rescue it
	queued := make(chan string, 2)
	done := runAsync(c, comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32,
		OnQueued: func(id string) { queued <- id }})
	first := <-queued
	s.Restart()
	second := <-queued
	if second == first {
		t.Fatalf("queued again under the same id %s", first)
	}
	s.Resume()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.PromptID != second {
		t.Errorf("result of %s, want the second prompt %s", r.res.PromptID, second)
	}
	decodePNG(t, r.res.Image)
	if n := len(s.Prompts()); n != 2 {
		t.Errorf("%d prompts queued, want 2", n)
	}
}

// Another client deletes the prompt from ComfyUI's queue: no event at all,
// the WebSocket stays up. The client's queue check, after the WebSocket has
// been quiet for QueueCheckInterval, finds it gone and queues it again.
func TestRunRequeuesPromptDeletedFromQueue(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	s.Pause()
	fc := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	c, err := comfyui.NewClient(comfyui.Config{BaseURL: s.URL, Clock: fc, PollInterval: time.Hour, QueueCheckInterval: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	queued := make(chan string, 3)
	done := runAsync(c, comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32,
		OnQueued: func(id string) { queued <- id }})
	first := <-queued
	resp, err := http.Post(s.URL+"/queue", "application/json", strings.NewReader(`{"delete": ["`+first+`"]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	eventually(t, "the poll and quiet timers", func() bool { return fc.Timers() == 2 })
	fc.Advance(time.Second)
	select {
	case id := <-queued:
		t.Fatalf("queued again as %s before the WebSocket was quiet for QueueCheckInterval", id)
	case r := <-done:
		t.Fatalf("ended before the queue check: %v", r.err)
	default:
	}
	fc.Advance(time.Second)
	second := <-queued
	s.Resume()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.PromptID != second || second == first {
		t.Errorf("result of %s; queued %s then %s", r.res.PromptID, first, second)
	}
	if n := len(s.Prompts()); n != 2 {
		t.Errorf("%d prompts queued, want 2", n)
	}
}

// A prompt lost after it started is not queued again: Run returns
// ErrPromptLost at once, naming the prompt.
func TestRunLostAfterStart(t *testing.T) {
	s := newFake(t, comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return time.Hour }})
	c := newClient(t, s.URL, time.Hour)
	running := make(chan struct{})
	var id string
	done := runAsync(c, comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32,
		OnQueued: func(p string) { id = p }, OnRunning: func() { close(running) }})
	<-running
	s.Restart()
	r := <-done
	if !errors.Is(r.err, comfyui.ErrPromptLost) || !strings.Contains(r.err.Error(), id) {
		t.Fatalf("err = %v, want ErrPromptLost naming %s", r.err, id)
	}
	if n := len(s.Prompts()); n != 1 {
		t.Errorf("%d prompts queued: a prompt that had started was queued again", n)
	}
}

// A prompt lost twice (before it started both times) fails: it is queued
// again only once.
func TestRunRequeuesOnlyOnce(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	s.Pause()
	c := newClient(t, s.URL, time.Hour)
	queued := make(chan string, 3)
	done := runAsync(c, comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32,
		OnQueued: func(id string) { queued <- id }})
	<-queued
	s.Restart()
	<-queued
	s.Restart()
	r := <-done
	if !errors.Is(r.err, comfyui.ErrPromptLost) {
		t.Fatalf("err = %v, want ErrPromptLost", r.err)
	}
	if n := len(s.Prompts()); n != 2 {
		t.Errorf("%d prompts queued, want 2", n)
	}
}

// Each job learns its place in ComfyUI's queue (1 = nothing ahead; the
// running prompt counts as ahead) as it changes, then that it runs.
func TestRunReportsQueuePositionAndRunning(t *testing.T) {
	release := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{}), "c": make(chan struct{})}
	s := newFake(t, comfyuitest.Options{JobTime: func(p comfyuitest.Prompt) time.Duration {
		text, _ := p.String("CLIPTextEncode", "text")
		<-release[text]
		return 0
	}})
	var releaseOnce sync.Once
	t.Cleanup(func() {
		releaseOnce.Do(func() {
			for _, ch := range release {
				select {
				case <-ch:
				default:
					close(ch)
				}
			}
		})
	})
	s.Pause()
	c := newClient(t, s.URL, time.Hour)
	type report struct {
		job   string
		place int // 0: running
	}
	reports := make(chan report, 32)
	dones := map[string]<-chan runResult{}
	for _, text := range []string{"a", "b", "c"} {
		queued := make(chan struct{})
		dones[text] = runAsync(c, comfyui.Job{Resource: "zimage_generate", Prompt: text, Width: 32, Height: 32,
			OnQueued:        func(string) { close(queued) },
			OnQueuePosition: func(p int) { reports <- report{text, p} },
			OnRunning:       func() { reports <- report{text, 0} }})
		<-queued
	}
	got := map[string][]int{}
	// next takes reports (those of different jobs interleave) until want
	// has come.
	next := func(want report) {
		t.Helper()
		for !slices.Contains(got[want.job], want.place) {
			r := <-reports
			got[r.job] = append(got[r.job], r.place)
		}
	}
	next(report{"c", 3})
	next(report{"b", 2})
	next(report{"a", 1})
	s.Resume()
	next(report{"a", 0})
	close(release["a"])
	next(report{"b", 0})
	next(report{"c", 2}) // b runs ahead of it
	close(release["b"])
	next(report{"c", 0})
	close(release["c"])
	for text, done := range dones {
		if r := <-done; r.err != nil {
			t.Fatalf("%s: %v", text, r.err)
		}
	}
	close(reports)
	for r := range reports {
		got[r.job] = append(got[r.job], r.place)
	}
	// Each job reports its places as they shrink, then 0 for running. A
	// place of 1 may show between the end of the prompt ahead and the
	// start of the next, when nothing runs.
	must := map[string][]int{"a": {1, 0}, "b": {2, 0}, "c": {3, 2, 0}}
	for job, m := range must {
		g := got[job]
		ok := len(g) >= len(m) && g[0] == m[0] && g[len(g)-1] == 0
		for i := 1; ok && i < len(g); i++ {
			ok = g[i] < g[i-1]
		}
		for _, p := range m {
			ok = ok && slices.Contains(g, p)
		}
		if !ok {
			t.Errorf("%s reported %v, want places shrinking through %v (0: running)", job, g, m)
		}
	}
}

// Many jobs share one WebSocket; OnConnection tells its state, a restart of
// ComfyUI breaks it and the client reconnects under the same client_id.
func TestOneWebSocketPerClient(t *testing.T) {
	sim := comfyuitest.NewHandler(comfyuitest.Options{})
	t.Cleanup(sim.Close)
	var mu sync.Mutex
	var wsIDs []string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			mu.Lock()
			wsIDs = append(wsIDs, r.URL.Query().Get("clientId"))
			mu.Unlock()
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	type change struct {
		up  bool
		err bool
	}
	changes := make(chan change, 8)
	c, err := comfyui.NewClient(comfyui.Config{BaseURL: hs.URL, PollInterval: time.Hour,
		OnConnection: func(up bool, err error) { changes <- change{up, err != nil} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			// Completion must come over the WebSocket: /history is polled hourly.
			if _, err := c.Run(t.Context(), comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32, Seed: int64(i)}); err != nil {
				t.Error(err)
			}
		})
		if i == 2 {
			wg.Wait()
		}
	}
	wg.Wait()
	if got := <-changes; got != (change{up: true}) {
		t.Fatalf("first OnConnection %+v, want up", got)
	}
	mu.Lock()
	n := len(wsIDs)
	mu.Unlock()
	if n != 1 {
		t.Fatalf("%d WebSocket connections for 6 jobs, want 1", n)
	}
	sim.Restart()
	if got := <-changes; got != (change{up: false, err: true}) {
		t.Fatalf("OnConnection %+v after the restart, want down with an error", got)
	}
	if got := <-changes; got != (change{up: true}) {
		t.Fatalf("OnConnection %+v, want up again", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(wsIDs) != 2 || wsIDs[1] != wsIDs[0] {
		t.Errorf("connections with client ids %v, want the same one twice", wsIDs)
	}
	for _, p := range sim.Prompts() {
		if p.ClientID != wsIDs[0] {
			t.Errorf("prompt %s queued with client_id %q, the socket's is %q", p.ID, p.ClientID, wsIDs[0])
		}
	}
}

// The WebSocket reconnects with exponential backoff, capped: the first try
// at once, then 250ms, 500ms, ... up to 30s between tries.
func TestWebSocketReconnectBackoff(t *testing.T) {
	sim := comfyuitest.NewHandler(comfyuitest.Options{})
	t.Cleanup(sim.Close)
	var refuse atomic.Bool
	var tries atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			tries.Add(1)
			if refuse.Load() {
				http.Error(w, "restarting", http.StatusServiceUnavailable)
				return
			}
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	fc := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	c, err := comfyui.NewClient(comfyui.Config{BaseURL: hs.URL, Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Run(t.Context(), comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32}); err != nil {
		t.Fatal(err)
	}
	refuse.Store(true)
	sim.Restart()
	eventually(t, "the immediate retry", func() bool { return tries.Load() == 2 && fc.Timers() == 1 })
	wait := 250 * time.Millisecond
	for try := int64(3); try <= 14; try++ {
		fc.Advance(wait - time.Millisecond)
		if n := tries.Load(); n != try-1 {
			t.Fatalf("try %d came before its wait of %s", n, wait)
		}
		fc.Advance(time.Millisecond)
		eventually(t, "the next try", func() bool { return tries.Load() == try && fc.Timers() == 1 })
		wait = min(2*wait, 30*time.Second)
	}
	if wait != 30*time.Second {
		t.Fatalf("the backoff reached only %s", wait)
	}
}

// Uploads are named by their bytes: the same photo is stored once on the
// server however often it is sent; another photo gets another name.
func TestUploadsNamedByContent(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	c := newClient(t, s.URL, time.Minute)
	photo, other := testPNG(t, 24, 16), testPNG(t, 16, 24)
	for _, img := range [][]byte{photo, photo, other} {
		if _, err := c.Run(t.Context(), comfyui.Job{Resource: "ddcolor_person", Image: img, Size: 256}); err != nil {
			t.Fatal(err)
		}
	}
	name, otherName := comfyui.UploadName(photo), comfyui.UploadName(other)
	if name == otherName || !strings.HasPrefix(name, "sluice-") || !strings.HasSuffix(name, ".png") {
		t.Fatalf("names %q and %q", name, otherName)
	}
	if got := s.Files("input"); !slices.Equal(got, []string{name, otherName}) {
		t.Errorf("input folder holds %v, want [%s %s]", got, name, otherName)
	}
	for i, p := range s.Prompts() {
		want := name
		if i == 2 {
			want = otherName
		}
		if got := p.Prompt["1"].Inputs["image"]; got != want {
			t.Errorf("prompt %d loads %v, want %s", i, got, want)
		}
	}
	jpeg := append([]byte{0xFF, 0xD8, 0xFF, 0xE0}, bytes.Repeat([]byte{0}, 16)...)
	if got := comfyui.UploadName(jpeg); !strings.HasSuffix(got, ".jpg") {
		t.Errorf("a JPEG is named %q", got)
	}
}
