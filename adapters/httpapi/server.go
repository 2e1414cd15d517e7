package httpapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
)

// Runner runs an admitted job on a ComfyUI backend.
type Runner interface {
	Run(ctx context.Context, job Job) (*comfyui.Result, error)
}

// Job is an admitted job: the ComfyUI job, and who asked for it and what it
// weighs, for a Runner that shares the GPUs fairly.
type Job struct {
	comfyui.Job
	// Tenant is who asked: the client IP, until API keys arrive.
	Tenant string
	// Cost is the job's weight, as the engine admitted it.
	Cost int
	// OnStarted, if set, is called once the job is queued on a backend,
	// with the backend's base URL and the prompt ID: where a restarted
	// gateway finds the job again.
	OnStarted func(backend, promptID string)
	// OnQueued, if set, is called when the job has to wait for a GPU slot,
	// with a function telling its place in the queue (0 once it no longer
	// waits).
	OnQueued func(position func() int)
}

// Prechecker is a Runner that can tell, before an async job is accepted,
// that it would refuse the job now (a *BusyError), so that the caller hears
// it at once instead of after a 202.
type Prechecker interface {
	Precheck(tenant string) error
}

// Direct runs every job on one ComfyUI client, as it comes.
type Direct struct{ Client *comfyui.Client }

// Run runs job on the client.
func (d Direct) Run(ctx context.Context, job Job) (*comfyui.Result, error) {
	cj := job.Job
	if job.OnStarted != nil {
		cj.OnQueued = func(promptID string) { job.OnStarted(d.Client.BaseURL(), promptID) }
	}
	return d.Client.Run(ctx, cj)
}

// BusyError is a Runner's answer when no backend can take the job: all
// slots taken and the wait queue full or too long, or the tenant over its
// share. It is answered 503 (429 when OverShare) with Retry-After.
type BusyError struct {
	Reason     string // what was full: "queue full", "waited too long", ...
	RetryAfter time.Duration
	// OverShare says the caller already has its share of jobs in flight.
	OverShare bool
}

func (e *BusyError) Error() string { return "no GPU slot: " + e.Reason }

// JobObserver is told about every job that ran on ComfyUI: how long it
// waited in ComfyUI's queue and ran, and its error (nil on success). The
// Prometheus exporter is one.
type JobObserver interface {
	ObserveJob(resource string, queueWait, run time.Duration, err error)
}

// Config configures a Server.
type Config struct {
	Engine *engine.Engine
	Runner Runner
	Logger *slog.Logger
	// TrustedProxies are the CIDRs or addresses whose X-Forwarded-For and
	// X-Real-IP are believed. Empty: none, the peer address is the client.
	TrustedProxies []string
	// Image limits uploads; zero fields take imageinput's defaults.
	Image imageinput.Limits
	// JobTimeout bounds one ComfyUI job (default 10m).
	JobTimeout time.Duration
	// Jobs, if set, observes every job's timings.
	Jobs JobObserver
	// MaxUploads bounds the uploads read and checked at once (default 16);
	// beyond it a DDColor request gets 503 at once.
	MaxUploads int
	// Webhooks says whether async requests may ask for a webhook
	// (?webhook=URL): true when something delivers them (Config.AsyncJobs'
	// OnFinish).
	Webhooks bool
	// AsyncJobs holds the jobs of ?mode=async requests. Default: a Manager
	// of jobs.Config{}, closed by Close; one given here is the caller's to
	// close.
	AsyncJobs *jobs.Manager
}

// Server is the public API. Mount more routes on Router().
type Server struct {
	router     *gin.Engine
	eng        *engine.Engine
	runner     Runner
	log        *slog.Logger
	image      imageinput.Limits
	jobTimeout time.Duration
	jobs       JobObserver
	uploads    chan struct{} // a semaphore of MaxUploads
	webhooks   bool
	async      *jobs.Manager
	ownsAsync  bool
}

// formSlack is what a multipart body may carry beyond the image itself:
// boundaries, part headers and the size field.
const formSlack = 64 << 10

// New builds the server and its routes.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil || cfg.Runner == nil {
		return nil, errors.New("httpapi: Engine and Runner are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.JobTimeout <= 0 {
		cfg.JobTimeout = 10 * time.Minute
	}
	s := &Server{
		router:     gin.New(),
		eng:        cfg.Engine,
		runner:     cfg.Runner,
		log:        cfg.Logger,
		image:      imageinput.DefaultLimits(),
		jobTimeout: cfg.JobTimeout,
		jobs:       cfg.Jobs,
		uploads:    make(chan struct{}, cmp.Or(max(cfg.MaxUploads, 0), 16)),
		webhooks:   cfg.Webhooks,
		async:      cfg.AsyncJobs,
	}
	if s.async == nil {
		s.async, s.ownsAsync = jobs.New(jobs.Config{}), true
	}
	if cfg.Image.MaxBytes > 0 {
		s.image.MaxBytes = cfg.Image.MaxBytes
	}
	if cfg.Image.MaxPixels > 0 {
		s.image.MaxPixels = cfg.Image.MaxPixels
	}
	if cfg.Image.MaxSide > 0 {
		s.image.MaxSide = cfg.Image.MaxSide
	}
	r := s.router
	if err := r.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("httpapi: trusted proxies: %w", err)
	}
	r.HandleMethodNotAllowed = true
	r.Use(s.recover)
	if cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		r.Use(s.accessLog) // only when it is written: it costs on every request
	}
	r.NoRoute(func(c *gin.Context) {
		problem.Answer(c, http.StatusNotFound, "not-found", fmt.Sprintf("no endpoint %s %s", c.Request.Method, c.Request.URL.Path))
	})
	r.NoMethod(func(c *gin.Context) {
		problem.Answer(c, http.StatusMethodNotAllowed, "method-not-allowed", fmt.Sprintf("%s is not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})
	r.POST("/api/ddcolorize/person", s.colorize("ddcolor_person", 512))
	r.POST("/api/ddcolorize/building", s.colorize("ddcolor_building", 1280))
	r.POST("/v1/generate", s.generate)
	s.mountJobs(r)
	return s, nil
}

// Router is the Gin engine, for mounting the operator API beside.
func (s *Server) Router() *gin.Engine { return s.router }

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// origin is the client IP: the peer, or what a trusted proxy says, in
// canonical form.
func origin(c *gin.Context) string {
	ip := c.ClientIP()
	if a, err := netip.ParseAddr(ip); err == nil && !a.Is4() {
		return a.Unmap().String() // IPv6 (or IPv4-mapped) in canonical form
	}
	return ip // dotted IPv4 parses only in canonical form
}

// guard asks the engine; on refusal it answers and logs, and returns nil.
func (s *Server) guard(c *gin.Context, call engine.Call) *engine.Token {
	tok, err := s.eng.Guard(c.Request.Context(), call)
	if err == nil {
		return tok
	}
	var ref *engine.Refusal
	switch {
	case errors.As(err, &ref):
		s.refuse(c, call, ref)
	case errors.Is(err, context.Canceled):
		c.AbortWithStatus(statusClientClosed)
	case errors.Is(err, context.DeadlineExceeded):
		problem.Write(c, Problem{Type: problem.TypeCapacity, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: "the request ran out of time before it could be admitted", Resource: call.Resource, RetryAfter: 1})
	default:
		s.log.Error("guard failed", slog.String("resource", call.Resource), slog.Any("error", err))
		problem.Answer(c, http.StatusInternalServerError, "internal", "admission failed")
	}
	return nil
}

// refuse answers a refusal and logs it, once.
func (s *Server) refuse(c *gin.Context, call engine.Call, ref *engine.Refusal) {
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "request refused",
		slog.String("ip", call.Origin),
		slog.String("resource", call.Resource),
		slog.Int("size", call.Size),
		slog.String("rule", ref.Rule),
		slog.String("kind", string(ref.Kind)),
		slog.Float64("threshold", ref.Threshold),
		slog.Duration("retry_after", ref.RetryAfter))
	if s.log.Enabled(c.Request.Context(), slog.LevelDebug) {
		c.Set(refusedKey, true) // for the access log
	}
	refusalProblem(c, ref)
}

// statusClientClosed is nginx's code for a client that went away; nobody
// reads it, but access logs do.
const statusClientClosed = 499

const refusedKey = "sluice.refused"

// run runs an admitted job, exits its token when the job ends, and answers
// with the image or the job's error.
func (s *Server) run(c *gin.Context, tok *engine.Token, origin string, cj comfyui.Job) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.jobTimeout)
	defer cancel()
	res, err := s.execute(ctx, tok, Job{Job: cj, Tenant: origin, Cost: tok.Cost})
	if err != nil {
		s.jobError(c, cj.Resource, err)
		return
	}
	c.Header("Server-Timing", serverTiming(res))
	c.Header("X-Sluice-Prompt-Id", res.PromptID)
	c.Data(http.StatusOK, res.ContentType, res.Image)
}

// execute runs an admitted job, exits its token when the job ends, and
// reports its timings.
func (s *Server) execute(ctx context.Context, tok *engine.Token, job Job) (*comfyui.Result, error) {
	start := time.Now()
	res, err := s.runner.Run(ctx, job)
	tok.Exit(err)
	if s.jobs != nil {
		wait, run := time.Duration(0), time.Since(start)
		if res != nil {
			wait, run = jobTimes(res)
		}
		s.jobs.ObserveJob(job.Resource, wait, run, err)
	}
	return res, err
}

// jobTimes splits a job's time into its wait in ComfyUI's queue and its run.
func jobTimes(res *comfyui.Result) (wait, run time.Duration) {
	start := res.Started
	if start.IsZero() {
		start = res.Queued
	}
	return start.Sub(res.Queued), res.Finished.Sub(start)
}

// serverTiming reports the job's time in ComfyUI's queue and running.
func serverTiming(res *comfyui.Result) string {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	wait, run := jobTimes(res)
	return fmt.Sprintf(`queue;dur=%.1f;desc="ComfyUI queue", run;dur=%.1f;desc="ComfyUI job"`, ms(wait), ms(run))
}

func (s *Server) jobError(c *gin.Context, resource string, err error) {
	var (
		pe   *comfyui.PromptError
		ee   *comfyui.ExecutionError
		busy *BusyError
	)
	log := s.log.With(slog.String("resource", resource), slog.Any("error", err))
	switch {
	case errors.Is(c.Request.Context().Err(), context.Canceled):
		log.Info("client went away; job cancelled")
		c.AbortWithStatus(statusClientClosed)
	case errors.As(err, &busy):
		log.Info("no GPU slot for the job")
		p := Problem{Type: problem.TypeCapacity, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: busy.Error(), Resource: resource, Kind: "queue", RetryAfter: problem.RetrySeconds(busy.RetryAfter)}
		if busy.OverShare {
			p.Type, p.Title, p.Status = problem.TypeQuota, "Too Many Requests", http.StatusTooManyRequests
		}
		problem.Write(c, p)
	case errors.As(err, &pe):
		log.Warn("comfyui refused the workflow")
		problem.Write(c, Problem{Type: problem.TypeBase + "comfyui-prompt-refused", Title: "Bad Gateway", Status: http.StatusBadGateway,
			Detail: pe.Error(), Resource: resource, NodeErrors: nodeErrors(pe)})
	case errors.As(err, &ee):
		log.Warn("comfyui job failed")
		problem.Write(c, Problem{Type: problem.TypeBase + "comfyui-job-failed", Title: "Bad Gateway", Status: http.StatusBadGateway,
			Detail: ee.Error(), Resource: resource})
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("comfyui job timed out")
		problem.Write(c, Problem{Type: problem.TypeBase + "comfyui-timeout", Title: "Gateway Timeout", Status: http.StatusGatewayTimeout,
			Detail: fmt.Sprintf("the job did not finish within %s", s.jobTimeout), Resource: resource})
	default:
		log.Error("comfyui unavailable")
		problem.Write(c, Problem{Type: problem.TypeBase + "comfyui-unavailable", Title: "Bad Gateway", Status: http.StatusBadGateway,
			Detail: "the image backend could not run the job", Resource: resource})
	}
}

// nodeErrors renders ComfyUI's node errors in ComfyUI's own JSON shape.
func nodeErrors(pe *comfyui.PromptError) map[string]any {
	if len(pe.NodeErrors) == 0 {
		return nil
	}
	out := make(map[string]any, len(pe.NodeErrors))
	for id, ne := range pe.NodeErrors {
		errs := make([]map[string]any, 0, len(ne.Errors))
		for _, ie := range ne.Errors {
			errs = append(errs, map[string]any{
				"type": ie.Type, "message": ie.Message, "details": ie.Details,
				"extra_info": map[string]any{"input_name": ie.InputName, "received_value": ie.ReceivedValue},
			})
		}
		out[id] = map[string]any{"class_type": ne.ClassType, "errors": errs, "dependent_outputs": ne.DependentOutputs}
	}
	return out
}

func (s *Server) recover(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("handler panicked", slog.String("path", c.Request.URL.Path), slog.Any("panic", v))
			if !c.Writer.Written() {
				problem.Answer(c, http.StatusInternalServerError, "internal", "internal error")
			}
		}
	}()
	c.Next()
}

func (s *Server) accessLog(c *gin.Context) {
	start := time.Now()
	c.Next()
	if c.GetBool(refusedKey) {
		return // logged once, as a refusal
	}
	s.log.Debug("request",
		slog.String("method", c.Request.Method),
		slog.String("path", c.Request.URL.Path),
		slog.Int("status", c.Writer.Status()),
		slog.String("ip", origin(c)),
		slog.Duration("duration", time.Since(start)))
}
