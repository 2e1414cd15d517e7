package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/png"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/alibaba/sentinel-golang/util"
	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

// stack is the whole request path: Gin, the engine on sentinel-golang, and
// a fake ComfyUI on loopback.
type stack struct {
	api *httpapi.Server
	// h serves api, checking every answer against the OpenAPI document.
	h      http.Handler
	eng    *engine.Engine
	comfy  *comfyuitest.Server
	client *comfyui.Client
}

type stackOptions struct {
	clock          clock.Clock
	trustedProxies []string
	comfy          comfyuitest.Options
	workflows      *comfyui.Workflows
	image          imageinput.Limits
	// maxUploads and uploadsPerClient: 0 for room for every test's
	// simultaneous uploads from one client (the upload slots have tests of
	// their own).
	maxUploads       int
	uploadsPerClient int
	webhooks         bool
}

func newStack(t testing.TB, src string, o stackOptions) *stack {
	t.Helper()
	if o.clock == nil {
		o.clock = clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	}
	eng := testEngine(t, src, o.clock)
	if o.comfy.JobTime == nil {
		o.comfy.JobTime = func(comfyuitest.Prompt) time.Duration { return 2 * time.Millisecond }
	}
	comfy := comfyuitest.NewServer(o.comfy)
	t.Cleanup(comfy.Close)
	client, err := comfyui.NewClient(comfyui.Config{BaseURL: comfy.URL, Workflows: o.workflows, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	if o.maxUploads == 0 {
		o.maxUploads = 64
	}
	if o.uploadsPerClient == 0 {
		o.uploadsPerClient = o.maxUploads
	}
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: httpapi.Direct{Client: client}, TrustedProxies: o.trustedProxies, Image: o.image,
		MaxUploads: o.maxUploads, UploadsPerClient: o.uploadsPerClient, Webhooks: o.webhooks,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{api: api, h: openapitest.Handler(t, api), eng: eng, comfy: comfy, client: client}
}

// testEngine starts an engine enforcing the rules in src, with its own
// namespace, closed when the test ends. Admission runs on c, and so do
// sentinel-golang's windows: no test depends on how fast the host serves its
// requests.
func testEngine(t testing.TB, src string, c clock.Clock) *engine.Engine {
	t.Helper()
	set, err := rules.ParseSet(t.Name()+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	util.SetClock(clock.Sentinel(c))
	t.Cleanup(func() { util.SetClock(util.NewRealClock()) })
	eng, err := engine.New(engine.Options{Namespace: fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1)), Clock: c, CPU: idleCPU{}}, set)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	return eng
}

type idleCPU struct{}

func (idleCPU) CPUUsage() (float64, error) { return 0.1, nil }

// do serves one request in process from peer (host:port).
func (s *stack) do(req *http.Request, peer string) *httptest.ResponseRecorder {
	req.RemoteAddr = peer
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	return rec
}

func pngBytes(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetGray(x, y, color.Gray{Y: uint8((x + y) % 256)})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// colorizeRequest builds a multipart request; fields maps names to values,
// and a field named image carries data as a file.
func colorizeRequest(t testing.TB, path string, data []byte, fields map[string]string) *http.Request {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if data != nil {
		fw, err := mw.CreateFormFile("image", "photo.png")
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(data)
	}
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	mw.Close()
	req := httptest.NewRequest(http.MethodPost, path, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return req
}

func generateRequest(body string) *http.Request {
	req := httptest.NewRequest(http.MethodPost, "/v1/generate", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return req
}

func problemOf(t testing.TB, body []byte) httpapi.Problem {
	t.Helper()
	var p httpapi.Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("not a problem body: %v: %s", err, body)
	}
	return p
}

func TestFlowAdmitsTwoOfTenSimultaneous(t *testing.T) {
	s := newStack(t, "resource: ddcolor_person\nflow: [{threshold: 2, window: 1s}]\n", stackOptions{})
	srv := httptest.NewServer(s.h)
	defer srv.Close()
	img := pngBytes(t, 64, 48)

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
		resps []*http.Response
	)
	start := make(chan struct{})
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := colorizeRequest(t, srv.URL+"/api/ddcolorize/person", img, nil)
			req.RequestURI = ""
			<-start
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			resp.Body = io.NopCloser(bytes.NewReader(body))
			mu.Lock()
			codes[resp.StatusCode]++
			resps = append(resps, resp)
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if codes[200] != 2 || codes[429] != 8 {
		t.Fatalf("status counts %v; want 2×200 and 8×429", codes)
	}
	for _, resp := range resps {
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 200 {
			if resp.Header.Get("Content-Type") != "image/png" || !strings.Contains(resp.Header.Get("Server-Timing"), "run;dur=") {
				t.Errorf("admitted response headers: %v", resp.Header)
			}
			if _, err := png.Decode(bytes.NewReader(body)); err != nil {
				t.Errorf("admitted response is not a PNG: %v", err)
			}
			continue
		}
		if resp.Header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After = %q, want 1", resp.Header.Get("Retry-After"))
		}
		if got := resp.Header.Get("RateLimit-Policy"); got != `"flow";q=2;w=1` {
			t.Errorf("RateLimit-Policy = %q", got)
		}
		if got := resp.Header.Get("RateLimit"); got != `"flow";r=0;t=1` {
			t.Errorf("RateLimit = %q", got)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("Content-Type = %q", ct)
		}
		p := problemOf(t, body)
		if p.Type != "https://iana.org/assignments/http-problem-types#quota-exceeded" || p.Status != 429 ||
			p.Resource != "ddcolor_person" || p.Rule != "ddcolor_person/flow[0]" || p.RetryAfter != 1 || p.Detail == "" || p.Title == "" {
			t.Errorf("problem = %+v", p)
		}
	}
	if st := s.eng.Stats()[0]; st.Passed != 2 || st.Refused[engine.KindFlow] != 8 || st.Completed != 2 {
		t.Errorf("engine stats = %+v", st)
	}
}

func TestSizeItemRefusesWhileSmallerPasses(t *testing.T) {
	s := newStack(t, `resource: ddcolor_building
hotspot:
  - {param: size, threshold: 10, window: 60s, items: {"1280": 2}}
`, stackOptions{})
	img := pngBytes(t, 32, 32)
	for i := range 3 {
		rec := s.do(colorizeRequest(t, "/api/ddcolorize/building", img, map[string]string{"size": "1280"}), "192.0.2.1:5000")
		want := 200
		if i == 2 {
			want = 429
		}
		if rec.Code != want {
			t.Fatalf("1280 request %d: %d, want %d: %s", i+1, rec.Code, want, rec.Body)
		}
		if i == 2 {
			p := problemOf(t, rec.Body.Bytes())
			if p.Kind != "hotspot" || p.Param != "size" || p.Value != "1280" || rec.Header().Get("RateLimit-Policy") != `"hotspot-size";q=2;w=60` {
				t.Fatalf("refusal %+v, policy %q", p, rec.Header().Get("RateLimit-Policy"))
			}
		}
	}
	for i := range 3 {
		if rec := s.do(colorizeRequest(t, "/api/ddcolorize/building", img, map[string]string{"size": "512"}), "192.0.2.1:5000"); rec.Code != 200 {
			t.Fatalf("512 request %d: %d: %s", i+1, rec.Code, rec.Body)
		}
	}
	// The job got the size the caller asked for.
	last := s.comfy.Prompts()[len(s.comfy.Prompts())-1]
	if size, _ := last.Prompt.Int("DDColor_Colorize", "model_input_size"); size != 512 {
		t.Errorf("model_input_size = %d, want 512", size)
	}
}

func TestVIPGetsBiggerLimit(t *testing.T) {
	s := newStack(t, `resource: ddcolor_person
hotspot:
  - {param: origin, threshold: 1, window: 60s, items: {"203.0.113.7": 3}}
`, stackOptions{})
	img := pngBytes(t, 32, 32)
	count := func(peer string) (ok int) {
		for range 5 {
			if rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), peer); rec.Code == 200 {
				ok++
			}
		}
		return ok
	}
	if vip, other := count("203.0.113.7:4000"), count("198.51.100.20:4000"); vip != 3 || other != 1 {
		t.Fatalf("admitted VIP %d (want 3), other %d (want 1)", vip, other)
	}
}

func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	const src = "resource: ddcolor_person\nhotspot: [{param: origin, threshold: 1, window: 60s}]\n"
	img := pngBytes(t, 32, 32)
	spoofed := func(s *stack, xff string) *httptest.ResponseRecorder {
		req := colorizeRequest(t, "/api/ddcolorize/person", img, nil)
		req.Header.Set("X-Forwarded-For", xff)
		return s.do(req, "198.51.100.9:7000")
	}

	t.Run("untrusted peer", func(t *testing.T) {
		s := newStack(t, src, stackOptions{})
		if rec := spoofed(s, "203.0.113.50"); rec.Code != 200 {
			t.Fatalf("first request: %d", rec.Code)
		}
		rec := spoofed(s, "203.0.113.51") // a new forged address buys nothing
		if rec.Code != 429 {
			t.Fatalf("second request with another X-Forwarded-For: %d, want 429", rec.Code)
		}
		if p := problemOf(t, rec.Body.Bytes()); p.Value != "198.51.100.9" {
			t.Fatalf("origin counted as %q, want the peer 198.51.100.9", p.Value)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		s := newStack(t, src, stackOptions{trustedProxies: []string{"198.51.100.0/24"}})
		if a, b := spoofed(s, "203.0.113.50"), spoofed(s, "203.0.113.51"); a.Code != 200 || b.Code != 200 {
			t.Fatalf("behind a trusted proxy, two clients: %d, %d; want 200, 200", a.Code, b.Code)
		}
		if rec := spoofed(s, "203.0.113.50"); rec.Code != 429 || problemOf(t, rec.Body.Bytes()).Value != "203.0.113.50" {
			t.Fatalf("the forwarded client's second request: %d %s", rec.Code, rec.Body)
		}
	})
}

func TestWarmUpAdmitsFewerAtFirst(t *testing.T) {
	s := newStack(t, `resource: ddcolor_building
flow: [{threshold: 12, warm_up: {period: 60s, cold_factor: 3}}]
---
resource: ddcolor_person
flow: [{threshold: 12}]
`, stackOptions{})
	img := pngBytes(t, 32, 32)
	admitted := func(path string) int {
		var (
			wg sync.WaitGroup
			mu sync.Mutex
			ok int
		)
		for range 20 {
			req := colorizeRequest(t, path, img, map[string]string{"size": "512"})
			wg.Add(1)
			go func() {
				defer wg.Done()
				if rec := s.do(req, "192.0.2.1:1000"); rec.Code == 200 {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return ok
	}
	cold, warm := admitted("/api/ddcolorize/building"), admitted("/api/ddcolorize/person")
	if warm != 12 {
		t.Fatalf("without warm-up %d of 20 admitted, want 12", warm)
	}
	if cold < 1 || cold > 6 {
		t.Fatalf("cold start admitted %d of 20, want about 12/3 = 4", cold)
	}
}

func TestBanStartsAfterRefusalsAndEnds(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	s := newStack(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
ban: {blocks: 3, within: 10s, for: 5m}
`, stackOptions{clock: clock})
	img := pngBytes(t, 32, 32)
	send := func() *httptest.ResponseRecorder {
		return s.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), "192.0.2.99:1234")
	}
	if rec := send(); rec.Code != 200 {
		t.Fatalf("first request %d", rec.Code)
	}
	for i := range 3 {
		if rec := send(); rec.Code != 429 || problemOf(t, rec.Body.Bytes()).Kind != "hotspot" {
			t.Fatalf("refusal %d: %d %s", i+1, rec.Code, rec.Body)
		}
	}
	rec := send()
	p := problemOf(t, rec.Body.Bytes())
	if rec.Code != 429 || p.Kind != "ban" || p.RetryAfter != 300 || rec.Header().Get("Retry-After") != "300" {
		t.Fatalf("after 3 refusals: %d %+v", rec.Code, p)
	}
	// Banned, the client is turned away before its upload is even read: not
	// an image, yet the answer is the ban.
	junk := s.do(colorizeRequest(t, "/api/ddcolorize/person", []byte("not an image"), nil), "192.0.2.99:1234")
	if p := problemOf(t, junk.Body.Bytes()); junk.Code != 429 || p.Kind != "ban" {
		t.Fatalf("a banned client's upload was read: %d %+v", junk.Code, p)
	}
	clock.Advance(5 * time.Minute)
	if rec := send(); rec.Code != 200 {
		t.Fatalf("after 5m the ban and the hotspot window are over, yet %d %s", rec.Code, rec.Body)
	}
}

func TestConcurrencyAnswers503(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	s := newStack(t, "resource: zimage_generate\nconcurrency: 1\n", stackOptions{comfy: comfyuitest.Options{
		JobTime: func(comfyuitest.Prompt) time.Duration { close(started); <-release; return 0 },
	}})
	first := make(chan int)
	go func() { first <- s.do(generateRequest(`{"prompt": "a lighthouse"}`), "192.0.2.1:1").Code }()
	<-started // the first job runs: it holds the only slot
	rec := s.do(generateRequest(`{"prompt": "a harbour"}`), "192.0.2.2:1")
	close(release)
	if code := <-first; code != 200 {
		t.Fatalf("first job %d", code)
	}
	p := problemOf(t, rec.Body.Bytes())
	if rec.Code != 503 || p.Type != "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity" || p.Kind != "concurrency" {
		t.Fatalf("second job: %d %+v", rec.Code, p)
	}
	if got := rec.Header().Get("RateLimit-Policy"); got != `"concurrency";q=1;qu="concurrent-requests"` {
		t.Errorf("RateLimit-Policy = %q", got)
	}
}

func TestExitAtJobEndWithRealTime(t *testing.T) {
	var fail atomic.Bool
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{clock: clock.System{}, comfy: comfyuitest.Options{
		JobTime: func(comfyuitest.Prompt) time.Duration { return 150 * time.Millisecond },
		Fail: func(comfyuitest.Prompt) *comfyuitest.ExecutionFailure {
			if fail.Load() {
				return &comfyuitest.ExecutionFailure{ExceptionType: "torch.OutOfMemoryError", ExceptionMessage: "CUDA out of memory"}
			}
			return nil
		},
	}})
	img := pngBytes(t, 32, 32)
	if rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), "192.0.2.1:1"); rec.Code != 200 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	st := s.eng.Stats()[0]
	if st.Completed != 1 || st.InFlight != 0 || st.AvgRTMillis < 150 {
		t.Fatalf("after one 150ms job: %+v", st)
	}
	fail.Store(true)
	// Another photo: the same one would be served from ComfyUI's cache (its
	// upload has the same name, by content) without running.
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 24), nil), "192.0.2.1:1")
	if p := problemOf(t, rec.Body.Bytes()); rec.Code != 502 || !strings.Contains(p.Detail, "CUDA out of memory") {
		t.Fatalf("failed job: %d %+v", rec.Code, p)
	}
	if st := s.eng.Stats()[0]; st.Failed != 1 || st.Completed != 2 {
		t.Fatalf("a failed job must exit with its error: %+v", st)
	}
}

// ComfyUI 0.3.64 refuses an unknown node class as invalid_prompt with an
// empty node_errors object: the caller reads a clean message and the same
// empty object, not null.
func TestComfyUIUnknownNodeReachesCaller(t *testing.T) {
	bad := `{"1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}},
 "2": {"class_type": "DDColor_Colorize", "inputs": {"image": ["1", 0], "model_input_size": 512, "checkpoint": "ddcolor_modelscope.pth"}},
 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ddcolor/person"}},
 "4": {"class_type": "Upscale4000", "inputs": {}}}`
	wfs, err := comfyui.LoadWorkflows(fstest.MapFS{"ddcolor_person.json": {Data: []byte(bad)}})
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{workflows: wfs})
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 32), nil), "192.0.2.1:1")
	if rec.Code != 502 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var body struct {
		Detail     string          `json:"detail"`
		NodeErrors json.RawMessage `json:"node_errors"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(body.Detail, "invalid_prompt: Cannot execute because node Upscale4000 does not exist. (Node ID '#4')") {
		t.Errorf("detail %q", body.Detail)
	}
	if string(body.NodeErrors) != "{}" {
		t.Errorf("node_errors %s, want {} as ComfyUI sent", body.NodeErrors)
	}
}

func TestComfyUIValidationErrorReachesCaller(t *testing.T) {
	bad := `{"1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}},
 "2": {"class_type": "DDColor_Colorize", "inputs": {"image": ["1", 0], "model_input_size": 512, "checkpoint": "ddcolor_missing.pth"}},
 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ddcolor/person"}}}`
	wfs, err := comfyui.LoadWorkflows(fstest.MapFS{"ddcolor_person.json": {Data: []byte(bad)}})
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{workflows: wfs})
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 32), nil), "192.0.2.1:1")
	if rec.Code != 502 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var body struct {
		Type       string `json:"type"`
		Detail     string `json:"detail"`
		NodeErrors map[string]struct {
			ClassType string `json:"class_type"`
			Errors    []struct {
				Type      string         `json:"type"`
				ExtraInfo map[string]any `json:"extra_info"`
			} `json:"errors"`
		} `json:"node_errors"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	ne := body.NodeErrors["2"]
	if ne.ClassType != "DDColor_Colorize" || len(ne.Errors) == 0 || ne.Errors[0].Type != "value_not_in_list" || ne.Errors[0].ExtraInfo["input_name"] != "checkpoint" {
		t.Fatalf("node errors not passed on: %s", rec.Body)
	}
	if !strings.Contains(body.Detail, "checkpoint") {
		t.Errorf("detail does not name the input: %s", body.Detail)
	}
}

func TestBadInput(t *testing.T) {
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{image: imageinput.Limits{MaxBytes: 200_000, MaxPixels: 4_000_000}})
	var gifBuf bytes.Buffer
	gif.Encode(&gifBuf, image.NewPaletted(image.Rect(0, 0, 4, 4), []color.Color{color.Black}), nil)
	good := pngBytes(t, 40, 30)
	// A PNG whose header claims 100000×100000 pixels.
	bomb := append([]byte(nil), good[:33]...)
	copy(bomb[16:24], []byte{0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0})
	crcFix(bomb)
	notMultipart := httptest.NewRequest(http.MethodPost, "/api/ddcolorize/person", strings.NewReader("hello"))
	notMultipart.Header.Set("Content-Type", "text/plain")

	cases := []struct {
		name   string
		req    *http.Request
		status int
		detail string
	}{
		{"gif", colorizeRequest(t, "/api/ddcolorize/person", gifBuf.Bytes(), nil), 415, "image/gif"},
		{"text", colorizeRequest(t, "/api/ddcolorize/person", []byte("just some text"), nil), 415, "accepted formats are PNG, JPEG and WebP"},
		{"truncated png", colorizeRequest(t, "/api/ddcolorize/person", good[:len(good)/2], nil), 400, "png"},
		{"pixel bomb", colorizeRequest(t, "/api/ddcolorize/person", bomb, nil), 413, "100000x100000"},
		{"too many bytes", colorizeRequest(t, "/api/ddcolorize/person", bytes.Repeat([]byte{0x89}, 300_000), nil), 413, "larger than"},
		{"missing image", colorizeRequest(t, "/api/ddcolorize/person", nil, map[string]string{"size": "512"}), 400, "no field image"},
		{"bad size", colorizeRequest(t, "/api/ddcolorize/person", good, map[string]string{"size": "300"}), 400, "size must be one of 256, 512, 768, 1024, 1280"},
		{"unknown field", colorizeRequest(t, "/api/ddcolorize/person", good, map[string]string{"colour": "red"}), 400, `unknown form field "colour"`},
		{"not multipart", notMultipart, 415, "multipart/form-data"},
		{"prompt missing", generateRequest(`{"width": 512}`), 400, "prompt is required"},
		{"prompt too long", generateRequest(`{"prompt": "` + strings.Repeat("a", 2001) + `"}`), 400, "2001 characters"},
		{"width out of range", generateRequest(`{"prompt": "x", "width": 4000}`), 400, "width must be a multiple of 16 between 256 and 2048; got 4000"},
		{"steps out of range", generateRequest(`{"prompt": "x", "steps": 0}`), 400, "steps must be between 1 and 50"},
		{"unknown json field", generateRequest(`{"prompt": "x", "cfg": 7}`), 400, `unknown field "cfg"`},
		{"wrong json type", generateRequest(`{"prompt": 5}`), 400, "prompt must be a JSON string; got the number 5"},
		{"wrong json type, integer", generateRequest(`{"prompt": "x", "width": 512.5}`), 400, "width must be a JSON integer; got the number 512.5"},
		{"key in another case", generateRequest(`{"PROMPT": "x"}`), 400, `unknown field "PROMPT"`},
		{"key in mixed case", generateRequest(`{"prompt": "x", "Width": 512}`), 400, `unknown field "Width"`},
		{"not json", func() *http.Request {
			r := generateRequest(`prompt=x`)
			r.Header.Set("Content-Type", "text/plain")
			return r
		}(), 415, "application/json"},
		{"unknown endpoint", httptest.NewRequest(http.MethodPost, "/api/ddcolorize/cat", nil), 404, "no endpoint"},
		{"wrong method", httptest.NewRequest(http.MethodGet, "/v1/generate", nil), 405, "GET is not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := s.do(tc.req, "192.0.2.1:1")
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if p := problemOf(t, rec.Body.Bytes()); !strings.Contains(p.Detail, tc.detail) || p.Status != tc.status {
				t.Fatalf("detail %q does not say %q", p.Detail, tc.detail)
			} else if strings.Contains(p.Detail, "generateRequest") || strings.Contains(p.Detail, "Go struct") {
				t.Fatalf("detail %q names a Go type", p.Detail)
			}
		})
	}
	if n := len(s.comfy.Prompts()); n != 0 {
		t.Fatalf("bad input reached ComfyUI %d times", n)
	}
	// Everything the header shows is checked before admission; only the
	// truncated PNG, whose header is sound, was admitted before its data was
	// decoded (decoding is the costly part the rules guard).
	if st := s.eng.Stats()[0]; st.Passed != 1 {
		t.Fatalf("bad input spent %d admissions, want 1: %+v", st.Passed, st)
	}
}

func TestLargeImageScaledDown(t *testing.T) {
	s := newStack(t, "resource: ddcolor_building\n", stackOptions{})
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/building", pngBytes(t, 3000, 1500), nil), "192.0.2.1:1")
	if rec.Code != 200 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	ups := s.comfy.Uploads()
	if len(ups) != 1 {
		t.Fatalf("%d uploads", len(ups))
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(ups[0].Data))
	if err != nil || cfg.Width != 1280 || cfg.Height != 640 {
		t.Fatalf("ComfyUI received %dx%d (%v), want 1280x640", cfg.Width, cfg.Height, err)
	}
}

func TestGenerateBindsParameters(t *testing.T) {
	s := newStack(t, "resource: zimage_generate\n", stackOptions{})
	rec := s.do(generateRequest(`{"prompt": "a red kite", "width": 512, "height": 768, "steps": 4, "seed": 7}`), "192.0.2.1:1")
	if rec.Code != 200 || rec.Header().Get("X-Sluice-Seed") != "7" {
		t.Fatalf("%d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	cfg, err := png.DecodeConfig(rec.Body)
	if err != nil || cfg.Width != 512 || cfg.Height != 768 {
		t.Fatalf("result %dx%d (%v), want 512x768", cfg.Width, cfg.Height, err)
	}
	p := s.comfy.Prompts()[0].Prompt
	text, _ := p.String("CLIPTextEncode", "text")
	steps, _ := p.Int("KSampler", "steps")
	seed, _ := p.Int("KSampler", "seed")
	if text != "a red kite" || steps != 4 || seed != 7 {
		t.Fatalf("bound workflow: text %q steps %d seed %d", text, steps, seed)
	}
}

func TestClientGoneInterruptsJob(t *testing.T) {
	started := make(chan struct{})
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{comfy: comfyuitest.Options{
		JobTime: func(comfyuitest.Prompt) time.Duration { close(started); return time.Minute },
	}})
	ctx, cancel := context.WithCancel(context.Background())
	req := colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 32), nil).WithContext(ctx)
	done := make(chan int)
	go func() { done <- s.do(req, "192.0.2.1:1").Code }()
	<-started
	cancel()
	if code := <-done; code != 499 {
		t.Fatalf("status %d, want 499", code)
	}
	if len(s.comfy.Interrupts()) == 0 && len(s.comfy.Deletes()) == 0 {
		t.Fatal("ComfyUI was not told to drop the job")
	}
	if st := s.eng.Stats()[0]; st.InFlight != 0 || st.Completed != 1 {
		t.Fatalf("token not exited: %+v", st)
	}
}

// crcFix rewrites the IHDR chunk's CRC after the header was edited.
func crcFix(b []byte) {
	crc := crc32IEEE(b[12:29])
	b[29], b[30], b[31], b[32] = byte(crc>>24), byte(crc>>16), byte(crc>>8), byte(crc)
}

func crc32IEEE(p []byte) uint32 {
	crc := ^uint32(0)
	for _, v := range p {
		crc ^= uint32(v)
		for range 8 {
			if crc&1 == 1 {
				crc = crc>>1 ^ 0xedb88320
			} else {
				crc >>= 1
			}
		}
	}
	return ^crc
}

// engineSeq gives every engine of the test binary its own sentinel-golang
// namespace, so windows of earlier tests (or earlier -count runs) do not
// leak into later ones.
var engineSeq atomic.Int64

// signalReader reports its first Read, then blocks until released: an
// upload still arriving.
type signalReader struct {
	first   sync.Once
	reading chan struct{}
	release chan struct{}
	r       io.Reader
}

func (s *signalReader) Read(p []byte) (int, error) {
	s.first.Do(func() { close(s.reading) })
	<-s.release
	return s.r.Read(p)
}

func TestUploadsAreBounded(t *testing.T) {
	s := newStack(t, "resource: ddcolor_person\n", stackOptions{maxUploads: 1})
	slow := colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 32), nil)
	body := &signalReader{reading: make(chan struct{}), release: make(chan struct{}), r: slow.Body}
	slow.Body = io.NopCloser(body)
	done := make(chan int)
	go func() { done <- s.do(slow, "192.0.2.1:1").Code }()
	<-body.reading // the first upload holds the only place
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 32), nil), "192.0.2.2:1")
	if p := problemOf(t, rec.Body.Bytes()); rec.Code != 503 || !strings.Contains(p.Detail, "already reading 1 uploads") || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("second upload: %d %+v", rec.Code, p)
	}
	close(body.release)
	if code := <-done; code != 200 {
		t.Fatalf("first upload: %d", code)
	}
	if rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 32, 32), nil), "192.0.2.2:1"); rec.Code != 200 {
		t.Fatalf("after the first finished: %d %s", rec.Code, rec.Body)
	}
}

// busyRunner answers every job as a full farm would.
type busyRunner struct{ err *httpapi.BusyError }

func (b busyRunner) Run(context.Context, httpapi.Job) (*comfyui.Result, error) { return nil, b.err }

func TestBusyFarm(t *testing.T) {
	eng := testEngine(t, "resource: zimage_generate\n", clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)))
	for _, tc := range []struct {
		err    *httpapi.BusyError
		status int
		retry  string
	}{
		{&httpapi.BusyError{Reason: "queue full", RetryAfter: 2500 * time.Millisecond}, 503, "3"},
		{&httpapi.BusyError{Reason: "2 jobs in flight", RetryAfter: time.Second, OverShare: true}, 429, "1"},
	} {
		api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: busyRunner{tc.err}})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		req := generateRequest(`{"prompt": "a lighthouse"}`)
		req.RemoteAddr = "192.0.2.1:1"
		api.ServeHTTP(rec, req)
		p := problemOf(t, rec.Body.Bytes())
		if rec.Code != tc.status || rec.Header().Get("Retry-After") != tc.retry || p.Kind != "queue" || !strings.Contains(p.Detail, tc.err.Reason) {
			t.Errorf("%+v: %d retry %q %+v", tc.err, rec.Code, rec.Header().Get("Retry-After"), p)
		}
	}
	if st := eng.Stats()[2]; st.InFlight != 0 || st.Completed != 2 {
		t.Fatalf("tokens not exited: %+v", st)
	}
}

// fullFarm refuses every job, and says so before an async one is taken.
type fullFarm struct{ busyRunner }

func (f fullFarm) Precheck(httpapi.Job) error { return f.err }

func TestAsyncRefusedAtOnceByAFullFarm(t *testing.T) {
	eng := testEngine(t, "resource: zimage_generate\n", clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)))
	busy := &httpapi.BusyError{Reason: "2 jobs of this client already running or waiting", RetryAfter: time.Second, OverShare: true}
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: fullFarm{busyRunner{busy}}})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	rec := httptest.NewRecorder()
	req := generateRequest(`{"prompt": "a lighthouse"}`)
	req.URL.RawQuery = "mode=async"
	req.RemoteAddr = "192.0.2.1:1"
	api.ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests || problemOf(t, rec.Body.Bytes()).Kind != "queue" {
		t.Fatalf("async with a full farm: %d %s, want 429 at once", rec.Code, rec.Body)
	}
	if st := eng.Stats()[2]; st.InFlight != 0 {
		t.Fatalf("token not exited: %+v", st)
	}
}

// A client refused because it already has its share of jobs in flight
// caused that itself: it counts toward its ban. A full queue does not.
func TestOverShareCountsTowardTheBan(t *testing.T) {
	for _, tc := range []struct {
		err        *httpapi.BusyError
		wantBanned bool
	}{
		{&httpapi.BusyError{Reason: "2 jobs in flight", RetryAfter: time.Second, OverShare: true}, true},
		{&httpapi.BusyError{Reason: "queue full", RetryAfter: time.Second}, false},
	} {
		eng := testEngine(t, "resource: zimage_generate\nban: {blocks: 2, within: 10s, for: 1m}\n", clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)))
		api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: busyRunner{tc.err}})
		if err != nil {
			t.Fatal(err)
		}
		var last *httptest.ResponseRecorder
		for range 3 {
			last = httptest.NewRecorder()
			req := generateRequest(`{"prompt": "a lighthouse"}`)
			req.RemoteAddr = "192.0.2.1:1"
			api.ServeHTTP(last, req)
		}
		banned := problemOf(t, last.Body.Bytes()).Kind == "ban"
		if banned != tc.wantBanned {
			t.Errorf("%s: third request %d %s; banned %v, want %v", tc.err.Reason, last.Code, last.Body, banned, tc.wantBanned)
		}
		api.Close()
	}
}
