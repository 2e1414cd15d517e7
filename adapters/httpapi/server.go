package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// Runner runs an admitted job on a ComfyUI backend.
type Runner interface {
	Run(ctx context.Context, job Job) (*comfyui.Result, error)
}

// Job is an admitted job: the ComfyUI job, and who asked for it and what it
// weighs, for a Runner that shares the GPUs fairly.
type Job struct {
	comfyui.Job
	// Tenant is who asked: the identified caller's tenant, or the
	// anonymous caller's origin (its IPv4 address or IPv6 prefix, see
	// Origin).
	Tenant string
	// Tier is the caller's service tier.
	Tier string
	// Class is the tier's priority class in the GPU queue.
	Class tenant.Class
	// InFlight is the tier's jobs in flight per tenant; 0: the runner's
	// default.
	InFlight int
	// Cost is the job's weight, as the engine admitted it.
	Cost int
	// Async marks a job already answered 202: a Runner must not drop it
	// from a full queue for a job of a higher class.
	Async bool
	// OnStarted, if set, is called once the job is queued on a backend,
	// with the backend's base URL and the prompt ID: where a restarted
	// gateway finds the job again.
	OnStarted func(backend, promptID string)
	// OnQueued, if set, is called when the job has to wait for a GPU slot,
	// with a function telling its place in the queue (0 once it no longer
	// waits).
	OnQueued func(position func() int)
	// OnPosition, if set, is told the job's place in its backend's own
	// queue (1: next to run) when it changes: the Runner passes it on to
	// comfyui.Job.OnQueuePosition.
	OnPosition func(position int)
	// OnRunning, if set, is called once, when the job's prompt starts
	// executing: the Runner passes it on to comfyui.Job.OnRunning.
	OnRunning func()
}

// Prechecker is a Runner that can tell, before an async job is accepted,
// that it would refuse the job now (a *BusyError), so that the caller hears
// it at once instead of after a 202. It reads the job's Tenant, Class,
// InFlight and Cost.
type Prechecker interface {
	Precheck(job Job) error
}

// Direct runs every job on one ComfyUI client, as it comes.
type Direct struct{ Client *comfyui.Client }

// Run runs job on the client.
func (d Direct) Run(ctx context.Context, job Job) (*comfyui.Result, error) {
	cj := job.Job
	if job.OnStarted != nil {
		cj.OnQueued = func(promptID string) { job.OnStarted(d.Client.BaseURL(), promptID) }
	}
	cj.OnQueuePosition, cj.OnRunning = job.OnPosition, job.OnRunning
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

// RefusalObserver is told of the refusals the HTTP side makes itself,
// beside the engine's (which the engine counts): a call over its tier's
// daily quota, by resource and tier, and a refused credential (401), by
// the kind of credential sent (CredentialAPIKey, CredentialJWT or
// CredentialMalformed). It is never told a tenant or a credential. The
// Prometheus exporter is one.
type RefusalObserver interface {
	ObserveQuotaRefusal(resource, tier string)
	ObserveAuthFailure(credential string)
}

// ClientObserver is told the origin of every call to the public API
// (its IPv4 address or IPv6 prefix, see Origin), to count distinct
// clients. The Prometheus exporter is one.
type ClientObserver interface {
	ObserveClient(origin string)
}

// The kinds of credential RefusalObserver.ObserveAuthFailure is told.
const (
	// CredentialAPIKey: an API key (sk_…) was refused: unknown, revoked
	// or malformed.
	CredentialAPIKey = "api_key"
	// CredentialJWT: a bearer token that is not an API key was refused
	// (bad signature, expired, wrong issuer or audience, JWT off).
	CredentialJWT = "jwt"
	// CredentialMalformed: the header itself was wrong (not Bearer,
	// empty, several credentials).
	CredentialMalformed = "malformed"
)

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
	// Refusals, if set, is told of the daily quota refusals and refused
	// credentials.
	Refusals RefusalObserver
	// Clients, if set, is told the origin of every call.
	Clients ClientObserver
	// MaxUploads bounds the uploads read, checked and prepared at once
	// (default 16); beyond it a DDColor request gets 503 at once. A slot
	// is held while its upload is read, checked and prepared, not while
	// the job runs.
	MaxUploads int
	// UploadsPerClient is the share of MaxUploads one client (origin) may
	// hold at once (default a quarter of MaxUploads, at least 1); beyond
	// it the client gets 429.
	UploadsPerClient int
	// UploadMinRate is the slowest an upload may arrive, in bytes per
	// second, once UploadGrace has passed (default 16 KiB/s; negative:
	// no minimum): by n bytes in, at most UploadGrace + n/UploadMinRate
	// may have passed. A slower upload is cut off with 408 and frees its
	// slot.
	UploadMinRate int64
	// UploadGrace is the time an upload has before the minimum rate
	// applies (default 10s).
	UploadGrace time.Duration
	// UploadTimeout caps an upload's whole time, whatever its rate
	// (default 2m; negative: no cap), so that one at exactly the minimum
	// rate cannot hold a slot for the quarter hour a large body would take.
	UploadTimeout time.Duration
	// IPv6Prefix is the length of the prefix that identifies an IPv6
	// client (default 64): per-origin rules, bans and fair-queue tenants
	// count the prefix ("2001:db8:1:2::/64"), so one host cannot rotate
	// addresses past its limits. IPv4 clients are their address.
	IPv6Prefix int
	// Clock times uploads against UploadMinRate; the system clock by
	// default.
	Clock clock.Clock
	// Webhooks says whether async requests may ask for a webhook
	// (?webhook=URL): true when something delivers them (Config.AsyncJobs'
	// OnFinish).
	Webhooks bool
	// AsyncJobs holds the jobs of ?mode=async requests. Default: a Manager
	// of jobs.Config{} (with Refund set from Quota), closed by Close; one
	// given here is the caller's to close, and needs its Refund set to
	// RefundJobs(Quota, Logger) for failed async jobs to be refunded.
	AsyncJobs *jobs.Manager
	// Identity tells who calls (API keys, JWT). Nil: every caller is
	// anonymous, known by its origin.
	Identity Identifier
	// Quota counts the daily quotas. Nil: no quota.
	Quota Quota
	// Tiers gives the tiers in force. Nil: rules.DefaultTiers().
	Tiers TierSource
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
	refusals   RefusalObserver
	clients    ClientObserver
	uploads    *uploadSlots
	webhooks   bool
	clock      clock.Clock
	ipv6Bits   int

	uploadMinRate int64
	uploadGrace   time.Duration
	uploadTimeout time.Duration
	async         *jobs.Manager
	ownsAsync     bool

	identifier Identifier
	quota      Quota
	tierSource TierSource
	// builtinTiers are rules.DefaultTiers(), parsed once: the tiers without
	// a TierSource.
	builtinTiers *rules.Tiers
	inFlight     inFlight
	// stopping is set by Drain and Close: a synchronous job cut off then is
	// refunded, not taken for a client that left.
	stopping atomic.Bool
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
	if cfg.IPv6Prefix == 0 {
		cfg.IPv6Prefix = 64
	}
	if cfg.IPv6Prefix < 1 || cfg.IPv6Prefix > 128 {
		return nil, fmt.Errorf("httpapi: IPv6Prefix must be between 1 and 128, got %d", cfg.IPv6Prefix)
	}
	if cfg.UploadMinRate == 0 {
		cfg.UploadMinRate = defaultUploadMinRate
	}
	if cfg.UploadGrace <= 0 {
		cfg.UploadGrace = defaultUploadGrace
	}
	if cfg.UploadTimeout == 0 {
		cfg.UploadTimeout = defaultUploadTimeout
	}
	s := &Server{
		router:     gin.New(),
		eng:        cfg.Engine,
		runner:     cfg.Runner,
		log:        cfg.Logger,
		image:      imageinput.DefaultLimits(),
		jobTimeout: cfg.JobTimeout,
		jobs:       cfg.Jobs,
		refusals:   cfg.Refusals,
		clients:    cfg.Clients,
		uploads:    newUploadSlots(cfg.MaxUploads, cfg.UploadsPerClient),
		webhooks:   cfg.Webhooks,
		clock:      clock.Or(cfg.Clock),
		ipv6Bits:   cfg.IPv6Prefix,

		uploadMinRate: cfg.UploadMinRate,
		uploadGrace:   cfg.UploadGrace,
		uploadTimeout: cfg.UploadTimeout,
		async:         cfg.AsyncJobs,
		identifier:    cfg.Identity,
		quota:         cfg.Quota,
		tierSource:    cfg.Tiers,
		builtinTiers:  rules.DefaultTiers(),
	}
	if cfg.Quota != nil {
		s.quota = guardQuota(cfg.Quota, s.clock, s.log)
	}
	if s.async == nil {
		var refund func(jobs.Job)
		if cfg.Quota != nil {
			refund = RefundJobs(cfg.Quota, cfg.Logger)
		}
		s.async, s.ownsAsync = jobs.New(jobs.Config{Refund: refund}), true
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
	s.image.Budget = cfg.Image.Budget
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
	r.GET("/api/me", s.me)
	return s, nil
}

// Router is the Gin engine, for mounting the operator API beside.
func (s *Server) Router() *gin.Engine { return s.router }

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// origin is the client's identity for per-origin rules, bans and the fair
// queue: the client IP (the peer, or what a trusted proxy says).
func (s *Server) origin(c *gin.Context) string { return Origin(c.ClientIP(), s.ipv6Bits) }

// Origin is the client identity of ip: an IPv4 address (IPv4-mapped IPv6
// included) in canonical form, and for IPv6 the prefix of ipv6Bits bits
// that holds it, in CIDR form ("2001:db8:1:2::/64"), so that a host cannot
// rotate through the addresses of its prefix. ip that is no address is
// returned as it is.
func Origin(ip string, ipv6Bits int) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	if a = a.Unmap(); a.Is4() {
		return a.String()
	}
	p, err := a.WithZone("").Prefix(ipv6Bits)
	if err != nil { // New checked the length
		return a.String()
	}
	return p.String()
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

// refused answers ref and reports true when it is not nil.
func (s *Server) refused(c *gin.Context, call engine.Call, ref *engine.Refusal) bool {
	if ref == nil {
		return false
	}
	s.refuse(c, call, ref)
	return true
}

// refuse answers a refusal and logs it, once.
func (s *Server) refuse(c *gin.Context, call engine.Call, ref *engine.Refusal) {
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "request refused",
		slog.String("ip", call.Origin),
		slog.String("tenant", call.Tenant),
		slog.String("tier", ref.Tier),
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
// with the image or the job's error. The job's quota charge is kept when it
// succeeded or its caller left (unless the gateway is stopping); its
// caller's settle refunds it otherwise.
func (s *Server) run(c *gin.Context, tok *engine.Token, who *caller, cj comfyui.Job, ch *charge) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.jobTimeout)
	defer cancel()
	res, err := s.execute(ctx, tok, who.job(cj, tok.Cost))
	if err != nil {
		if errors.Is(c.Request.Context().Err(), context.Canceled) && !s.stopping.Load() {
			ch.keep() // the client cancelled: no refund
		} else {
			ch.settle() // refunded before the answer tells the quota
		}
		s.jobError(c, cj.Resource, who, err)
		return
	}
	ch.keep()
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

// nodeErrors renders ComfyUI's node errors in ComfyUI's own JSON shape: an
// object, empty when ComfyUI sent an empty one; nil (the field left out)
// when it sent none.
func nodeErrors(pe *comfyui.PromptError) any {
	if pe.NodeErrors == nil {
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
		slog.String("ip", s.origin(c)),
		slog.Duration("duration", time.Since(start)))
}
