package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine/jobs"
)

// resultStack is the real stack whose async jobs keep their results in a
// folder, as under sluice serve; finished hears of every job that ends.
func resultStack(t *testing.T, rules string, runner func(*stack) httpapi.Runner) (s *stack, finished <-chan jobs.Job) {
	t.Helper()
	s = newStack(t, rules, stackOptions{})
	results, err := jobs.NewDirResults(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan jobs.Job, 8)
	m := jobs.New(jobs.Config{Results: results, OnFinish: func(j jobs.Job) { done <- j }})
	t.Cleanup(m.Close)
	var r httpapi.Runner = httpapi.Direct{Client: s.client}
	if runner != nil {
		r = runner(s)
	}
	api, err := httpapi.New(httpapi.Config{Engine: s.eng, Runner: r, AsyncJobs: m, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s.api = api
	return s, done
}

// comfyOutput fetches what the fake ComfyUI produced for a prompt: the
// first image of its history, through /view.
func comfyOutput(t *testing.T, comfyURL, promptID string) []byte {
	t.Helper()
	resp, err := http.Get(comfyURL + "/history/" + promptID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct{ Filename, Subfolder, Type string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&hist); err != nil {
		t.Fatal(err)
	}
	for _, out := range hist[promptID].Outputs {
		for _, img := range out.Images {
			q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}
			resp, err := http.Get(comfyURL + "/view?" + q.Encode())
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("/view: %d %v", resp.StatusCode, err)
			}
			return b
		}
	}
	t.Fatalf("ComfyUI has no output for prompt %s", promptID)
	return nil
}

// samePNG decodes got and want and compares their sizes and pixels.
func samePNG(t *testing.T, got, want []byte, w, h int) {
	t.Helper()
	gi, err := png.Decode(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("the result (%d bytes) is not a PNG: %v", len(got), err)
	}
	wi, err := png.Decode(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	if gi.Bounds() != image.Rect(0, 0, w, h) || gi.Bounds() != wi.Bounds() {
		t.Fatalf("result %v, ComfyUI produced %v, want %dx%d", gi.Bounds(), wi.Bounds(), w, h)
	}
	for y := range h {
		for x := range w {
			if gi.At(x, y) != wi.At(x, y) {
				t.Fatalf("pixel (%d,%d): result %v, ComfyUI produced %v", x, y, gi.At(x, y), wi.At(x, y))
			}
		}
	}
}

// TestAsyncResultServedFromResultStore: with the results in a folder, GET
// /result answers the image ComfyUI produced, not an empty body.
func TestAsyncResultServedFromResultStore(t *testing.T) {
	s, finished := resultStack(t, asyncRules, nil)
	id := submitAsync(t, s, asyncGenerate(`{"prompt": "a lighthouse", "width": 320, "height": 256, "seed": 3}`))
	if j := <-finished; j.ID != id || j.State != jobs.Succeeded {
		t.Fatalf("job %s: %s %q", j.ID, j.State, j.Error)
	}
	rec := s.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id+"/result", nil), peer)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "image/png" {
		t.Fatalf("result: %d %v", rec.Code, rec.Header())
	}
	samePNG(t, rec.Body.Bytes(), comfyOutput(t, s.comfy.URL, rec.Header().Get("X-Sluice-Prompt-Id")), 320, 256)
}

// panicOnce panics on its first job, while the job holds its admission
// token, and runs the others.
type panicOnce struct {
	httpapi.Runner
	calls atomic.Int64
}

func (p *panicOnce) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	if p.calls.Add(1) == 1 {
		panic("a bug in the runner")
	}
	return p.Runner.Run(ctx, job)
}

// TestAsyncPanicFreesTheToken runs an async job whose runner panics under
// concurrency 1: the job fails with a clear message, the process goes on,
// and the token is free, so the next job is admitted and runs.
func TestAsyncPanicFreesTheToken(t *testing.T) {
	const oneAtATime = "resource: zimage_generate\nconcurrency: 1\n"
	s, finished := resultStack(t, oneAtATime, func(s *stack) httpapi.Runner {
		return &panicOnce{Runner: httpapi.Direct{Client: s.client}}
	})
	body := `{"prompt": "a lighthouse", "width": 256, "height": 256}`
	id := submitAsync(t, s, asyncGenerate(body))
	if j := <-finished; j.ID != id || j.State != jobs.Failed || j.Error != jobs.ErrPanicked.Error() {
		t.Fatalf("the panicking job: %s %q", j.State, j.Error)
	}
	next := submitAsync(t, s, asyncGenerate(body)) // 503 while the token leaks
	if j := <-finished; j.ID != next || j.State != jobs.Succeeded {
		t.Fatalf("the next job: %s %q", j.State, j.Error)
	}
	checkIdle(t, s)
}
