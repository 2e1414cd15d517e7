package dashboardapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// Session authorizes requests by a login of the web console (package
// adapters/console implements it): a valid session cookie and, for
// methods other than GET and HEAD, the session's X-CSRF-Token header.
type Session interface {
	Authorized(r *http.Request) bool
}

// sessionCarrier is a Session that can tell a request carrying a session
// (valid or not) from one carrying none: a refused one is then answered
// 403 (the session is expired or its CSRF token is wrong), not 401.
type sessionCarrier interface {
	Carries(r *http.Request) bool
}

// sessionAuthorized reports whether Config.Session lets c through, and
// otherwise answers it (401 with no session, 403 with a refused one).
func (a *api) sessionAuthorized(c *gin.Context) bool {
	s := a.cfg.Session
	if s.Authorized(c.Request) {
		return true
	}
	if sc, ok := s.(sessionCarrier); ok && sc.Carries(c.Request) {
		a.log.Warn("operator API: dashboard session refused",
			slog.String("method", c.Request.Method), slog.String("path", c.Request.URL.Path),
			slog.String("remote", c.ClientIP()))
		writeProblem(c, http.StatusForbidden, "forbidden",
			"the dashboard session does not allow this request: it has expired, or the X-CSRF-Token header is missing or wrong, or the request is cross-site", nil)
		return false
	}
	c.Header("WWW-Authenticate", `Bearer realm="sluice"`)
	writeProblem(c, http.StatusUnauthorized, "unauthorized",
		"this endpoint needs the admin token: send Authorization: Bearer <token>, or log in to the dashboard", nil)
	return false
}

// BackendsBody is the body of GET /api/backends for st: the web console's
// live feed carries the same.
func BackendsBody(st dispatch.Stats) gin.H { return backendsBody(st) }

// Limiter limits the guesses at the admin token that one client origin
// may make: the console's login, the operator API's bearer token and the
// live feed's share one (adapters/console exposes it as Console.Limiter).
// client is the request's address as gin's ClientIP reads it.
type Limiter interface {
	// Allow reserves one attempt for client, before its token is
	// compared; with none left it reports false and how long to wait.
	// After true, call Failed or Succeeded once.
	Allow(client string) (retryAfter time.Duration, ok bool)
	// Failed counts the reserved attempt as a wrong token.
	Failed(client string)
	// Succeeded ends the reservation: the right token clears client's
	// count and marks its origin clean.
	Succeeded(client string)
}

// Token guesses: an origin that sent TokenFailures wrong tokens within
// TokenWindow, counting the attempts being checked, may not try again
// until the window ends.
const (
	TokenFailures = 5
	TokenWindow   = time.Minute
	// maxLimited bounds the origins tracked. Beyond it, origins with no
	// entry of their own share one count (a flood from many origins slows
	// every newcomer's guesses rather than escaping the limit), except
	// those that sent the right token lately (maxClean of them, for
	// cleanFor), which keep their own.
	maxLimited = 10000
	maxClean   = 1024
	cleanFor   = 12 * time.Hour
	sharedKey  = "*"
)

// TokenLimiter is the Limiter: fixed windows of TokenWindow on its clock
// per client origin (httpapi.Origin: an IPv6 client is its prefix, so
// rotating addresses within it gains nothing).
type TokenLimiter struct {
	clock    clock.Clock
	ipv6Bits int

	mu      sync.Mutex
	clients map[string]*attempts
	clean   map[string]time.Time // origins that sent the right token, when
	// reserved holds, per origin, the counts its attempts in progress
	// were reserved on, oldest first: the release goes to the same count
	// even if the origin maps to another one by then (the shared one
	// when the table was full, its own since).
	reserved map[string][]*attempts
}

type attempts struct {
	since           time.Time
	failed, pending int
}

// NewTokenLimiter returns a Limiter on c (nil: the system clock) that
// takes an IPv6 client as its ipv6Bits prefix (0: 64).
func NewTokenLimiter(c clock.Clock, ipv6Bits int) *TokenLimiter {
	if ipv6Bits <= 0 || ipv6Bits > 128 {
		ipv6Bits = 64
	}
	return &TokenLimiter{clock: clock.Or(c), ipv6Bits: ipv6Bits, clients: map[string]*attempts{}, clean: map[string]time.Time{}, reserved: map[string][]*attempts{}}
}

// entryLocked is the count client's origin uses, created when create.
func (l *TokenLimiter) entryLocked(client string, now time.Time, create bool) *attempts {
	o := httpapi.Origin(client, l.ipv6Bits)
	if a := l.clients[o]; a != nil {
		return a
	}
	if len(l.clients) >= maxLimited {
		l.pruneLocked(now)
	}
	if len(l.clients) >= maxLimited {
		if t, ok := l.clean[o]; !ok || !now.Before(t.Add(cleanFor)) {
			o = sharedKey
			if a := l.clients[o]; a != nil || !create {
				return a
			}
		}
	}
	if !create {
		return nil
	}
	a := &attempts{since: now}
	l.clients[o] = a
	return a
}

// Allow implements Limiter.
func (l *TokenLimiter) Allow(client string) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	a := l.entryLocked(client, now, true)
	if !now.Before(a.since.Add(TokenWindow)) {
		a.since, a.failed = now, 0
	}
	if a.failed+a.pending >= TokenFailures {
		return max(a.since.Add(TokenWindow).Sub(now), time.Second), false
	}
	a.pending++
	o := httpapi.Origin(client, l.ipv6Bits)
	l.reserved[o] = append(l.reserved[o], a)
	return 0, true
}

// releaseLocked ends the oldest attempt in progress of origin o, on the
// count it was reserved on.
func (l *TokenLimiter) releaseLocked(o string) {
	r := l.reserved[o]
	if len(r) == 0 {
		return
	}
	if r[0].pending > 0 {
		r[0].pending--
	}
	if len(r) == 1 {
		delete(l.reserved, o)
		return
	}
	l.reserved[o] = r[1:]
}

// Failed implements Limiter.
func (l *TokenLimiter) Failed(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.releaseLocked(httpapi.Origin(client, l.ipv6Bits))
	a := l.entryLocked(client, now, true)
	if !now.Before(a.since.Add(TokenWindow)) {
		a.since, a.failed = now, 0
	}
	a.failed++
}

// Succeeded implements Limiter.
func (l *TokenLimiter) Succeeded(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	o := httpapi.Origin(client, l.ipv6Bits)
	l.releaseLocked(o)
	delete(l.clients, o)
	if _, ok := l.clean[o]; !ok && len(l.clean) >= maxClean {
		oldest, first := "", true
		for k, t := range l.clean {
			if first || t.Before(l.clean[oldest]) {
				oldest, first = k, false
			}
		}
		delete(l.clean, oldest)
	}
	l.clean[o] = now
}

func (l *TokenLimiter) pruneLocked(now time.Time) {
	for k, a := range l.clients {
		if a.pending == 0 && !now.Before(a.since.Add(TokenWindow)) {
			delete(l.clients, k)
		}
	}
}

// Limited answers 429 with Retry-After, and reports true, when client has
// no attempt left; otherwise it has reserved one (the caller reports it
// Failed or Succeeded). The console's login and live feed answer with it
// too: one limit, one answer.
func Limited(c *gin.Context, l Limiter, client string) bool {
	wait, ok := l.Allow(client)
	if ok {
		return false
	}
	p := problem.New(http.StatusTooManyRequests, "too-many-tokens",
		fmt.Sprintf("too many wrong admin tokens from this address: try again in %d s", problem.RetrySeconds(wait)))
	p.RetryAfter = problem.RetrySeconds(wait)
	problem.Write(c, p)
	return true
}
