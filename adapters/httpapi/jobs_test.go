package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	"github.com/sluicehq/sluice/engine/jobs"
)

const asyncRules = "resource: ddcolor_person\nflow: [{threshold: 100, window: 1s}]\n---\nresource: zimage_generate\nflow: [{threshold: 100, window: 1s}]\n"

const (
	peer  = "127.0.0.1:5000" // what an httptest.Server's client is
	other = "10.0.0.9:5000"
)

// asyncStack is the real stack with an API server whose Close is
// registered; runner replaces the direct ComfyUI runner when set.
func asyncStack(t *testing.T, o stackOptions, runner httpapi.Runner) *stack {
	t.Helper()
	s := newStack(t, asyncRules, o)
	if runner == nil {
		runner = httpapi.Direct{Client: s.client}
	}
	api, err := httpapi.New(httpapi.Config{Engine: s.eng, Runner: runner, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	s.api, s.h = api, openapitest.Handler(t, api)
	return s
}

// gatedJobTime makes every prompt signal started, wait for release, then
// run for d.
func gatedJobTime(started chan<- struct{}, release <-chan struct{}, d time.Duration) func(comfyuitest.Prompt) time.Duration {
	return func(comfyuitest.Prompt) time.Duration {
		started <- struct{}{}
		<-release
		return d
	}
}

func submitAsync(t *testing.T, s *stack, req *http.Request) string {
	t.Helper()
	rec := s.do(req, peer)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("async submit: %d %s", rec.Code, rec.Body)
	}
	var sub struct{ ID, StatusURL, State string }
	if err := json.Unmarshal(rec.Body.Bytes(), &sub); err != nil {
		t.Fatal(err)
	}
	if sub.ID == "" || sub.State != "queued" || rec.Header().Get("Location") != "/api/jobs/"+sub.ID {
		t.Fatalf("async answer %s, Location %q", rec.Body, rec.Header().Get("Location"))
	}
	return sub.ID
}

func asyncGenerate(body string) *http.Request {
	req := generateRequest(body)
	req.URL.RawQuery = "mode=async"
	return req
}

func getJob(t *testing.T, s *stack, id string) jobs.Job {
	t.Helper()
	rec := s.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id, nil), peer)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET job: %d %s", rec.Code, rec.Body)
	}
	var j jobs.Job
	if err := json.Unmarshal(rec.Body.Bytes(), &j); err != nil {
		t.Fatal(err)
	}
	return j
}

type sseEvent struct {
	Type string
	Data map[string]any
}

// sse follows a job's events over a real connection.
type sse struct {
	resp *http.Response
	r    *bufio.Reader
}

func openEvents(t *testing.T, srv *httptest.Server, id string) *sse {
	t.Helper()
	resp, err := http.Get(srv.URL + "/api/jobs/" + id + "/events")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %v", resp.StatusCode, resp.Header)
	}
	return &sse{resp: resp, r: bufio.NewReader(resp.Body)}
}

// next reads one event; ok is false at the end of the stream.
func (e *sse) next(t *testing.T) (ev sseEvent, ok bool) {
	t.Helper()
	for {
		line, err := e.r.ReadString('\n')
		if err == io.EOF && line == "" {
			return ev, false
		}
		if err != nil {
			t.Fatal(err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			ev.Type = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.Data); err != nil {
				t.Fatal(err)
			}
		case line == "":
			return ev, true
		}
	}
}

// until reads events up to the final state and returns them all.
func (e *sse) until(t *testing.T) []sseEvent {
	t.Helper()
	var all []sseEvent
	for {
		ev, ok := e.next(t)
		if !ok {
			return all
		}
		all = append(all, ev)
	}
}

func finalState(t *testing.T, evs []sseEvent) string {
	t.Helper()
	if len(evs) == 0 || evs[len(evs)-1].Type != "state" {
		t.Fatalf("events do not end with a state: %v", evs)
	}
	return evs[len(evs)-1].Data["state"].(string)
}

func checkIdle(t *testing.T, s *stack) {
	t.Helper()
	for _, st := range s.eng.Stats() {
		if st.InFlight != 0 {
			t.Errorf("%s: %d in flight after the job ended", st.Resource, st.InFlight)
		}
	}
}

func TestAsyncSubmitPollResult(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	s := asyncStack(t, stackOptions{comfy: comfyuitest.Options{JobTime: gatedJobTime(started, release, 5*time.Millisecond)}}, nil)
	srv := httptest.NewServer(s.h)
	defer srv.Close()

	req := colorizeRequest(t, "/api/ddcolorize/person?mode=async", pngBytes(t, 64, 48), map[string]string{"size": "256"})
	id := submitAsync(t, s, req)
	<-started
	if j := getJob(t, s, id); j.State.Final() || j.Params.Size != 256 || j.Resource != "ddcolor_person" {
		t.Fatalf("while running: %+v", j)
	}
	rec := s.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id+"/result", nil), peer)
	if rec.Code != http.StatusConflict {
		t.Fatalf("result before the end: %d %s", rec.Code, rec.Body)
	}
	ev := openEvents(t, srv, id)
	close(release)
	if got := finalState(t, ev.until(t)); got != "succeeded" {
		t.Fatalf("final state %q", got)
	}
	if j := getJob(t, s, id); j.State != jobs.Succeeded || j.PromptID == "" || j.Finished.IsZero() {
		t.Fatalf("after the end: %+v", j)
	}
	rec = s.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id+"/result", nil), peer)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "image/png" {
		t.Fatalf("result: %d %v", rec.Code, rec.Header())
	}
	if _, err := png.Decode(bytes.NewReader(rec.Body.Bytes())); err != nil {
		t.Fatalf("result is not a PNG: %v", err)
	}
	if rec := s.do(httptest.NewRequest(http.MethodDelete, "/api/jobs/"+id, nil), peer); rec.Code != http.StatusConflict {
		t.Errorf("cancel after the end: %d %s", rec.Code, rec.Body)
	}
	checkIdle(t, s)
}

func TestAsyncPreferHeader(t *testing.T) {
	s := asyncStack(t, stackOptions{}, nil)
	req := generateRequest(`{"prompt": "a kite", "width": 512, "height": 512, "steps": 2, "seed": 7}`)
	req.Header.Set("Prefer", "wait=10, respond-async")
	rec := s.do(req, peer)
	if rec.Code != http.StatusAccepted || rec.Header().Get("Preference-Applied") != "respond-async" {
		t.Fatalf("Prefer: respond-async: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	var sub struct{ ID string }
	json.Unmarshal(rec.Body.Bytes(), &sub)
	srv := httptest.NewServer(s.h)
	defer srv.Close()
	finalState(t, openEvents(t, srv, sub.ID).until(t))
	if j := getJob(t, s, sub.ID); j.Params.Prompt != "a kite" || j.Params.Seed != 7 || j.Params.Steps != 2 {
		t.Errorf("params %+v", j.Params)
	}
	if rec := s.do(generateRequest(`{"prompt": "x"}`), peer); rec.Code == http.StatusAccepted {
		t.Error("no mode and no Prefer answered 202")
	}
	bad := httptest.NewRequest(http.MethodPost, "/v1/generate?mode=later", strings.NewReader(`{"prompt": "x"}`))
	if rec := s.do(bad, peer); rec.Code != http.StatusBadRequest {
		t.Errorf("mode=later: %d", rec.Code)
	}
	checkIdle(t, s)
}

func TestAsyncEventsInOrder(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	s := asyncStack(t, stackOptions{comfy: comfyuitest.Options{JobTime: gatedJobTime(started, release, 50*time.Millisecond)}}, nil)
	srv := httptest.NewServer(s.h)
	defer srv.Close()
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // before srv.Close, on any failure

	id := submitAsync(t, s, asyncGenerate(`{"prompt": "a kite", "width": 512, "height": 512, "steps": 5}`))
	<-started
	ev := openEvents(t, srv, id)
	// The replay: subscribed before any progress, once the prompt began on
	// ComfyUI (the job may already have been told it runs).
	first, _ := ev.next(t)
	if st := first.Data["state"]; first.Type != "state" || (st != "queued" && st != "submitted" && st != "running") {
		t.Fatalf("first event %v", first)
	}
	free()
	evs := append([]sseEvent{first}, ev.until(t)...)
	if got := finalState(t, evs); got != "succeeded" {
		t.Fatalf("final state %q", got)
	}
	order := map[any]int{"queued": 0, "submitted": 1, "running": 2, "succeeded": 3}
	last, progress, state, running := 0.0, 0, -1, false
	for i, e := range evs {
		switch e.Type {
		case "progress":
			v := e.Data["value"].(float64)
			if v <= last || e.Data["max"].(float64) != 5 || !running {
				t.Errorf("event %d: progress %v after %v (running %v)", i, e.Data, last, running)
			}
			last, progress = v, progress+1
		case "state":
			o, known := order[e.Data["state"]]
			if !known || o <= state {
				t.Errorf("event %d: state %v after %d", i, e.Data["state"], state)
			}
			state, running = o, e.Data["state"] == "running"
		}
	}
	if progress == 0 {
		t.Errorf("events %v", evs)
	}
	checkIdle(t, s)
}

// stateRunner plays what the farm and ComfyUI tell of a job: a wait for a
// slot (third in the gateway's queue), the prompt accepted by a backend,
// its place in that backend's queue, its start, its progress, its end,
// each step when the test says (next returns once the step is done).
type stateRunner struct{ step, done chan struct{} }

func newStateRunner() stateRunner {
	return stateRunner{step: make(chan struct{}), done: make(chan struct{})}
}

func (r stateRunner) next() {
	r.step <- struct{}{}
	<-r.done
}

func (r stateRunner) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	for _, f := range []func(){
		func() { job.OnQueued(func() int { return 3 }) },
		func() { job.OnStarted("http://gpu1:8188", "p1") },
		func() { job.OnPosition(2) },
		func() { job.OnPosition(1) },
		func() { job.OnRunning() },
		func() { job.OnProgress(1, 2) },
	} {
		<-r.step
		f()
		r.done <- struct{}{}
	}
	<-r.step
	defer func() { r.done <- struct{}{} }()
	return &comfyui.Result{PromptID: "p1", Image: []byte("png"), ContentType: "image/png"}, nil
}

// TestAsyncStatesSayWhereTheJobIs: an async job is queued (with its place
// in the gateway's queue), submitted (with its place in ComfyUI's own
// queue), running, succeeded; GET shows each, and the event stream has
// each change in order.
func TestAsyncStatesSayWhereTheJobIs(t *testing.T) {
	r := newStateRunner()
	s := asyncStack(t, stackOptions{}, r)
	srv := httptest.NewServer(s.h)
	defer srv.Close()

	id := submitAsync(t, s, asyncGenerate(`{"prompt": "x"}`))
	ev := openEvents(t, srv, id)
	expect := func(typ, state string, pos float64) {
		t.Helper()
		e, ok := ev.next(t)
		got, _ := e.Data["queue_position"].(float64)
		if !ok || e.Type != typ || e.Data["state"] != state || got != pos {
			t.Fatalf("event %s %v, want %s %s at %v", e.Type, e.Data, typ, state, pos)
		}
	}
	expect("state", "queued", 0)
	r.next() // waits for a slot
	if j := getJob(t, s, id); j.State != jobs.Queued || j.QueuePosition != 3 {
		t.Fatalf("waiting for a slot: %s at %d", j.State, j.QueuePosition)
	}
	r.next()
	if j := getJob(t, s, id); j.State != jobs.Submitted || j.QueuePosition != 0 {
		t.Fatalf("given to ComfyUI: %s at %d", j.State, j.QueuePosition)
	}
	expect("state", "submitted", 0)
	r.next()
	expect("position", "submitted", 2)
	r.next()
	expect("position", "submitted", 1)
	if j := getJob(t, s, id); j.State != jobs.Submitted || j.QueuePosition != 1 {
		t.Fatalf("in ComfyUI's queue: %s at %d", j.State, j.QueuePosition)
	}
	r.next()
	expect("state", "running", 0)
	r.next()
	if e, _ := ev.next(t); e.Type != "progress" || e.Data["value"] != 1.0 {
		t.Fatalf("event %s %v, want progress", e.Type, e.Data)
	}
	r.next()
	expect("state", "succeeded", 0)
	checkIdle(t, s)
}

func TestAsyncCancelRunning(t *testing.T) {
	s := asyncStack(t, stackOptions{comfy: comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return 4 * time.Second }}}, nil)
	srv := httptest.NewServer(s.h)
	defer srv.Close()

	// 20 steps of 200 ms: the first progress comes after 200 ms, the end
	// after 4 s, long after the cancel.
	id := submitAsync(t, s, asyncGenerate(`{"prompt": "x", "steps": 20}`))
	ev := openEvents(t, srv, id)
	for {
		e, ok := ev.next(t)
		if !ok {
			t.Fatal("job ended before it ran")
		}
		if e.Type == "state" && e.Data["state"] == "running" {
			break
		}
	}
	rec := s.do(httptest.NewRequest(http.MethodDelete, "/api/jobs/"+id, nil), peer)
	if rec.Code != http.StatusOK && rec.Code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", rec.Code, rec.Body)
	}
	if got := finalState(t, ev.until(t)); got != "cancelled" {
		t.Fatalf("final state %q", got)
	}
	if len(s.comfy.Interrupts()) == 0 {
		t.Error("ComfyUI was not interrupted")
	}
	checkIdle(t, s)
}

// queueRunner models the farm's queue: a job waits for a slot that never
// comes until its context ends.
type queueRunner struct{ waiting chan struct{} }

func (q queueRunner) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	q.waiting <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestAsyncCancelQueued(t *testing.T) {
	q := queueRunner{waiting: make(chan struct{}, 1)}
	s := asyncStack(t, stackOptions{}, q)
	srv := httptest.NewServer(s.h)
	defer srv.Close()

	id := submitAsync(t, s, asyncGenerate(`{"prompt": "x"}`))
	<-q.waiting
	ev := openEvents(t, srv, id)
	if rec := s.do(httptest.NewRequest(http.MethodDelete, "/api/jobs/"+id, nil), other); rec.Code != http.StatusNotFound {
		t.Errorf("another tenant's cancel: %d", rec.Code)
	}
	rec := s.do(httptest.NewRequest(http.MethodDelete, "/api/jobs/"+id, nil), peer)
	if rec.Code != http.StatusOK && rec.Code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", rec.Code, rec.Body)
	}
	evs := ev.until(t)
	if got := finalState(t, evs); got != "cancelled" {
		t.Fatalf("final state %q", got)
	}
	for _, e := range evs {
		if e.Data["state"] == "running" {
			t.Errorf("a queued job ran: %v", evs)
		}
	}
	rec = s.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id+"/result", nil), peer)
	if rec.Code != http.StatusConflict || problemOf(t, rec.Body.Bytes()).Value != "cancelled" {
		t.Errorf("result of a cancelled job: %d %s", rec.Code, rec.Body)
	}
	checkIdle(t, s)
}

func TestAsyncOtherTenant(t *testing.T) {
	s := asyncStack(t, stackOptions{}, nil)
	srv := httptest.NewServer(s.h)
	defer srv.Close()
	id := submitAsync(t, s, asyncGenerate(`{"prompt": "x", "width": 256, "height": 256, "steps": 1}`))
	finalState(t, openEvents(t, srv, id).until(t))
	for _, path := range []string{"/api/jobs/" + id, "/api/jobs/" + id + "/result", "/api/jobs/" + id + "/events", "/api/jobs/no-such-job"} {
		who := other
		if strings.Contains(path, "no-such") {
			who = peer
		}
		rec := s.do(httptest.NewRequest(http.MethodGet, path, nil), who)
		if rec.Code != http.StatusNotFound || problemOf(t, rec.Body.Bytes()).Status != http.StatusNotFound {
			t.Errorf("GET %s from %s: %d %s", path, who, rec.Code, rec.Body)
		}
	}
	checkIdle(t, s)
}
