package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// funcRunner runs each job with the function of the moment.
type funcRunner struct {
	mu  sync.Mutex
	run func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error)
}

func (f *funcRunner) set(run func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.run = run
}

func (f *funcRunner) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	f.mu.Lock()
	run := f.run
	f.mu.Unlock()
	return run(ctx, job)
}

func succeed(context.Context, httpapi.Job) (*comfyui.Result, error) {
	now := time.Now()
	return &comfyui.Result{PromptID: "p", Image: []byte("png"), ContentType: "image/png", Queued: now, Started: now, Finished: now}, nil
}

// runnerStack is the API over a runner of the test's, for the paths a real
// backend cannot be made to take (a panic); its answers are checked against
// the OpenAPI document.
func runnerStack(t *testing.T, src string, cfg httpapi.Config) (http.Handler, *engine.Engine, *funcRunner) {
	t.Helper()
	eng := testEngine(t, src, clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)))
	runner := &funcRunner{run: succeed}
	cfg.Engine, cfg.Runner = eng, runner
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	api, err := httpapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	return openapitest.Handler(t, api), eng, runner
}

func serve(api http.Handler, req *http.Request, peer string) *httptest.ResponseRecorder {
	req.RemoteAddr = peer
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, req)
	return rec
}

// With concurrency 1, every way a synchronous job can end gives its token
// back: the next request is admitted. A panic is answered 500 and counts
// as a failed job.
func TestTokenReleasedOnEveryPath(t *testing.T) {
	api, eng, runner := runnerStack(t, "resource: zimage_generate\nconcurrency: 1\n---\nresource: ddcolor_person\nconcurrency: 1\n",
		httpapi.Config{JobTimeout: 20 * time.Millisecond})
	img := pngBytes(t, 32, 32)
	truncated := img[:len(img)/2] // a sound header: admitted, then refused when decoded
	for _, tc := range []struct {
		name   string
		run    func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error)
		req    func(ctx context.Context) *http.Request
		cancel bool // the client goes away while the job runs
		status int
		failed uint64
	}{
		{name: "success", run: succeed, status: 200},
		{name: "error", run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, &comfyui.ExecutionError{ExceptionType: "torch.OutOfMemoryError", ExceptionMessage: "CUDA out of memory"}
		}, status: 502, failed: 1},
		{name: "backend down", run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, errors.New("dial tcp: connection refused")
		}, status: 502, failed: 1},
		{name: "timeout", run: func(ctx context.Context, _ httpapi.Job) (*comfyui.Result, error) {
			<-ctx.Done() // the job timeout of 20ms
			return nil, ctx.Err()
		}, status: 504, failed: 1},
		{name: "client gone", cancel: true, status: 499, failed: 1},
		{name: "panic", run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			panic("a bug in the runner")
		}, status: 500, failed: 1},
		{name: "bad image after admission", req: func(ctx context.Context) *http.Request {
			return colorizeRequest(t, "/api/ddcolorize/person", truncated, nil).WithContext(ctx)
		}, status: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			run := tc.run
			if tc.cancel {
				run = func(jctx context.Context, _ httpapi.Job) (*comfyui.Result, error) {
					cancel()
					<-jctx.Done()
					return nil, jctx.Err()
				}
			}
			runner.set(run)
			req := generateRequest(`{"prompt": "a lighthouse"}`).WithContext(ctx)
			resource := 2 // zimage_generate in Stats
			if tc.req != nil {
				req, resource = tc.req(ctx), 0
			}
			before := eng.Stats()[resource]
			if rec := serve(api, req, "192.0.2.1:1"); rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			st := eng.Stats()[resource]
			if st.InFlight != 0 || st.Completed != before.Completed+1 || st.Failed != before.Failed+tc.failed {
				t.Fatalf("token not exited with the job's outcome: before %+v, after %+v", before, st)
			}
			runner.set(succeed)
			next := generateRequest(`{"prompt": "a harbour"}`)
			if tc.req != nil {
				next = colorizeRequest(t, "/api/ddcolorize/person", img, nil)
			}
			if rec := serve(api, next, "192.0.2.2:1"); rec.Code != 200 {
				t.Fatalf("the next request, under concurrency 1: %d %s", rec.Code, rec.Body)
			}
		})
	}
}

// blockingRunner holds every job until released, and says when each
// starts.
type blockingRunner struct {
	started chan struct{}
	release chan struct{}
}

func (b *blockingRunner) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	b.started <- struct{}{}
	select {
	case <-b.release:
		return succeed(ctx, job)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// The upload slot is given back once the upload is prepared: with
// --max-uploads 1, two DDColor jobs still run at once.
func TestUploadSlotNotHeldByTheJob(t *testing.T) {
	api, _, runner := runnerStack(t, "resource: ddcolor_person\n", httpapi.Config{MaxUploads: 1})
	b := &blockingRunner{started: make(chan struct{}), release: make(chan struct{})}
	runner.set(b.Run)
	img := pngBytes(t, 32, 32)
	codes := make(chan int, 2)
	for i := range 2 {
		go func() {
			codes <- serve(api, colorizeRequest(t, "/api/ddcolorize/person", img, nil), fmt.Sprintf("192.0.2.%d:1", i+1)).Code
		}()
		select {
		case <-b.started: // the job runs; the next upload must still find a slot
		case code := <-codes:
			t.Fatalf("upload %d answered %d before its job started", i+1, code)
		}
	}
	close(b.release)
	if a, b := <-codes, <-codes; a != 200 || b != 200 {
		t.Fatalf("statuses %d, %d; want 200, 200", a, b)
	}
}

// One client cannot hold more than its share of the upload slots: its
// third slow upload is refused (429) while another client's is read.
func TestUploadSharePerClient(t *testing.T) {
	api, _, _ := runnerStack(t, "resource: ddcolor_person\n", httpapi.Config{MaxUploads: 4, UploadsPerClient: 2})
	img := pngBytes(t, 32, 32)
	var slow []*signalReader
	done := make(chan int, 2)
	for range 2 {
		req := colorizeRequest(t, "/api/ddcolorize/person", img, nil)
		body := &signalReader{reading: make(chan struct{}), release: make(chan struct{}), r: req.Body}
		req.Body = io.NopCloser(body)
		slow = append(slow, body)
		go func() { done <- serve(api, req, "198.51.100.7:1").Code }()
		<-body.reading // the upload holds a slot
	}
	rec := serve(api, colorizeRequest(t, "/api/ddcolorize/person", img, nil), "198.51.100.7:2")
	p := problemOf(t, rec.Body.Bytes())
	if rec.Code != 429 || p.Kind != "uploads" || !strings.Contains(p.Detail, "its share") || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("the client's third upload: %d %+v", rec.Code, p)
	}
	if rec := serve(api, colorizeRequest(t, "/api/ddcolorize/person", img, nil), "203.0.113.9:1"); rec.Code != 200 {
		t.Fatalf("another client's upload: %d %s", rec.Code, rec.Body)
	}
	for _, b := range slow {
		close(b.release)
	}
	if a, b := <-done, <-done; a != 200 || b != 200 {
		t.Fatalf("the slow uploads: %d, %d", a, b)
	}
	if rec := serve(api, colorizeRequest(t, "/api/ddcolorize/person", img, nil), "198.51.100.7:2"); rec.Code != 200 {
		t.Fatalf("the client's upload after its others ended: %d %s", rec.Code, rec.Body)
	}
}

// trickle delivers its body chunk bytes per read, the clock moving every
// read by step: a client sending at chunk/step.
type trickle struct {
	r     io.Reader
	clock *clock.Fake
	chunk int
	step  time.Duration
}

func (t *trickle) Read(p []byte) (int, error) {
	t.clock.Advance(t.step)
	return t.r.Read(p[:min(len(p), t.chunk)])
}

// An upload slower than the minimum rate is cut off with 408 once the
// grace has passed, and its slot is free again; one at the rate passes.
func TestSlowUploadCutOff(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	api, _, _ := runnerStack(t, "resource: ddcolor_person\n", httpapi.Config{
		MaxUploads: 1, UploadMinRate: 1 << 10, UploadGrace: 2 * time.Second, Clock: fake})
	img := pngBytes(t, 64, 64)
	send := func(chunk int, step time.Duration) *httptest.ResponseRecorder {
		req := colorizeRequest(t, "/api/ddcolorize/person", img, nil)
		req.Body = io.NopCloser(&trickle{r: req.Body, clock: fake, chunk: chunk, step: step})
		return serve(api, req, "192.0.2.1:1")
	}
	rec := send(100, time.Second) // 100 B/s against a minimum of 1 KiB/s
	p := problemOf(t, rec.Body.Bytes())
	if rec.Code != http.StatusRequestTimeout || p.Type != "https://sluice.dev/problems/upload-too-slow" ||
		!strings.Contains(p.Detail, "slower than 1024 bytes/s") || rec.Header().Get("Connection") != "close" {
		t.Fatalf("a trickling upload: %d %+v %v", rec.Code, p, rec.Header())
	}
	// The slot (the only one) is free again, and an upload at 2 KiB/s,
	// over the minimum, passes however long it takes.
	if rec := send(2<<10, time.Second); rec.Code != 200 {
		t.Fatalf("an upload at 2 KiB/s: %d %s", rec.Code, rec.Body)
	}
}

// An upload over the minimum rate is still cut off once it has taken
// UploadTimeout in all: a large body at the minimum rate cannot hold a slot
// for a quarter of an hour.
func TestUploadTimeoutCapsTheWholeUpload(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	api, _, _ := runnerStack(t, "resource: ddcolor_person\n", httpapi.Config{
		MaxUploads: 1, UploadMinRate: 10, UploadGrace: time.Second, UploadTimeout: 3 * time.Second, Clock: fake})
	img := pngBytes(t, 64, 64) // with the form, over 60 bytes: over 3 s at 20 B/s
	send := func(chunk int, step time.Duration) *httptest.ResponseRecorder {
		req := colorizeRequest(t, "/api/ddcolorize/person", img, nil)
		req.Body = io.NopCloser(&trickle{r: req.Body, clock: fake, chunk: chunk, step: step})
		return serve(api, req, "192.0.2.1:1")
	}
	// 20 B/s, twice the minimum, but the body takes longer than 3 s.
	rec := send(2, 100*time.Millisecond)
	if p := problemOf(t, rec.Body.Bytes()); rec.Code != http.StatusRequestTimeout || !strings.Contains(p.Detail, "longer than 3s") {
		t.Fatalf("an upload over its whole-time cap: %d %+v", rec.Code, p)
	}
	// The slot is free again; the same body sent fast passes.
	if rec := send(1<<20, time.Millisecond); rec.Code != 200 {
		t.Fatalf("the same upload sent fast: %d %s", rec.Code, rec.Body)
	}
}

// A client that stops sending is cut off by the connection's read
// deadline: its read does not wait for ever. With daily quotas, whose
// fields wrap the response writer, the deadline still reaches the
// connection.
func TestStalledUploadCutOff(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testStalledUploadCutOff(t, httpapi.Config{}) })
	t.Run("with daily quota", func(t *testing.T) {
		testStalledUploadCutOff(t, httpapi.Config{Quota: newFakeQuota(clock.System{}), Tiers: staticTiers{testTiers(10)}})
	})
}

func testStalledUploadCutOff(t *testing.T, cfg httpapi.Config) {
	cfg.UploadMinRate, cfg.UploadGrace = 1<<20, 50*time.Millisecond
	api, _, _ := runnerStack(t, "resource: ddcolor_person\n", cfg)
	srv := httptest.NewServer(api)
	defer srv.Close()
	full := colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 64, 64), nil)
	head, _ := io.ReadAll(io.LimitReader(full.Body, 200))
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(head) // then nothing more: the client stalls
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/api/ddcolorize/person", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", full.Header.Get("Content-Type"))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "upload-too-slow") {
		t.Fatalf("a stalled upload: %d %s", resp.StatusCode, body)
	}
	if cfg.Quota != nil && !strings.HasPrefix(resp.Header.Get("RateLimit"), `"daily";r=50;t=`) {
		t.Fatalf("RateLimit %q", resp.Header.Get("RateLimit"))
	}
}

// A failed job is told the same way on every path: the synchronous answer's
// detail is what an async (or recovered) job's record says.
func TestOneMappingForFailures(t *testing.T) {
	api, _, runner := runnerStack(t, "resource: zimage_generate\n", httpapi.Config{JobTimeout: time.Minute})
	for _, tc := range []struct {
		name   string
		err    error
		status int
		detail string
	}{
		{"execution", &comfyui.ExecutionError{ExceptionType: "RuntimeError", ExceptionMessage: "boom"}, 502, "boom"},
		{"interrupted", fmt.Errorf("%w (prompt p)", comfyui.ErrInterrupted), 502, "the job was interrupted on the image backend"},
		{"timeout", context.DeadlineExceeded, 504, "the job did not finish within 1m0s"},
		{"unavailable", errors.New("dial tcp 10.0.0.5:8188: connection refused"), 502, "the image backend could not run the job"},
		{"busy", &httpapi.BusyError{Reason: "queue full", RetryAfter: time.Second}, 503, "no GPU slot: queue full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runner.set(func(context.Context, httpapi.Job) (*comfyui.Result, error) { return nil, tc.err })
			rec := serve(api, generateRequest(`{"prompt": "a lighthouse"}`), "192.0.2.1:1")
			p := problemOf(t, rec.Body.Bytes())
			if rec.Code != tc.status || !strings.Contains(p.Detail, tc.detail) || strings.Contains(p.Detail, "10.0.0.5") {
				t.Fatalf("synchronous answer %d %+v, want %d saying %q", rec.Code, p, tc.status, tc.detail)
			}
			record := httpapi.JobFailed(context.Background(), slog.New(slog.DiscardHandler), "zimage_generate", tc.err, time.Minute)
			if record == nil || record.Error() != p.Detail {
				t.Fatalf("the async record says %v, the synchronous answer %q", record, p.Detail)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := httpapi.JobFailed(ctx, slog.New(slog.DiscardHandler), "zimage_generate", context.Canceled, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled job's record: %v", err)
	}
}

// The decoding budget reaches the upload check: an image that alone needs
// more memory than the whole budget is refused before admission.
func TestImageBudgetReachesTheUploadCheck(t *testing.T) {
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{image: imageinput.Limits{Budget: imageinput.NewBudget(8<<20, 0)}})
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 4000, 4000), nil), "192.0.2.1:1")
	if p := problemOf(t, rec.Body.Bytes()); rec.Code != http.StatusRequestEntityTooLarge || p.Type != "https://sluice.dev/problems/image-too-big-to-decode" {
		t.Fatalf("a 4000x4000 image against an 8 MiB budget: %d %+v", rec.Code, p)
	}
	if st := s.eng.Stats()[0]; st.Passed != 0 {
		t.Fatalf("the refused upload was admitted: %+v", st)
	}
	small := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 16, 16), nil), "192.0.2.1:1")
	if small.Code != http.StatusOK {
		t.Fatalf("a 16x16 image within it: %d %s", small.Code, small.Body)
	}
}

// A request paced by a throttle rule waits without holding an upload slot:
// with one slot, a second client's upload is read while the first waits.
func TestPacedRequestHoldsNoUploadSlot(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	s := newStack(t, "resource: ddcolor_person\nflow: [{threshold: 1, window: 1s, behavior: throttle, max_queue: 10s}]\n",
		stackOptions{clock: fake, maxUploads: 1, uploadsPerClient: 1})
	img := pngBytes(t, 32, 32)
	send := func(peer string) *httptest.ResponseRecorder {
		return s.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), peer)
	}
	if rec := send("192.0.2.1:1"); rec.Code != 200 {
		t.Fatalf("first request: %d %s", rec.Code, rec.Body)
	}
	codes := make(chan int, 2)
	go func() { codes <- send("192.0.2.2:1").Code }()
	deadline := time.Now().Add(10 * time.Second)
	for fake.Timers() != 1 { // the second request waits for its pacing slot
		if time.Now().After(deadline) {
			t.Fatal("the second request never waited for its pacing slot")
		}
		time.Sleep(time.Millisecond)
	}
	go func() { codes <- send("192.0.2.3:1").Code }()
	for fake.Timers() != 2 {
		select {
		case code := <-codes:
			t.Fatalf("a third client's upload while the second is paced: %d, want it read and paced too", code)
		default:
			if time.Now().After(deadline) {
				t.Fatal("the third request never waited for its pacing slot")
			}
			time.Sleep(time.Millisecond)
		}
	}
	fake.Advance(3 * time.Second)
	for range 2 {
		if code := <-codes; code != 200 {
			t.Fatalf("a paced request: %d", code)
		}
	}
}

// A body that promises more than it sends leaves the rest unread once the
// handler is done with the form; a client that never sends that rest does
// not hold the connection open: it is closed once the grace has passed
// (lifting the read deadline for the job must not leave it lifted).
func TestUnsentBodyDoesNotHoldItsConnection(t *testing.T) {
	api, _, _ := runnerStack(t, "resource: ddcolor_person\n", httpapi.Config{UploadMinRate: 1 << 20, UploadGrace: 50 * time.Millisecond})
	srv := httptest.NewServer(api)
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, err := mw.CreateFormFile("image", "photo.png")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(pngBytes(t, 32, 32))
	mw.Close()
	fmt.Fprintf(conn, "POST /api/ddcolorize/person HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
		mw.FormDataContentType(), form.Len()+100, form.Bytes()) // 100 bytes more are promised, never sent
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a complete form: %d, want 200", resp.StatusCode)
	}
	// The server waits for the rest a while, then gives up on it.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the connection is still open after the grace: %v", err)
	}
}
