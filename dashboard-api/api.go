package dashboardapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/rules"
)

// Config configures the operator API.
type Config struct {
	Engine *engine.Engine
	// Source says where the rules come from: "etcd http://127.0.0.1:2379
	// /sluice", a file path, "built-in".
	Source string
	// Writer writes rule documents to the source of truth. nil: the rules
	// come from files and PUT and DELETE answer 405.
	Writer RuleWriter
	// Status reports the revision in force and the last rejected change;
	// nil: GET /api/rules carries no revision.
	Status func() RulesStatus
	// Ready reports whether the gateway should receive traffic; nil: ready
	// once the engine has rules.
	Ready func() bool
	// AdminToken is the bearer token that writes need. Empty: writes are
	// refused with 403; they are never open.
	AdminToken string
	// ProtectReads makes GET /api/* need the token too (healthz and readyz
	// stay open). It needs an AdminToken.
	ProtectReads bool
	Logger       *slog.Logger
	// Backends reports the GPU farm: slots per backend, the queue and the
	// tenants waiting; nil: GET /api/backends answers 404.
	Backends func() dispatch.Stats
	// Simulator, when the built-in ComfyUI simulator runs, lets an operator
	// push its GPU memory up or down (/api/simulator/vram). Its PUT is a
	// write like any other: it needs the admin token, and with none
	// configured it is refused (403), since pushing the memory up refuses
	// every client's jobs.
	Simulator Simulator
	// Build says which binary runs; GET /api/system shows it as "build".
	Build Build
	// Tiers serves GET and PUT /api/tiers (see TierSource); nil: not
	// mounted.
	Tiers TierSource
	// Keys manages the API keys (/api/keys, admin token needed for reads
	// too); nil: those routes answer 404.
	Keys Keys
	// Planner serves GET /api/plan, the capacity plan (a read); nil: it
	// answers 404.
	Planner Planner
	// Session, when set, lets a request through wherever the admin token
	// would (writes, and reads under ProtectReads): the web console's
	// login cookie plus, for writes, its CSRF header. nil: only the
	// bearer token.
	Session Session
	// IPv6Prefix is the prefix length that identifies an IPv6 client (sluice
	// serve's --ipv6-prefix; 0 means 64): the client= filter of
	// /api/blocked and the who= of DELETE /api/bans name an origin as the
	// public API records it, so an IPv6 address is taken as its prefix
	// and an IPv4-mapped one as the IPv4 address.
	IPv6Prefix int
	// Limiter limits wrong bearer tokens per client origin (429 with
	// Retry-After beyond TokenFailures a TokenWindow, before the token is
	// compared); pass the console's (Console.Limiter) so that its login
	// and the live feed share the count. nil: the API keeps its own.
	Limiter Limiter
}

// Build names the running binary: its version and whether it reads NVIDIA
// GPUs through NVML ("cgo") or was built without ("nonvml").
type Build struct {
	Version string `json:"version"`
	NVML    string `json:"nvml"`
}

// Simulator is the built-in ComfyUI simulator's GPU memory.
type Simulator interface {
	VRAMUsed() []float64
	SetVRAMUsed(ratio float64)
}

// RuleWriter writes rule documents to the source of truth (etcd). It
// validates the whole candidate rule set first and returns rules.Errors
// when it is invalid.
type RuleWriter interface {
	// Put stores doc as the document of resource, which may be "system".
	Put(ctx context.Context, resource string, doc []byte) (revision int64, err error)
	// Delete removes the document of resource.
	Delete(ctx context.Context, resource string) (revision int64, err error)
}

// ErrNotFound is what a RuleWriter returns, wrapped, when the document to
// delete does not exist; the API answers 404.
var ErrNotFound = errors.New("no such rule document")

// RulesStatus says which revision of the rules is in force.
type RulesStatus struct {
	Revision  int64     `json:"revision"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// LastRejection is the last change that was not applied; nil when
	// none was rejected.
	LastRejection *Rejection `json:"last_rejection"`
}

// Rejection is a change to the rules that failed validation: the last good
// rules stayed in force.
type Rejection struct {
	Key      string    `json:"key"`
	Revision int64     `json:"revision"`
	Errors   []string  `json:"errors"`
	At       time.Time `json:"at"`
}

// Limits of GET /api/blocked.
const (
	defaultBlockedLimit = 100
	maxBlockedLimit     = 1024
)

// writeTimeout bounds one write to the rule source.
const writeTimeout = 10 * time.Second

type api struct {
	cfg       Config
	log       *slog.Logger
	tokenHash *[sha256.Size]byte // nil: no admin token
	limiter   Limiter
}

// Register mounts the operator API on r. It returns an error, and mounts
// nothing, when cfg is invalid.
func Register(r gin.IRouter, cfg Config) error {
	if cfg.Engine == nil {
		return errors.New("operator API: an engine is required")
	}
	if cfg.ProtectReads && cfg.AdminToken == "" {
		return errors.New("operator API: protecting reads needs an admin token")
	}
	if cfg.IPv6Prefix == 0 {
		cfg.IPv6Prefix = 64
	}
	if cfg.IPv6Prefix < 1 || cfg.IPv6Prefix > 128 {
		return fmt.Errorf("operator API: IPv6Prefix must be from 1 to 128, got %d", cfg.IPv6Prefix)
	}
	a := &api{cfg: cfg, log: cfg.Logger, limiter: cfg.Limiter}
	if a.limiter == nil {
		a.limiter = NewTokenLimiter(nil, cfg.IPv6Prefix)
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if cfg.AdminToken != "" {
		h := sha256.Sum256([]byte(cfg.AdminToken))
		a.tokenHash = &h
	}

	reads := r.Group("/api")
	if cfg.ProtectReads {
		reads.Use(a.authorize)
	}
	reads.GET("/rules", a.rules)
	reads.GET("/rules/:resource", a.resourceRules)
	reads.GET("/resources", a.resources)
	reads.GET("/blocked", a.blocked)
	reads.GET("/bans", a.bans)
	r.DELETE("/api/bans", a.authorize, a.unban)
	reads.GET("/system", a.system)
	reads.POST("/rules/:resource/dry-run", a.dryRun)
	if cfg.Simulator != nil {
		a.mountSimulator(reads, r, cfg.Simulator)
	}
	if cfg.Tiers != nil {
		a.mountTiers(reads, r, cfg.Tiers)
	}
	if cfg.Backends != nil {
		reads.GET("/backends", func(c *gin.Context) { c.JSON(http.StatusOK, backendsBody(cfg.Backends())) })
	}

	if cfg.Planner != nil {
		reads.GET("/plan", a.plan)
	}

	if cfg.Keys != nil {
		a.mountKeys(r, cfg.Keys)
	}

	writes := r.Group("/api", a.readOnly, a.authorize, a.knownResource)
	writes.PUT("/rules/:resource", a.put)
	writes.DELETE("/rules/:resource", a.delete)

	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/readyz", a.ready)
	return nil
}

// writeProblem answers with the problem writer the public API uses too;
// errs lists every problem of a rejected rule document.
func writeProblem(c *gin.Context, status int, code, detail string, errs []string) {
	p := problem.New(status, code, detail)
	p.Errors = errs
	problem.Write(c, p)
}

// authorize lets a request through only with the admin token as its bearer
// credentials, or without any Authorization header, with a Config.Session
// that authorizes it. The token is compared in constant time (over its SHA-256,
// so its length does not leak either) and never logged.
func (a *api) authorize(c *gin.Context) {
	if a.tokenHash == nil {
		writeProblem(c, http.StatusForbidden, "forbidden",
			"no admin token configured: the operator API refuses writes (start sluice with an admin token to allow them)", nil)
		return
	}
	const scheme = "Bearer "
	h := c.GetHeader("Authorization")
	if h == "" && a.cfg.Session != nil {
		if a.sessionAuthorized(c) {
			c.Next()
		}
		return
	}
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) || strings.TrimSpace(h[len(scheme):]) == "" {
		c.Header("WWW-Authenticate", `Bearer realm="sluice"`)
		writeProblem(c, http.StatusUnauthorized, "unauthorized",
			"this endpoint needs the admin token: send Authorization: Bearer <token>", nil)
		return
	}
	client := c.ClientIP()
	if Limited(c, a.limiter, client) {
		return
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(h[len(scheme):])))
	if subtle.ConstantTimeCompare(got[:], a.tokenHash[:]) != 1 {
		a.limiter.Failed(client)
		a.log.Warn("operator API: wrong admin token",
			slog.String("method", c.Request.Method), slog.String("path", c.Request.URL.Path),
			slog.String("remote", c.ClientIP()))
		writeProblem(c, http.StatusForbidden, "forbidden", "the bearer token is not the admin token", nil)
		return
	}
	a.limiter.Succeeded(client)
	c.Next()
}

// mountSimulator serves the simulator's GPU memory. Its PUT is a write:
// it needs the admin token, and with none configured it is refused, since
// it puts the farm under pressure for everyone:
//
//	curl -X PUT -H 'Authorization: Bearer s3cret' -d '{"used_ratio": 0.95}' localhost:8080/api/simulator/vram
func (a *api) mountSimulator(reads *gin.RouterGroup, r gin.IRouter, sim Simulator) {
	reads.GET("/simulator/vram", func(c *gin.Context) { // a read: behind the login under --protect-reads
		c.JSON(http.StatusOK, gin.H{"used_ratio": sim.VRAMUsed()})
	})
	r.PUT("/api/simulator/vram", a.authorize, func(c *gin.Context) {
		var ratio *float64
		err := problem.DecodeObject(http.MaxBytesReader(c.Writer, c.Request.Body, 1<<10), problem.Field{Name: "used_ratio", Into: &ratio})
		switch {
		case err != nil:
			writeProblem(c, http.StatusBadRequest, "bad-request", err.Error()+`; send {"used_ratio": R} with R between 0 and 1`, nil)
			return
		case ratio == nil || *ratio < 0 || *ratio > 1:
			writeProblem(c, http.StatusBadRequest, "bad-request", `send {"used_ratio": R} with R between 0 and 1`, nil)
			return
		}
		sim.SetVRAMUsed(*ratio)
		a.log.Info("operator API: simulator GPU memory set", slog.Float64("used_ratio", *ratio), slog.String("remote", c.ClientIP()))
		c.JSON(http.StatusOK, gin.H{"used_ratio": sim.VRAMUsed()})
	})
}

// readOnly answers writes when the rules come from files.
func (a *api) readOnly(c *gin.Context) {
	if a.cfg.Writer != nil {
		return
	}
	c.Header("Allow", "GET")
	writeProblem(c, http.StatusMethodNotAllowed, "rules-read-only",
		fmt.Sprintf("the rules come from %s and cannot be changed through the API; edit the files, or run sluice with etcd", a.source()), nil)
}

func (a *api) source() string {
	if a.cfg.Source == "" {
		return "files"
	}
	return a.cfg.Source
}

// knownResource answers 404, and aborts, for a document name that is
// neither a resource nor "system".
func (a *api) knownResource(c *gin.Context) {
	if name := c.Param("resource"); !known(name) {
		writeProblem(c, http.StatusNotFound, "unknown-resource",
			fmt.Sprintf("unknown resource %q; rule documents are %s and system", name, strings.Join(rules.Resources, ", ")), nil)
	}
}

func known(name string) bool { return name == "system" || slices.Contains(rules.Resources, name) }

// document is one rule document as the API shows it.
type document struct {
	Source   string          `json:"source"`
	Resource string          `json:"resource"`
	Rules    *rules.Resource `json:"rules,omitempty"`
	System   *rules.System   `json:"system,omitempty"`
	GPU      *rules.GPU      `json:"gpu,omitempty"`
}

func documents(set *rules.Set) []document {
	out := make([]document, 0, len(set.Docs))
	for _, d := range set.Docs {
		doc := document{Source: d.Source(), Resource: d.Name()}
		if d.Resource == nil {
			if d.System != nil {
				sys := set.System
				doc.System = &sys
			}
			doc.GPU = set.GPU // with defaults filled in
		} else {
			doc.Rules = set.Resources[d.Name()] // with defaults filled in
		}
		out = append(out, doc)
	}
	return out
}

// rulesBody is the answer of GET /api/rules.
type rulesBody struct {
	Source string `json:"source"`
	*RulesStatus
	Documents []document `json:"documents"`
}

func (a *api) rules(c *gin.Context) {
	body := rulesBody{Source: a.cfg.Source, Documents: documents(a.cfg.Engine.Rules())}
	if a.cfg.Status != nil {
		st := a.cfg.Status()
		body.RulesStatus = &st
	}
	c.JSON(http.StatusOK, body)
}

func (a *api) resourceRules(c *gin.Context) {
	if a.knownResource(c); c.IsAborted() {
		return
	}
	name := c.Param("resource")
	for _, d := range documents(a.cfg.Engine.Rules()) {
		if d.Resource == name {
			c.JSON(http.StatusOK, d)
			return
		}
	}
	c.JSON(http.StatusOK, document{Resource: name}) // no document: no limits
}

func (a *api) resources(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"resources": a.cfg.Engine.Stats(), "cpu_usage": a.cfg.Engine.CPUUsage()})
}

// backendsBody renders the farm's state with times in milliseconds: each
// backend (its name without any user or password its URL carries), the
// jobs waiting and running by priority class, and each tenant's with its
// tier and class. Tenants are names, never credentials.
func backendsBody(st dispatch.Stats) gin.H {
	backends := make([]gin.H, 0, len(st.Backends))
	for _, b := range st.Backends {
		backends = append(backends, gin.H{"name": dispatch.ShownName(b.Name), "slots": b.Slots, "in_use": b.InUse, "healthy": b.Healthy, "gpu_pressure": b.Pressure, "started_total": b.Started})
	}
	classes := make([]gin.H, 0, len(st.Classes))
	for _, c := range slices.Backward(st.Classes) { // highest first, as they are served
		classes = append(classes, gin.H{"class": c.Class.String(), "waiting": c.Waiting, "running": c.Running})
	}
	tenants := make([]gin.H, 0, len(st.Tenants))
	for _, t := range st.Tenants {
		tenants = append(tenants, gin.H{"tenant": t.Tenant, "tier": t.Tier, "class": t.Class.String(), "waiting": t.Waiting, "running": t.Running})
	}
	return gin.H{"backends": backends, "queued": st.Queued, "classes": classes, "tenants": tenants, "avg_job_time_ms": st.AvgJobTime.Milliseconds()}
}

// system shows the machine's CPU and load, every GPU with its source,
// memory and utilisation, the GPU rule's pressure state, and the build.
func (a *api) system(c *gin.Context) {
	c.JSON(http.StatusOK, struct {
		engine.SystemStatus
		Build Build `json:"build"`
	}{a.cfg.Engine.System(), a.cfg.Build})
}

func (a *api) ready(c *gin.Context) {
	ready := a.cfg.Engine.Rules() != nil
	if a.cfg.Ready != nil {
		ready = a.cfg.Ready()
	}
	if !ready {
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "not ready"})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready"})
}

// writeResult is the answer of a successful PUT or DELETE.
type writeResult struct {
	Resource string `json:"resource"`
	Revision int64  `json:"revision"`
}

// readDocument reads a document sent as a request's body (at most
// rules.MaxSourceBytes), or answers why not (413, 400; an empty body is
// told to send what) and returns false.
func (a *api) readDocument(c *gin.Context, what string) ([]byte, bool) {
	if c.Request.ContentLength > rules.MaxSourceBytes {
		a.tooLarge(c)
		return nil, false
	}
	doc, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, rules.MaxSourceBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		a.tooLarge(c)
		return nil, false
	case err != nil:
		writeProblem(c, http.StatusBadRequest, "bad-request", "reading the body: "+err.Error(), nil)
		return nil, false
	case len(strings.TrimSpace(string(doc))) == 0:
		writeProblem(c, http.StatusBadRequest, "bad-request", "the body is empty: send "+what, nil)
		return nil, false
	}
	return doc, true
}

func (a *api) put(c *gin.Context) {
	name := c.Param("resource")
	doc, ok := a.readDocument(c, fmt.Sprintf("the rule document of %s (YAML or JSON), or DELETE it", name))
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), writeTimeout)
	defer cancel()
	rev, err := a.cfg.Writer.Put(ctx, name, doc)
	a.answerWrite(c, "put", name, rev, err)
}

func (a *api) delete(c *gin.Context) {
	name := c.Param("resource")
	ctx, cancel := context.WithTimeout(c.Request.Context(), writeTimeout)
	defer cancel()
	rev, err := a.cfg.Writer.Delete(ctx, name)
	a.answerWrite(c, "delete", name, rev, err)
}

func (a *api) tooLarge(c *gin.Context) {
	writeProblem(c, http.StatusRequestEntityTooLarge, "body-too-large",
		fmt.Sprintf("a rule document may be at most %d bytes", rules.MaxSourceBytes), nil)
}

// answerWrite answers a write to the rule source and logs it.
func (a *api) answerWrite(c *gin.Context, op, name string, rev int64, err error) {
	attrs := []any{slog.String("op", op), slog.String("resource", name), slog.String("remote", c.ClientIP())}
	if err == nil {
		a.log.Info("operator API: rules written", append(attrs, slog.Int64("revision", rev))...)
		c.JSON(http.StatusOK, writeResult{Resource: name, Revision: rev})
		return
	}
	var (
		list rules.Errors
		one  *rules.Error
	)
	switch {
	case errors.As(err, &list):
		a.log.Info("operator API: rules rejected", append(attrs, slog.Any("error", err))...)
		writeInvalid(c, fmt.Sprintf("the rules with this change are invalid (%s); nothing was written", problems(len(list))), list)
	case errors.As(err, &one):
		a.log.Info("operator API: rules rejected", append(attrs, slog.Any("error", err))...)
		writeInvalid(c, "the rules with this change are invalid (1 problem); nothing was written", rules.Errors{one})
	case errors.Is(err, ErrNotFound):
		writeProblem(c, http.StatusNotFound, "no-rule-document",
			fmt.Sprintf("%s has no rule document to %s", name, op), nil)
	case errors.Is(err, context.DeadlineExceeded):
		a.log.Error("operator API: writing rules timed out", append(attrs, slog.Any("error", err))...)
		writeProblem(c, http.StatusGatewayTimeout, "rule-source-timeout",
			fmt.Sprintf("could not write to etcd within %s: %v", writeTimeout, err), nil)
	default:
		a.log.Error("operator API: writing rules failed", append(attrs, slog.Any("error", err))...)
		writeProblem(c, http.StatusBadGateway, "rule-source-unavailable", "could not write to etcd: "+err.Error(), nil)
	}
}

// problems counts validation problems in words: "1 problem", "3 problems".
func problems(n int) string {
	if n == 1 {
		return "1 problem"
	}
	return fmt.Sprintf("%d problems", n)
}
