package console

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"path"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/console/web"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// Source is what the live feed samples: *engine.Engine.
type Source interface {
	Stats() []engine.ResourceStats
	System() engine.SystemStatus
}

// Config configures the console.
type Config struct {
	// Engine is sampled for the live feed; required.
	Engine Source
	// Backends reports the GPU farm for the live feed; nil: none.
	Backends func() dispatch.Stats
	// AdminToken is what the login form takes, and keys the session
	// cookies. Empty: the console is read-only (login answers 403).
	AdminToken string
	// ProtectReads makes /api/live need a login or the bearer token (the
	// operator API's reads need them too: see dashboardapi.Config.Session).
	ProtectReads bool
	// TrustedProxies are the CIDRs or addresses whose X-Forwarded-Proto is
	// believed: "https" from one makes the session cookie Secure.
	TrustedProxies []string
	// Clock drives the live feed's sampling, session expiry and the login
	// limit; the system clock by default.
	Clock clock.Clock
	// IPv6Prefix is the prefix length that identifies an IPv6 client for
	// the limit on wrong admin tokens (sluice serve's --ipv6-prefix; 0:
	// 64), as the public API's per-origin rules take it.
	IPv6Prefix int
	// Interval is how often the live feed samples (default 1s).
	Interval time.Duration
	Logger   *slog.Logger
}

// Console serves the web console. It implements dashboardapi.Session:
// pass it as the operator API's Config.Session so that the page's writes
// (cookie + X-CSRF-Token) are authorized. Close stops its live feed.
type Console struct {
	cfg      Config
	log      *slog.Logger
	sessions *sessions
	token    tokenHash
	limiter  *dashboardapi.TokenLimiter
	hub      *hub
	page     asset
	assets   map[string]asset
}

// asset is one embedded file, ready to serve.
type asset struct {
	name, ctype, etag string
	data              []byte
}

// contentSecurityPolicy lets the page load only its own scripts, styles,
// images and fonts, and talk only to its own origin.
const contentSecurityPolicy = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Register mounts the console on r: the page at /dashboard, its assets
// under /dashboard/assets/, POST /dashboard/login and /dashboard/logout,
// GET /dashboard/session and the live feed GET /api/live. It starts the
// live feed; Close stops it.
func Register(r gin.IRouter, cfg Config) (*Console, error) {
	if cfg.Engine == nil {
		return nil, errors.New("console: an engine is required")
	}
	if cfg.ProtectReads && cfg.AdminToken == "" {
		return nil, errors.New("console: protecting reads needs an admin token")
	}
	if cfg.IPv6Prefix < 0 || cfg.IPv6Prefix > 128 {
		return nil, fmt.Errorf("console: IPv6Prefix must be from 1 to 128, got %d", cfg.IPv6Prefix)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	cfg.Clock = clock.Or(cfg.Clock)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	trusted, err := parseProxies(cfg.TrustedProxies)
	if err != nil {
		return nil, err
	}
	assets, err := loadAssets(web.Files)
	if err != nil {
		return nil, err
	}
	page, ok := assets["index.html"]
	if !ok {
		return nil, errors.New("console: the embedded page index.html is missing")
	}
	c := &Console{cfg: cfg, log: log, sessions: newSessions(cfg.AdminToken, cfg.Clock, trusted),
		token: hashToken(cfg.AdminToken), limiter: dashboardapi.NewTokenLimiter(cfg.Clock, cfg.IPv6Prefix), page: page, assets: assets}
	c.hub = newHub(cfg.Engine, cfg.Backends, cfg.Clock, cfg.Interval, log)

	r.GET("/dashboard", c.index)
	r.GET("/dashboard/", c.index)
	r.GET("/dashboard/assets/*file", c.asset)
	r.GET("/dashboard/session", c.session)
	r.POST("/dashboard/login", c.login)
	r.POST("/dashboard/logout", c.logout)
	r.GET("/api/live", c.live)
	return c, nil
}

// Close ends the live feed's streams and stops its sampling. Call it when
// the server's shutdown begins (http.Server.RegisterOnShutdown): streams
// never end by themselves, and a graceful shutdown waits for them.
func (c *Console) Close() { c.hub.close() }

// Viewers is the number of /api/live streams open now.
func (c *Console) Viewers() int { return int(c.hub.viewers.Load()) }

// Authorized reports whether r carries a valid session and, for methods
// other than GET and HEAD, comes from the same site with the session's
// X-CSRF-Token: dashboardapi.Session.
func (c *Console) Authorized(r *http.Request) bool { return c.sessions.authorized(r) }

// Limiter is the limit on wrong admin tokens that the login and the live
// feed's bearer token share: pass it as the operator API's
// Config.Limiter so that its bearer token shares it too.
func (c *Console) Limiter() dashboardapi.Limiter { return c.limiter }

// Carries reports whether r carries a session cookie, valid or not: the
// operator API then answers a refused request 403 rather than 401.
func (c *Console) Carries(r *http.Request) bool {
	ck, err := r.Cookie(CookieName)
	return err == nil && ck.Value != ""
}

func parseProxies(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("console: trusted proxy %q: want a CIDR or an address", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// loadAssets reads every embedded file with its type and ETag.
func loadAssets(fsys fs.FS) (map[string]asset, error) {
	out := map[string]asset{}
	err := fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(name, ".go") {
			return err
		}
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return fmt.Errorf("console: embedded %s: %w", name, err)
		}
		sum := sha256.Sum256(data)
		out[name] = asset{name: name, ctype: contentType(name), data: data,
			etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	return out, err
}

func contentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js", ".mjs":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".json", ".map":
		return "application/json"
	case ".txt", ".md", "":
		return "text/plain; charset=utf-8"
	}
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// serve answers a with the security headers every console file carries;
// If-None-Match gets 304.
func serve(c *gin.Context, a asset, cacheControl string) {
	h := c.Writer.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", cacheControl)
	h.Set("ETag", a.etag)
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	http.ServeContent(c.Writer, c.Request, a.name, time.Time{}, bytes.NewReader(a.data))
}

// index serves the page. It holds no data: with ProtectReads the page
// shows the login form until /dashboard/session says logged in, and every
// read it makes needs the session.
func (c *Console) index(g *gin.Context) { serve(g, c.page, "no-cache") }

// asset serves an embedded asset: revalidated by ETag, kept up to an hour
// when unchanged so that an upgrade shows at the next load.
func (c *Console) asset(g *gin.Context) {
	name := path.Clean("assets/" + strings.TrimPrefix(g.Param("file"), "/"))
	a, ok := c.assets[name]
	if !ok || !strings.HasPrefix(name, "assets/") {
		problem.Answer(g, http.StatusNotFound, "not-found", "no console asset "+g.Param("file"))
		return
	}
	serve(g, a, "no-cache")
}

// sessionBody is GET /dashboard/session's answer.
type sessionBody struct {
	LoggedIn bool `json:"logged_in"`
	CanWrite bool `json:"can_write"`
	// ReadOnly: no admin token is configured, nobody can log in.
	ReadOnly     bool `json:"read_only"`
	ProtectReads bool `json:"protect_reads"`
	// CSRFToken goes in X-CSRF-Token on every state-changing request;
	// empty when not logged in.
	CSRFToken string    `json:"csrf_token"`
	Expires   time.Time `json:"expires,omitzero"`
}

func (c *Console) session(g *gin.Context) {
	g.Header("Cache-Control", "no-store")
	body := sessionBody{ReadOnly: c.token == nil, ProtectReads: c.cfg.ProtectReads}
	if sess, ok := c.sessions.fromRequest(g.Request); ok {
		body.LoggedIn, body.CanWrite, body.CSRFToken, body.Expires = true, true, c.sessions.csrf(sess), sess.expires.UTC()
	}
	g.JSON(http.StatusOK, body)
}

// maxLoginBody bounds a login request's body.
const maxLoginBody = 4 << 10

// login checks the admin token and sets the session cookie: 204, 401
// wrong token, 403 no admin token configured or a cross-site request, 429
// too many wrong tokens from this client. The token is never logged.
func (c *Console) login(g *gin.Context) {
	if c.crossSite(g) {
		return
	}
	if c.token == nil {
		problem.Answer(g, http.StatusForbidden, "read-only",
			"no admin token configured: the dashboard is read-only (start sluice serve with --admin-token or $SLUICE_ADMIN_TOKEN to log in and change rules)")
		return
	}
	token, err := loginToken(g)
	if err != nil {
		problem.Answer(g, http.StatusBadRequest, "bad-request", err.Error())
		return
	}
	// The attempt is reserved before the token is compared, so that
	// parallel guesses count as they are made.
	client := g.ClientIP()
	if dashboardapi.Limited(g, c.limiter, client) {
		return
	}
	if !equalToken(c.token, token) {
		c.limiter.Failed(client)
		c.log.Warn("console: login with a wrong admin token", slog.String("remote", client))
		problem.Answer(g, http.StatusUnauthorized, "unauthorized", "that is not the admin token")
		return
	}
	c.limiter.Succeeded(client)
	value, _ := c.sessions.issue()
	http.SetCookie(g.Writer, c.sessions.cookie(g.Request, value, int(SessionTTL/time.Second)))
	c.log.Info("console: logged in", slog.String("remote", client))
	g.Status(http.StatusNoContent)
}

// loginToken reads the token of a login: JSON {"token": "..."} or a form
// with token=.
func loginToken(g *gin.Context) (string, error) {
	body := http.MaxBytesReader(g.Writer, g.Request.Body, maxLoginBody)
	ct, _, _ := mime.ParseMediaType(g.GetHeader("Content-Type"))
	var token *string
	switch ct {
	case "application/x-www-form-urlencoded", "multipart/form-data":
		g.Request.Body = body
		if err := g.Request.ParseMultipartForm(maxLoginBody); err != nil && !errors.Is(err, http.ErrNotMultipart) {
			return "", fmt.Errorf("reading the form: %w", err)
		}
		if v, ok := g.Request.PostForm["token"]; ok && len(v) == 1 {
			token = &v[0]
		}
	default:
		if err := problem.DecodeObject(body, problem.Field{Name: "token", Into: &token}); err != nil {
			return "", fmt.Errorf(`%w; send {"token": "<admin token>"} or a form with token=`, err)
		}
	}
	if token == nil || *token == "" {
		return "", errors.New(`no token: send {"token": "<admin token>"} or a form with token=`)
	}
	return *token, nil
}

// logout ends the session: the cookie is deleted, and the session is
// refused from now on by this replica (the others accept it until it
// expires, or until the admin token changes).
func (c *Console) logout(g *gin.Context) {
	if c.crossSite(g) {
		return
	}
	if sess, ok := c.sessions.fromRequest(g.Request); ok {
		c.sessions.revoke(sess)
		c.log.Info("console: logged out", slog.String("remote", g.ClientIP()))
	}
	http.SetCookie(g.Writer, c.sessions.cookie(g.Request, "", -1))
	g.Status(http.StatusNoContent)
}

// crossSite answers 403, and reports true, for a request another site's
// page made (by Sec-Fetch-Site, or an Origin that is not this host).
func (c *Console) crossSite(g *gin.Context) bool {
	if err := c.sessions.xorigin.Check(g.Request); err != nil {
		c.log.Warn("console: cross-site request refused", slog.String("path", g.Request.URL.Path),
			slog.String("origin", g.GetHeader("Origin")), slog.String("remote", g.ClientIP()))
		problem.Answer(g, http.StatusForbidden, "cross-site", "cross-site requests are refused")
		return true
	}
	return false
}

// live serves the live feed; with ProtectReads it needs a session or the
// bearer token. A stream a session authorized ends when the session
// expires or logs out.
func (c *Console) live(g *gin.Context) {
	var end liveEnd
	if c.cfg.ProtectReads {
		if sess, ok := c.sessions.fromRequest(g.Request); ok {
			var stop func()
			end, stop = c.sessions.watch(sess)
			defer stop()
		} else if !c.bearerAllowed(g) {
			return
		}
	}
	c.hub.stream(g, end)
}

// bearerAllowed reports whether g carries the admin token as its bearer
// credentials, within the limit on wrong tokens; otherwise it answers.
func (c *Console) bearerAllowed(g *gin.Context) bool {
	token, ok := bearerToken(g.Request)
	if !ok {
		g.Header("WWW-Authenticate", `Bearer realm="sluice"`)
		problem.Answer(g, http.StatusUnauthorized, "unauthorized",
			"the live feed needs a login (--protect-reads): log in to the dashboard, or send Authorization: Bearer <token>")
		return false
	}
	client := g.ClientIP()
	if dashboardapi.Limited(g, c.limiter, client) {
		return false
	}
	if !equalToken(c.token, token) {
		c.limiter.Failed(client)
		c.log.Warn("console: live feed with a wrong admin token", slog.String("remote", client))
		g.Header("WWW-Authenticate", `Bearer realm="sluice"`)
		problem.Answer(g, http.StatusUnauthorized, "unauthorized", "the bearer token is not the admin token")
		return false
	}
	c.limiter.Succeeded(client)
	return true
}
