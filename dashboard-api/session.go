package dashboardapi

import (
	"log/slog"
	"net/http"

	"github.com/gin-gonic/gin"

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
