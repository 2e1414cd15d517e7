package httpapi_test

import (
	"context"
	"image"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
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
	s.api, s.h = api, openapitest.Handler(t, api)
	return s, done
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
	if size, err := s.comfy.CheckOutput(rec.Body.Bytes(), rec.Header().Get("X-Sluice-Prompt-Id")); err != nil || size != image.Rect(0, 0, 320, 256) {
		t.Fatalf("the result (320x256 expected, got %v): %v", size, err)
	}
}

// scriptedRunner runs its first job as first says (nil: on ComfyUI), and
// the others on ComfyUI.
type scriptedRunner struct {
	httpapi.Runner
	first   func(ctx context.Context) (*comfyui.Result, error)
	started chan struct{}
	calls   atomic.Int64
}

func (r *scriptedRunner) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	if r.calls.Add(1) == 1 {
		close(r.started)
		if r.first != nil {
			return r.first(ctx)
		}
	}
	return r.Runner.Run(ctx, job)
}

// TestAsyncTokenFreedOnEveryPath ends an async job under concurrency 1 in
// each way it can end, and checks that its token is free afterwards: the
// next job is admitted (503 while the token leaks) and runs. A panic fails
// the job with a clear message and leaves the process up. (An async job has no client to lose: it
// runs detached from the request.)
func TestAsyncTokenFreedOnEveryPath(t *testing.T) {
	const oneAtATime = "resource: zimage_generate\nconcurrency: 1\n"
	body := `{"prompt": "a lighthouse", "width": 256, "height": 256}`
	waitEnd := func(ctx context.Context) (*comfyui.Result, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	for _, tc := range []struct {
		name    string
		first   func(ctx context.Context) (*comfyui.Result, error)
		cancel  bool // DELETE the job once it runs
		want    jobs.State
		wantErr string // when not empty
	}{
		{name: "success", want: jobs.Succeeded},
		{name: "error", first: func(context.Context) (*comfyui.Result, error) {
			return nil, &comfyui.ExecutionError{ExceptionMessage: "CUDA out of memory"}
		}, want: jobs.Failed},
		{name: "timeout", first: func(context.Context) (*comfyui.Result, error) {
			return nil, context.DeadlineExceeded
		}, want: jobs.Failed},
		{name: "cancel", first: waitEnd, cancel: true, want: jobs.Cancelled},
		{name: "backend removed", first: func(context.Context) (*comfyui.Result, error) {
			return nil, &httpapi.BusyError{Reason: "no backend", RetryAfter: time.Second}
		}, want: jobs.Failed},
		{name: "panic", first: func(context.Context) (*comfyui.Result, error) {
			panic("a bug in the runner")
		}, want: jobs.Failed, wantErr: jobs.ErrPanicked.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &scriptedRunner{first: tc.first, started: make(chan struct{})}
			s, finished := resultStack(t, oneAtATime, func(s *stack) httpapi.Runner {
				r.Runner = httpapi.Direct{Client: s.client}
				return r
			})
			id := submitAsync(t, s, asyncGenerate(body))
			if tc.cancel {
				<-r.started
				if rec := s.do(httptest.NewRequest(http.MethodDelete, "/api/jobs/"+id, nil), peer); rec.Code != http.StatusOK && rec.Code != http.StatusAccepted {
					t.Fatalf("cancel: %d %s", rec.Code, rec.Body)
				}
			}
			if j := <-finished; j.ID != id || j.State != tc.want || (tc.wantErr != "" && j.Error != tc.wantErr) {
				t.Fatalf("the first job ended %s (%q), want %s", j.State, j.Error, tc.want)
			}
			checkIdle(t, s)
			next := submitAsync(t, s, asyncGenerate(body))
			if j := <-finished; j.ID != next || j.State != jobs.Succeeded {
				t.Fatalf("the next job: %s %q", j.State, j.Error)
			}
			checkIdle(t, s)
		})
	}
}
