package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/adapters/webhook"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
)

// BeginShutdown says the gateway is stopping: from now on a synchronous
// job cut off is refunded (the gateway stopped it), not taken for one its
// client left. Call it when the stop begins, before the requests still
// running are cut off at the end of the grace.
func (s *Server) BeginShutdown() { s.stopping.Store(true) }

// Drain stops taking async jobs and waits, until ctx ends, for those
// running to finish. From then on a synchronous job cut off is refunded
// (the gateway stops), not taken for one its client left.
func (s *Server) Drain(ctx context.Context) error {
	s.stopping.Store(true)
	return s.async.Drain(ctx)
}

// Close cancels the async jobs still running and waits for them, when the
// Server made its own job manager.
func (s *Server) Close() {
	s.stopping.Store(true)
	if s.ownsAsync {
		s.async.Close()
	}
}

func (s *Server) mountJobs(r *gin.Engine) {
	r.GET("/api/jobs/:id", s.jobStatus)
	r.GET("/api/jobs/:id/result", s.jobResult)
	r.GET("/api/jobs/:id/events", s.jobEvents)
	r.DELETE("/api/jobs/:id", s.jobCancel)
}

// asyncMode says whether the request asks to be answered at admission,
// with ?mode=async or Prefer: respond-async. A bad mode is answered 400
// and gives ok false.
func (s *Server) asyncMode(c *gin.Context) (async, ok bool) {
	switch mode := c.Query("mode"); mode {
	case "async":
		async = true
	case "sync":
	case "":
		async = preferAsync(c)
	default:
		problem.Answer(c, http.StatusBadRequest, "bad-mode", fmt.Sprintf("mode must be sync or async; got %q", mode))
		return false, false
	}
	// ?webhook=URL asks to be told when an async job ends.
	if hook, given := c.GetQuery("webhook"); given {
		if !async {
			problem.Answer(c, http.StatusBadRequest, "bad-webhook", "a webhook needs mode=async (or Prefer: respond-async)")
			return false, false
		}
		if !s.webhooks {
			problem.Answer(c, http.StatusBadRequest, "bad-webhook", "this gateway sends no webhooks (it has no --webhook-secret)")
			return false, false
		}
		if err := webhook.CheckURL(hook); err != nil {
			problem.Answer(c, http.StatusBadRequest, "bad-webhook", err.Error())
			return false, false
		}
	}
	return async, true
}

// preferAsync reports whether a Prefer field (RFC 7240) holds respond-async.
func preferAsync(c *gin.Context) bool {
	for _, field := range c.Request.Header.Values("Prefer") {
		for pref := range strings.SplitSeq(field, ",") {
			name, _, _ := strings.Cut(pref, ";")
			if strings.EqualFold(strings.TrimSpace(name), "respond-async") {
				return true
			}
		}
	}
	return false
}

// submitted is the answer to an async request.
type submitted struct {
	ID        string     `json:"id"`
	StatusURL string     `json:"status_url"`
	State     jobs.State `json:"state"`
}

// asyncInput is what an async job needs to run again after a restart,
// beside its record's parameters: kept in the job journal (jobs.Spec.Input)
// until the job ends.
type asyncInput struct {
	Image          []byte `json:"image,omitempty"`
	ImageName      string `json:"image_name,omitempty"`
	NegativePrompt string `json:"negative_prompt,omitempty"`
	Cost           int    `json:"cost,omitempty"`
}

// submit starts an admitted job in the background and answers 202. The job
// runs under a context of its own, bounded by the job timeout; its token is
// exited when it ends, however it ends. It reports whether the job took the
// token over; if not, submit has answered and the caller exits the token.
// Submit never waits for the job store (etcd): the job is kept, input and
// all, in the local journal before the 202, and its record reaches etcd in
// the background.
//
// The job's quota charge ch goes with the job (its Ticket): the job
// manager's Refund gives it back if the job fails on the gateway's side.
// Until the job is accepted, ch is left to the caller's settle, which
// refunds it.
func (s *Server) submit(c *gin.Context, tok *engine.Token, who *caller, cj comfyui.Job, ch *charge) (handedOff bool) {
	input, err := json.Marshal(asyncInput{Image: cj.Image, ImageName: cj.ImageName, NegativePrompt: cj.NegativePrompt, Cost: tok.Cost})
	if err != nil {
		tok.Exit(nil)
		s.jobError(c, cj.Resource, who, fmt.Errorf("httpapi: async input: %w", err))
		return false
	}
	spec := jobs.Spec{Tenant: who.id.Tenant, Origin: who.origin, Tier: who.id.Tier, Resource: cj.Resource, Webhook: c.Query("webhook"), Input: input, Params: jobs.Params{
		Size: cj.Size, Prompt: cj.Prompt, Width: cj.Width, Height: cj.Height, Steps: cj.Steps, Seed: cj.Seed,
	}}
	if ch != nil {
		spec.Ticket = ch.ticket
	}
	base := who.job(cj, max(tok.Cost, 1))
	if pc, ok := s.runner.(Prechecker); ok {
		if err := pc.Precheck(base); err != nil {
			tok.Exit(nil) // never ran
			ch.settle()
			s.jobError(c, cj.Resource, who, err)
			return false
		}
	}
	done := s.inFlight.add(who.id.Tenant)
	job, err := s.async.Submit(spec, func(ctx context.Context, report jobs.Report) (jobs.Result, error) {
		defer done()
		return s.runAsync(ctx, tok, base, report)
	})
	if err != nil {
		done()
		tok.Exit(nil) // never ran
		ch.settle()
		detail := "the gateway is shutting down"
		if !errors.Is(err, jobs.ErrClosed) {
			s.log.Error("async job not accepted: its journal entry could not be written", slog.String("resource", cj.Resource), slog.Any("error", err))
			detail = "the gateway cannot keep async jobs now (its job journal failed); retry, or ask synchronously"
		}
		problem.Write(c, Problem{Type: problem.TypeCapacity, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: detail, Resource: cj.Resource, RetryAfter: 1})
		return false
	}
	ch.keep() // the job's own now
	url := "/api/jobs/" + job.ID
	if c.Query("mode") == "" {
		c.Header("Preference-Applied", "respond-async")
	}
	c.Header("Location", url)
	c.JSON(http.StatusAccepted, submitted{ID: job.ID, StatusURL: url, State: job.State})
	return true
}

// runAsync runs an async job holding tok, reporting its states.
func (s *Server) runAsync(ctx context.Context, tok *engine.Token, job Job, report jobs.Report) (jobs.Result, error) {
	// execute exits the token; this deferred Exit, a no-op after that,
	// frees it when the job panics (the job manager recovers).
	defer tok.Exit(jobs.ErrPanicked)
	job.OnProgress = report.Progress
	ctx, stop := detachOnShutdown(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, s.jobTimeout)
	defer cancel()
	job.OnStarted, job.OnQueued, job.OnPosition, job.OnRunning = report.Started, report.Queued, report.Position, report.Running
	job.Async = true
	res, err := s.execute(ctx, tok, job)
	if err != nil {
		return jobs.Result{}, JobFailed(ctx, s.log, job.Resource, err, s.jobTimeout)
	}
	return jobs.Result{PromptID: res.PromptID, Data: res.Image, ContentType: res.ContentType}, nil
}

// Resume runs again an async job that had not reached a backend when the
// gateway before this one stopped, from the input its journal kept: it
// takes an admission token adopted from the engine (admitted before the
// restart, so never refused now, but counted as any job in flight), waits
// for a GPU slot in the fair queue again, and runs as it would have. It is
// the jobs.ResumeFunc for Manager.Restore.
func (s *Server) Resume(ctx context.Context, job jobs.Job, input []byte, report jobs.Report) (jobs.Result, error) {
	var in asyncInput
	if err := json.Unmarshal(input, &in); err != nil {
		return jobs.Result{}, fmt.Errorf("lost at restart: its kept input is unreadable: %w", err)
	}
	p := job.Params
	cj := comfyui.Job{Resource: job.Resource, Image: in.Image, ImageName: in.ImageName, Size: p.Size, Prompt: p.Prompt,
		NegativePrompt: in.NegativePrompt, Width: p.Width, Height: p.Height, Steps: p.Steps, Seed: p.Seed}
	origin, tenantName := job.Caller()
	call := engine.Call{Resource: job.Resource, Origin: origin, Tenant: tenantName, Tier: job.Tier, Size: max(p.Size, p.Width, p.Height), Cost: in.Cost}
	tok := s.eng.Adopt(call)
	if tok == nil {
		return jobs.Result{}, fmt.Errorf("lost at restart: resource %q is no longer served", job.Resource)
	}
	tok.Cost = max(tok.Cost, in.Cost)
	defer s.inFlight.add(job.Tenant)()
	s.log.Info("async job resumed after restart: queued again", slog.String("job", job.ID), slog.String("resource", job.Resource),
		slog.String("tier", job.Tier))
	rj := Job{Job: cj, Tenant: job.Tenant, Tier: job.Tier, Cost: max(tok.Cost, 1)}
	if tier, ok := s.tiers().Tier(job.Tier); ok {
		rj.Class, rj.InFlight = tier.Priority, tier.InFlight
	}
	return s.runAsync(ctx, tok, rj, report)
}

// detachOnShutdown passes the job's end on to ComfyUI, except when the
// gateway is stopping (jobs.ErrShutdown): then the prompt is left to run
// (comfyui.ErrDetached), and the next gateway recovers it from its record.
func detachOnShutdown(ctx context.Context) (context.Context, func()) {
	runCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		if cause := context.Cause(ctx); errors.Is(cause, jobs.ErrShutdown) {
			cancel(comfyui.ErrDetached)
		} else {
			cancel(cause)
		}
	})
	return runCtx, func() {
		stop()
		cancel(nil)
	}
}

// ownJob returns the job named in the path if the caller's tenant created
// it (an identified tenant from any address, an anonymous caller from its
// origin), and answers 404 otherwise: another tenant's job does not exist
// for the caller. A bad credential is answered 401.
func (s *Server) ownJob(c *gin.Context) (jobs.Job, bool) {
	who, _, ok := s.identity(c)
	if !ok {
		return jobs.Job{}, false
	}
	id := c.Param("id")
	job, err := s.async.Status(id)
	if err != nil || job.Tenant != who.Tenant {
		problem.Answer(c, http.StatusNotFound, "job-not-found", fmt.Sprintf("no job %q", id))
		return jobs.Job{}, false
	}
	return job, true
}

func (s *Server) jobStatus(c *gin.Context) {
	if job, ok := s.ownJob(c); ok {
		c.JSON(http.StatusOK, job)
	}
}

func (s *Server) jobResult(c *gin.Context) {
	job, ok := s.ownJob(c)
	if !ok {
		return
	}
	if job.State != jobs.Succeeded {
		detail := fmt.Sprintf("job %s is %s; it has no result", job.ID, job.State)
		if job.Error != "" {
			detail += ": " + job.Error
		}
		problem.Write(c, Problem{Type: problem.TypeBase + "job-not-succeeded", Title: "Conflict", Status: http.StatusConflict,
			Detail: detail, Resource: job.Resource, Value: string(job.State)})
		return
	}
	// Status leaves the bytes where they are kept (the results folder under
	// sluice serve); Get reads them from there.
	full, err := s.async.Get(job.ID)
	switch {
	case errors.Is(err, jobs.ErrNotFound): // forgotten in between
		problem.Answer(c, http.StatusNotFound, "job-not-found", fmt.Sprintf("no job %q", job.ID))
		return
	case err != nil:
		s.log.Error("async job result unreadable", slog.String("job", job.ID), slog.Any("error", err))
		problem.Write(c, Problem{Type: problem.TypeBase + "job-result-unavailable", Title: "Internal Server Error", Status: http.StatusInternalServerError,
			Detail: fmt.Sprintf("the result of job %s could not be read", job.ID), Resource: job.Resource})
		return
	}
	job = full
	c.Header("X-Sluice-Prompt-Id", job.PromptID)
	c.Data(http.StatusOK, job.ContentType, job.Result)
}

// jobEvents streams the job's progress and state as Server-Sent Events,
// ending after its final state.
func (s *Server) jobEvents(c *gin.Context) {
	job, ok := s.ownJob(c)
	if !ok {
		return
	}
	events, err := s.async.Subscribe(c.Request.Context(), job.ID)
	if err != nil { // forgotten in between
		problem.Answer(c, http.StatusNotFound, "job-not-found", fmt.Sprintf("no job %q", job.ID))
		return
	}
	h := c.Writer.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	c.Status(http.StatusOK)
	for ev := range events {
		var data any = ev.Job
		if ev.Type == jobs.EventProgress {
			data = struct {
				ID string `json:"id"`
				jobs.Progress
			}{ev.Job.ID, ev.Job.Progress}
		}
		b, err := json.Marshal(data)
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c.Writer, "event: %s\ndata: %s\n\n", ev.Type, b); err != nil {
			return
		}
		c.Writer.Flush()
	}
}

// cancelWait is how long DELETE waits for a cancelled job to end before it
// answers 202.
const cancelWait = 2 * time.Second

// jobCancel cancels the job; 200 with the record once it has ended, 202
// while it is still winding down.
func (s *Server) jobCancel(c *gin.Context) {
	job, ok := s.ownJob(c)
	if !ok {
		return
	}
	job, err := s.async.Cancel(job.ID)
	switch {
	case errors.Is(err, jobs.ErrFinished):
		problem.Write(c, Problem{Type: problem.TypeBase + "job-finished", Title: "Conflict", Status: http.StatusConflict,
			Detail: fmt.Sprintf("job %s already %s", job.ID, job.State), Resource: job.Resource, Value: string(job.State)})
		return
	case err != nil: // forgotten in between
		problem.Answer(c, http.StatusNotFound, "job-not-found", fmt.Sprintf("no job %q", c.Param("id")))
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), cancelWait)
	defer cancel()
	if events, err := s.async.Subscribe(ctx, job.ID); err == nil {
		for ev := range events {
			job = ev.Job
		}
	}
	status := http.StatusAccepted
	if job.State.Final() {
		status = http.StatusOK
	}
	c.JSON(status, job)
}
