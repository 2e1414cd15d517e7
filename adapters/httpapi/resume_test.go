package httpapi_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"testing"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	"github.com/sluicehq/sluice/engine/jobs"
)

// recordRunner keeps the job it is given and answers with an image.
type recordRunner struct{ got chan httpapi.Job }

func (r recordRunner) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	job.OnStarted("http://gpu1:8188", "p2")
	r.got <- job
	return &comfyui.Result{PromptID: "p2", Image: []byte("png"), ContentType: "image/png"}, nil
}

// TestAsyncColorizeResumesFromItsJournal: a DDColor job still waiting for a
// slot when the gateway stops is run by the next one with the same
// prepared image and parameters, under an adopted admission token that is
// given back when it ends.
func TestAsyncColorizeResumesFromItsJournal(t *testing.T) {
	s := newStack(t, asyncRules, stackOptions{})
	journal, err := jobs.NewDirResults(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first := jobs.New(jobs.Config{Journal: journal})
	parked := make(chan httpapi.Job, 1)
	api1, err := httpapi.New(httpapi.Config{Engine: s.eng, Runner: runnerFunc(func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
		job.OnQueued(func() int { return 1 })
		parked <- job
		<-ctx.Done()
		return nil, context.Cause(ctx)
	}), AsyncJobs: first, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	req := colorizeRequest(t, "/api/ddcolorize/person", pngBytes(t, 64, 48), map[string]string{"size": "256"})
	req.URL.RawQuery = "mode=async"
	s.api, s.h = api1, openapitest.Handler(t, api1)
	id := submitAsyncID(t, s, req)
	before := <-parked
	first.Close() // the gateway stops with the job still waiting

	second := jobs.New(jobs.Config{Journal: journal})
	defer second.Close()
	runner := recordRunner{got: make(chan httpapi.Job, 1)}
	api2, err := httpapi.New(httpapi.Config{Engine: s.eng, Runner: runner, AsyncJobs: second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Restore(context.Background(), nil, nil, api2.Resume); err != nil {
		t.Fatal(err)
	}
	after := <-runner.got
	if !bytes.Equal(after.Image, before.Image) || len(after.Image) == 0 || after.Size != 256 || after.Resource != "ddcolor_person" || after.Tenant != before.Tenant {
		t.Fatalf("resumed as %s size %d tenant %q with %d image bytes; want %s size 256 tenant %q with the %d bytes prepared before",
			after.Resource, after.Size, after.Tenant, len(after.Image), before.Resource, before.Tenant, len(before.Image))
	}
	s.api, s.h = api2, openapitest.Handler(t, api2)
	if j := wait2(t, second, id); j.State != jobs.Succeeded {
		t.Fatalf("resumed job %s: %s", j.State, j.Error)
	}
	checkIdle(t, s)
}

type runnerFunc func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error)

func (f runnerFunc) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	return f(ctx, job)
}

func submitAsyncID(t *testing.T, s *stack, req *http.Request) string {
	t.Helper()
	rec := s.do(req, peer)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("async submit: %d %s", rec.Code, rec.Body)
	}
	return rec.Header().Get("Location")[len("/api/jobs/"):]
}

func wait2(t *testing.T, m *jobs.Manager, id string) jobs.Job {
	t.Helper()
	events, err := m.Subscribe(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var last jobs.Job
	for e := range events {
		last = e.Job
	}
	return last
}
