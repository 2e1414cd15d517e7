package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// Identifier tells who a request comes from: with no credential, the
// anonymous caller known by origin; with a bad one, a *tenant.AuthError
// (answered 401, never taken as anonymous). adapters/identity's Resolver is
// one.
type Identifier interface {
	Identify(r *http.Request, origin string) (tenant.Identity, error)
}

// Quota counts the tenants' daily quotas (adapters/etcd's Quota is one).
// Take charges units to tenant's day in loc, refusing with a
// *tenant.QuotaExceeded (nothing charged) when that would pass limit
// (tenant.Unlimited: never refused); Refund gives a charge back to the day
// it was taken from; Usage reads the day's usage.
type Quota interface {
	Take(ctx context.Context, tenantName string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket, error)
	Refund(ctx context.Context, t tenant.Ticket) error
	Usage(ctx context.Context, tenantName string, limit int64, loc *time.Location) (tenant.Usage, error)
}

// TierSource gives the tiers in force (live from etcd under sluice serve).
type TierSource interface {
	Tiers() *rules.Tiers
}

// refundTimeout bounds one refund's write to the quota store, usageTimeout
// a read of the usage for an answer's fields. A charge is bounded by
// quotaTakeTimeout (quotaguard.go): past it (etcd unreachable or
// half-open) the call is admitted uncharged.
const (
	refundTimeout = 5 * time.Second
	usageTimeout  = time.Second
)

// caller is who a request on a guarded endpoint comes from, and its tier.
type caller struct {
	id     tenant.Identity
	origin string
	tier   rules.Tier
	loc    *time.Location
	// daily is the caller's daily quota as its answer shows it; nil
	// without a Quota.
	daily *dailyState
}

// call is the engine call of the caller for resource: anonymous callers
// are known by origin only.
func (w *caller) call(resource string, size int) engine.Call {
	c := engine.Call{Resource: resource, Origin: w.origin, Size: size, Tier: w.id.Tier}
	if !w.id.Anonymous() {
		c.Tenant = w.id.Tenant
	}
	return c
}

// job is the Runner's job of the caller.
func (w *caller) job(cj comfyui.Job, cost int) Job {
	return Job{Job: cj, Tenant: w.id.Tenant, Tier: w.id.Tier, Class: w.tier.Priority, InFlight: w.tier.InFlight, Cost: cost}
}

// tiers returns the tiers in force.
func (s *Server) tiers() *rules.Tiers {
	if s.tierSource != nil {
		if t := s.tierSource.Tiers(); t != nil {
			return t
		}
	}
	return s.builtinTiers
}

// location is the quota day's time zone of t (UTC when unset).
func location(t *rules.Tiers) *time.Location {
	if t.Location != nil {
		return t.Location
	}
	return time.UTC
}

// identify tells who calls and in which tier. A bad credential is answered
// 401, a tier the tiers document lacks 403, an identity check that could
// not be made 503; ok is then false.
func (s *Server) identify(c *gin.Context) (*caller, bool) {
	id, origin, ok := s.identity(c)
	if !ok {
		return nil, false
	}
	tiers := s.tiers()
	tier, ok := tiers.Tier(id.Tier)
	if !ok {
		s.log.Warn("caller's tier is not in the tiers document", slog.String("tenant", id.Tenant), slog.String("tier", id.Tier))
		problem.Answer(c, http.StatusForbidden, "unknown-tier",
			fmt.Sprintf("the tier %q of this credential is not defined on this gateway; ask its operator", id.Tier))
		return nil, false
	}
	return &caller{id: id, origin: origin, tier: tier, loc: location(tiers)}, true
}

// identity tells who calls, and its origin. A bad credential is answered
// 401, an identity check that could not be made 503; ok is then false.
func (s *Server) identity(c *gin.Context) (id tenant.Identity, origin string, ok bool) {
	origin = s.origin(c)
	if s.clients != nil {
		s.clients.ObserveClient(origin)
	}
	if s.identifier == nil {
		return tenant.Identity{Tenant: origin, Tier: tenant.AnonymousTier, Kind: tenant.Anonymous}, origin, true
	}
	id, err := s.identifier.Identify(c.Request, origin)
	var ae *tenant.AuthError
	switch {
	case errors.As(err, &ae):
		s.unauthorized(c, origin, ae)
		return id, origin, false
	case err != nil:
		s.log.Error("identity check failed", slog.String("ip", origin), slog.String("path", c.Request.URL.Path), slog.Any("error", err))
		problem.Write(c, Problem{Type: problem.TypeCapacity, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: "the gateway cannot check credentials now; retry shortly", RetryAfter: 1})
		return id, origin, false
	}
	return id, origin, true
}

// unauthorized answers a refused credential: 401 with WWW-Authenticate
// (RFC 6750). Neither the answer nor the log holds the credential.
func (s *Server) unauthorized(c *gin.Context, origin string, ae *tenant.AuthError) {
	kind := credentialKind(c.Request)
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "credential refused",
		slog.String("ip", origin), slog.String("path", c.Request.URL.Path), slog.String("credential", kind), slog.String("reason", ae.Reason))
	if s.refusals != nil {
		s.refusals.ObserveAuthFailure(kind)
	}
	scheme := ae.Scheme
	if scheme == "" {
		scheme = "Bearer"
	}
	c.Header("WWW-Authenticate", scheme+` realm="sluice", error="invalid_token", error_description=`+quote(ae.Reason))
	problem.Answer(c, http.StatusUnauthorized, "unauthorized", "the credential was refused: "+ae.Reason)
}

// credentialKind says which kind of credential r carries, for the
// metrics: an API key (sk_…, in X-API-Key or as the bearer), another
// bearer token (a JWT), or a header that holds none well-formed.
func credentialKind(r *http.Request) string {
	keys, auths := r.Header.Values("X-API-Key"), r.Header.Values("Authorization")
	var cred string
	switch {
	case len(keys) == 1 && len(auths) == 0:
		cred = strings.TrimSpace(keys[0])
		if !strings.HasPrefix(cred, "sk_") {
			return CredentialMalformed
		}
	case len(auths) == 1 && len(keys) == 0:
		scheme, token, ok := strings.Cut(strings.TrimSpace(auths[0]), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return CredentialMalformed
		}
		cred = strings.TrimSpace(token)
	default:
		return CredentialMalformed
	}
	switch {
	case cred == "":
		return CredentialMalformed
	case strings.HasPrefix(cred, "sk_"):
		return CredentialAPIKey
	}
	return CredentialJWT
}

// quote writes s as an HTTP quoted-string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || r > 0x7e:
			b.WriteByte('?') // quoted-string is ASCII here
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// guarded identifies the caller of a guarded endpoint of resource, sets up
// the daily quota fields of its answer, and checks that its tier may use
// the resource; ok false: answered.
func (s *Server) guarded(c *gin.Context, resource string) (*caller, bool) {
	who, ok := s.identify(c)
	if !ok {
		return nil, false
	}
	if s.quota != nil && who.tier.DailyQuota != tenant.Unlimited {
		who.daily = &dailyState{}
		c.Writer = &dailyWriter{ResponseWriter: c.Writer, add: func(h http.Header) { s.dailyFields(c.Request.Context(), who, h) }}
	}
	if len(who.tier.Resources) > 0 && !slices.Contains(who.tier.Resources, resource) {
		p := problem.New(http.StatusForbidden, "tier-forbids",
			fmt.Sprintf("the tier %q may not use %s; it may use %s", who.tier.Name, resource, strings.Join(who.tier.Resources, ", ")))
		p.Resource = resource
		problem.Write(c, p)
		return nil, false
	}
	return who, true
}

// allowSize refuses, 403, a size above the caller's tier's max_size.
func (s *Server) allowSize(c *gin.Context, who *caller, resource string, size int) bool {
	if who.tier.MaxSize <= 0 || size <= who.tier.MaxSize {
		return true
	}
	p := problem.New(http.StatusForbidden, "tier-forbids",
		fmt.Sprintf("size %d is above the largest the tier %q allows, %d", size, who.tier.Name, who.tier.MaxSize))
	p.Resource, p.Param, p.Value = resource, "size", strconv.Itoa(size)
	problem.Write(c, p)
	return false
}

// dailyState is the caller's daily quota, once known.
type dailyState struct {
	usage tenant.Usage
	known bool
	// failed: the quota store failed this request's charge; its answer
	// goes without the daily item rather than wait on the store again.
	failed bool
}

// dailyFields appends the daily quota's items to the answer's
// RateLimit-Policy and RateLimit fields (after any per-rule item of a
// refusal), reading the usage when no Take has told it.
func (s *Server) dailyFields(ctx context.Context, who *caller, h http.Header) {
	d := who.daily
	if d.failed {
		return
	}
	if !d.known {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), usageTimeout)
		defer cancel()
		u, err := s.quota.Usage(ctx, who.id.Tenant, who.tier.DailyQuota, who.loc)
		if err != nil {
			s.log.Warn("daily quota not read; the answer goes without it", slog.String("tenant", who.id.Tenant), slog.Any("error", err))
			return
		}
		d.usage, d.known = u, true
	}
	u := d.usage
	if u.Limit == tenant.Unlimited {
		return
	}
	h["Ratelimit-Policy"] = append(h["Ratelimit-Policy"], `"daily";q=`+strconv.FormatInt(u.Limit, 10)+";w=86400")
	h["Ratelimit"] = append(h["Ratelimit"], `"daily";r=`+strconv.FormatInt(u.Remaining(), 10)+";t="+strconv.FormatInt(s.secondsTo(u.Reset), 10))
}

// secondsTo is the whole seconds from now to t, rounded up, at least 0.
func (s *Server) secondsTo(t time.Time) int64 {
	return max(int64(math.Ceil(t.Sub(s.clock.Now()).Seconds())), 0)
}

// dailyWriter adds the daily quota's fields to the answer just before its
// header is written, whichever way the handler answers.
type dailyWriter struct {
	gin.ResponseWriter
	add  func(http.Header)
	done bool
}

func (w *dailyWriter) before() {
	if !w.done {
		w.done = true
		w.add(w.Header())
	}
}

func (w *dailyWriter) WriteHeaderNow() {
	w.before()
	w.ResponseWriter.WriteHeaderNow()
}

func (w *dailyWriter) Write(b []byte) (int, error) {
	w.before()
	return w.ResponseWriter.Write(b)
}

func (w *dailyWriter) WriteString(s string) (int, error) {
	w.before()
	return w.ResponseWriter.WriteString(s)
}

func (w *dailyWriter) Flush() {
	w.before()
	w.ResponseWriter.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *dailyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// charge is a request's daily quota charge. settle refunds it unless keep
// was called: deferred where the charge is taken, it refunds every path
// that ends without keeping it (an error of the gateway's, a panic)
// exactly once. A charge is used by one goroutine.
type charge struct {
	s      *Server
	ticket tenant.Ticket
	// daily, if set, is the usage the answer shows: a refund made before
	// the answer is written is shown there.
	daily *dailyState
	kept  bool
	done  bool
}

// keep keeps the charge: the job ran, or the caller ended it, or handed
// it to an async job that refunds it if it fails.
func (ch *charge) keep() {
	if ch != nil {
		ch.kept = true
	}
}

// settle refunds the charge unless it was kept; later calls do nothing.
func (ch *charge) settle() {
	if ch == nil || ch.done {
		return
	}
	ch.done = true
	if !ch.kept {
		ch.s.refund(ch.ticket)
		if ch.daily != nil && ch.daily.known {
			ch.daily.usage.Used = max(ch.daily.usage.Used-ch.ticket.Units, 0)
		}
	}
}

// take charges the caller's daily quota for an admitted call (tok). When
// the quota is spent it cancels the admission, answers 429 with
// Retry-After until the quota day ends, and returns ok false. A quota
// store that fails admits the call uncharged (logged): quotas never stop
// the service.
func (s *Server) take(c *gin.Context, who *caller, call engine.Call, tok *engine.Token) (ch *charge, ok bool) {
	if s.quota == nil {
		return nil, true
	}
	units := int64(1)
	if who.tier.QuotaUnit == "cost" {
		units = int64(max(tok.Cost, 1))
	}
	// s.quota is guarded: the charge is bounded (quotaTakeTimeout) and a
	// store that failed is left alone a while (guardedQuota).
	u, ticket, err := s.quota.Take(c.Request.Context(), who.id.Tenant, who.tier.DailyQuota, units, who.loc)
	var ex *tenant.QuotaExceeded
	switch {
	case errors.As(err, &ex):
		tok.Cancel() // refused: no job, and no one's rate spent
		if who.daily != nil {
			who.daily.usage, who.daily.known = ex.Usage, true
		}
		s.quotaExceeded(c, who, call, ex.Usage)
		return nil, false
	case err != nil && c.Request.Context().Err() != nil: // the client left
		tok.Cancel()
		c.AbortWithStatus(statusClientClosed)
		return nil, false
	case err != nil:
		s.log.Error("daily quota not charged: the quota store failed; the call is admitted",
			slog.String("tenant", who.id.Tenant), slog.String("tier", who.id.Tier), slog.Any("error", err))
		if who.daily != nil {
			who.daily.failed = true
		}
		return nil, true
	}
	if who.daily != nil {
		who.daily.usage, who.daily.known = u, true
	}
	return &charge{s: s, ticket: ticket, daily: who.daily}, true
}

// quotaExceeded answers a call over its tier's daily quota, 429 until the
// quota day ends, and logs it as a refusal.
func (s *Server) quotaExceeded(c *gin.Context, who *caller, call engine.Call, u tenant.Usage) {
	retry := problem.RetrySeconds(u.Reset.Sub(s.clock.Now()))
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "request refused",
		slog.String("ip", who.origin),
		slog.String("tenant", who.id.Tenant),
		slog.String("tier", who.id.Tier),
		slog.String("resource", call.Resource),
		slog.Int("size", call.Size),
		slog.String("rule", "daily quota"),
		slog.String("kind", "quota"),
		slog.Int64("threshold", u.Limit),
		slog.Int("retry_after", retry))
	if s.log.Enabled(c.Request.Context(), slog.LevelDebug) {
		c.Set(refusedKey, true)
	}
	if s.refusals != nil {
		s.refusals.ObserveQuotaRefusal(call.Resource, who.id.Tier)
	}
	problem.Write(c, Problem{Type: problem.TypeQuota, Title: "Too Many Requests", Status: http.StatusTooManyRequests,
		Detail: fmt.Sprintf("the daily quota of tier %q is spent: %d of %d %s used on %s; it resets at %s",
			who.tier.Name, u.Used, u.Limit, quotaUnit(who.tier), u.Day, u.Reset.Format(time.RFC3339)),
		Resource: call.Resource, Rule: "daily quota", Kind: "quota", RetryAfter: retry})
}

func quotaUnit(t rules.Tier) string {
	if t.QuotaUnit == "cost" {
		return "cost units"
	}
	return "jobs"
}

// refund gives a charge back; a failure is logged.
func (s *Server) refund(t tenant.Ticket) {
	if s.quota == nil || t.Units <= 0 {
		return
	}
	refundTicket(s.quota, s.log, t)
}

func refundTicket(q Quota, log *slog.Logger, t tenant.Ticket) {
	ctx, cancel := context.WithTimeout(context.Background(), refundTimeout)
	defer cancel()
	if err := q.Refund(ctx, t); err != nil {
		log.Error("quota refund failed", slog.String("tenant", t.Tenant), slog.String("day", t.Day), slog.Int64("units", t.Units), slog.Any("error", err))
	}
}

// RefundJobs returns the jobs.Config.Refund hook that gives back the quota
// ticket of an async job that failed on the gateway's side. A Server that
// makes its own job manager sets it; one given Config.AsyncJobs needs it
// set there.
func RefundJobs(q Quota, log *slog.Logger) func(jobs.Job) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(j jobs.Job) {
		if q == nil || j.Ticket.Units <= 0 {
			return
		}
		log.Info("quota refunded for a job that failed", slog.String("job", j.ID), slog.String("tenant", j.Ticket.Tenant), slog.Int64("units", j.Ticket.Units))
		refundTicket(q, log, j.Ticket)
	}
}

// inFlight counts each tenant's jobs admitted and not ended, sync and
// async: what GET /api/me tells. It is safe for concurrent use.
type inFlight struct {
	mu sync.Mutex
	n  map[string]int
}

// add counts a job of tenantName in; the function it returns counts it
// out (once, however often it is called).
func (f *inFlight) add(tenantName string) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil {
		f.n = make(map[string]int)
	}
	f.n[tenantName]++
	return sync.OnceFunc(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.n[tenantName]--; f.n[tenantName] <= 0 {
			delete(f.n, tenantName)
		}
	})
}

func (f *inFlight) count(tenantName string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[tenantName]
}
