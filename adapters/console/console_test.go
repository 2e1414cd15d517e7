package console_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/console"
	"github.com/sluicehq/sluice/adapters/console/web"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

const testToken = "s3cret-admin-token"

var start = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// fakeSource is a Source whose statistics the test sets.
type fakeSource struct {
	mu     sync.Mutex
	passed uint64
}

func (f *fakeSource) Stats() []engine.ResourceStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []engine.ResourceStats{{Resource: "zimage_generate", Passed: f.passed}}
}

func (f *fakeSource) System() engine.SystemStatus { return engine.SystemStatus{CPUUsage: 0.25} }

func (f *fakeSource) add(n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.passed += n
}

// fakeWriter is the operator API's rule writer: it counts the writes that
// reach it.
type fakeWriter struct {
	mu   sync.Mutex
	puts int
}

func (w *fakeWriter) Put(context.Context, string, []byte) (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.puts++
	return int64(w.puts), nil
}

func (w *fakeWriter) Delete(context.Context, string) (int64, error) {
	return 0, dashboardapi.ErrNotFound
}

func (w *fakeWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.puts
}

type fakeSim struct {
	mu   sync.Mutex
	used float64
}

func (f *fakeSim) VRAMUsed() []float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []float64{f.used}
}

func (f *fakeSim) SetVRAMUsed(r float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.used = r
}

// rig is a router with the console and the operator API mounted as serve
// mounts them.
type rig struct {
	router *gin.Engine
	con    *console.Console
	clock  *clock.Fake
	src    *fakeSource
	writer *fakeWriter
	sim    *fakeSim
	logs   *bytes.Buffer
	// checked is router, each answer checked against the OpenAPI document.
	checked http.Handler
}

func newRig(t *testing.T, cfg console.Config) *rig {
	t.Helper()
	gin.SetMode(gin.TestMode)
	rg := &rig{router: gin.New(), clock: clock.NewFake(start), src: &fakeSource{}, writer: &fakeWriter{}, sim: &fakeSim{used: 0.3}, logs: &bytes.Buffer{}}
	if err := rg.router.SetTrustedProxies(nil); err != nil {
		t.Fatal(err)
	}
	if cfg.Engine == nil {
		cfg.Engine = rg.src
	}
	cfg.Clock = rg.clock
	cfg.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: rg.logs}, nil))
	con, err := console.Register(rg.router, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(con.Close)
	rg.con = con
	// Every answer the tests get is checked against the API document.
	rg.checked = openapitest.Handler(t, rg.router)
	if err := dashboardapi.Register(rg.router, dashboardapi.Config{Engine: testEngine(t), AdminToken: cfg.AdminToken,
		ProtectReads: cfg.ProtectReads, Writer: rg.writer, Simulator: rg.sim, Session: con, Limiter: con.Limiter(), Logger: cfg.Logger}); err != nil {
		t.Fatal(err)
	}
	return rg
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func testEngine(t *testing.T) *engine.Engine {
	t.Helper()
	eng, err := engine.New(engine.Options{Namespace: fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1)), CPU: idleCPU{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	return eng
}

// engineSeq tells apart the engines of one test: sentinel-golang keeps
// statistics per namespace, process-wide.
var engineSeq atomic.Int64

type idleCPU struct{}

func (idleCPU) CPUUsage() (float64, error) { return 0.1, nil }

// req is one request to send in process.
type req struct {
	method, path, body, contentType string
	header                          map[string]string
	cookie                          *http.Cookie
	peer                            string
}

func (rg *rig) do(r req) *httptest.ResponseRecorder {
	hr := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
	hr.RemoteAddr = "192.0.2.10:1234"
	if r.peer != "" {
		hr.RemoteAddr = r.peer
	}
	if r.contentType != "" {
		hr.Header.Set("Content-Type", r.contentType)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	if r.cookie != nil {
		hr.AddCookie(r.cookie)
	}
	rec := httptest.NewRecorder()
	rg.checked.ServeHTTP(rec, hr)
	return rec
}

func (rg *rig) login(t *testing.T, token string) *httptest.ResponseRecorder {
	t.Helper()
	return rg.do(req{method: http.MethodPost, path: "/dashboard/login", body: `{"token": "` + token + `"}`, contentType: "application/json"})
}

// sessionCookie logs in and returns the cookie.
func (rg *rig) sessionCookie(t *testing.T) *http.Cookie {
	t.Helper()
	rec := rg.login(t, testToken)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("login: %d %s", rec.Code, rec.Body)
	}
	return cookieOf(t, rec)
}

func cookieOf(t *testing.T, rec *httptest.ResponseRecorder) *http.Cookie {
	t.Helper()
	for _, c := range rec.Result().Cookies() {
		if c.Name == console.CookieName {
			return c
		}
	}
	t.Fatalf("no %s cookie in %q", console.CookieName, rec.Header().Values("Set-Cookie"))
	return nil
}

type sessionBody struct {
	LoggedIn     bool   `json:"logged_in"`
	CanWrite     bool   `json:"can_write"`
	ReadOnly     bool   `json:"read_only"`
	ProtectReads bool   `json:"protect_reads"`
	CSRFToken    string `json:"csrf_token"`
}

func (rg *rig) session(t *testing.T, ck *http.Cookie) sessionBody {
	t.Helper()
	rec := rg.do(req{method: http.MethodGet, path: "/dashboard/session", cookie: ck})
	if rec.Code != http.StatusOK {
		t.Fatalf("session: %d %s", rec.Code, rec.Body)
	}
	var b sessionBody
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoginSetsAStrictHttpOnlyCookie(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	if got := rg.session(t, nil); got.LoggedIn || got.CanWrite || got.ReadOnly || got.CSRFToken != "" {
		t.Fatalf("before login: %+v", got)
	}
	for _, tc := range []struct{ name, body, ctype string }{
		{"json", `{"token": "` + testToken + `"}`, "application/json"},
		{"form", url.Values{"token": {testToken}}.Encode(), "application/x-www-form-urlencoded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := rg.do(req{method: http.MethodPost, path: "/dashboard/login", body: tc.body, contentType: tc.ctype})
			if rec.Code != http.StatusNoContent {
				t.Fatalf("login: %d %s", rec.Code, rec.Body)
			}
			ck := cookieOf(t, rec)
			if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.Secure || ck.MaxAge != 12*3600 {
				t.Fatalf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not Secure over plain HTTP, 12 h", ck)
			}
			if strings.Contains(ck.Value, testToken) {
				t.Fatal("the cookie carries the admin token")
			}
			got := rg.session(t, ck)
			if !got.LoggedIn || !got.CanWrite || got.ReadOnly || len(got.CSRFToken) < 20 {
				t.Fatalf("after login: %+v", got)
			}
		})
	}
}

func TestCookieSecureBehindTLS(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken, TrustedProxies: []string{"10.0.0.0/8"}})
	for _, tc := range []struct {
		name   string
		peer   string
		proto  string
		tls    bool
		secure bool
	}{
		{"plain HTTP", "192.0.2.1:1", "", false, false},
		{"TLS", "192.0.2.1:1", "", true, true},
		{"a trusted proxy says https", "10.1.2.3:1", "https", false, true},
		{"an untrusted peer says https", "192.0.2.1:1", "https", false, false},
		{"a trusted proxy says http", "10.1.2.3:1", "http", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hr := httptest.NewRequest(http.MethodPost, "/dashboard/login", strings.NewReader(`{"token": "`+testToken+`"}`))
			hr.RemoteAddr = tc.peer
			if tc.proto != "" {
				hr.Header.Set("X-Forwarded-Proto", tc.proto)
			}
			if tc.tls {
				hr.TLS = &tls.ConnectionState{}
			}
			rec := httptest.NewRecorder()
			rg.router.ServeHTTP(rec, hr)
			if ck := cookieOf(t, rec); ck.Secure != tc.secure {
				t.Fatalf("Secure = %v, want %v", ck.Secure, tc.secure)
			}
		})
	}
}

func TestLoginWrongTokenIsLimitedAndNotLogged(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	const guess = "guessed-token-1234"
	for i := range 5 {
		if rec := rg.login(t, guess); rec.Code != http.StatusUnauthorized {
			t.Fatalf("wrong token #%d: %d, want 401", i+1, rec.Code)
		}
	}
	rec := rg.login(t, testToken)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "60" {
		t.Fatalf("after 5 wrong tokens, the right one: %d (Retry-After %q), want 429 after 60 s", rec.Code, rec.Header().Get("Retry-After"))
	}
	if len(rec.Result().Cookies()) != 0 {
		t.Fatal("a limited login set a cookie")
	}
	// Another client is not held up.
	other := rg.do(req{method: http.MethodPost, path: "/dashboard/login", body: `{"token": "` + testToken + `"}`, contentType: "application/json", peer: "198.51.100.7:1"})
	if other.Code != http.StatusNoContent {
		t.Fatalf("another client: %d", other.Code)
	}
	rg.clock.Advance(59 * time.Second)
	if rec := rg.login(t, testToken); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("59 s later: %d, want 429", rec.Code)
	}
	rg.clock.Advance(time.Second)
	if rec := rg.login(t, testToken); rec.Code != http.StatusNoContent {
		t.Fatalf("a minute later: %d, want 204", rec.Code)
	}
	logs := rg.logs.String()
	if strings.Count(logs, "login with a wrong admin token") != 5 || !strings.Contains(logs, "remote=192.0.2.10") {
		t.Fatalf("want 5 warnings naming the client, got:\n%s", logs)
	}
	if strings.Contains(logs, guess) || strings.Contains(logs, testToken) {
		t.Fatalf("a token is in the logs:\n%s", logs)
	}
}

func TestReadOnlyWithoutAdminToken(t *testing.T) {
	rg := newRig(t, console.Config{})
	rec := rg.login(t, "anything")
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "read-only") || !strings.Contains(rec.Body.String(), "--admin-token") {
		t.Fatalf("login without a token configured: %d %s", rec.Code, rec.Body)
	}
	if got := rg.session(t, nil); !got.ReadOnly || got.LoggedIn || got.CanWrite {
		t.Fatalf("session: %+v, want read_only", got)
	}
	if _, err := console.Register(gin.New(), console.Config{Engine: &fakeSource{}, ProtectReads: true}); err == nil {
		t.Fatal("ProtectReads without an admin token: no error")
	}
}

func TestLoginRefusesCrossSiteRequests(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site"},
		{"Origin": "https://evil.example"},
	} {
		rec := rg.do(req{method: http.MethodPost, path: "/dashboard/login", body: `{"token": "` + testToken + `"}`, contentType: "application/json", header: h})
		if rec.Code != http.StatusForbidden || len(rec.Result().Cookies()) != 0 {
			t.Fatalf("%v: %d, cookies %v; want 403 and none", h, rec.Code, rec.Result().Cookies())
		}
	}
	same := rg.do(req{method: http.MethodPost, path: "/dashboard/login", body: `{"token": "` + testToken + `"}`, contentType: "application/json",
		header: map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://example.com"}})
	if same.Code != http.StatusNoContent {
		t.Fatalf("same-origin login: %d %s", same.Code, same.Body)
	}
}

func TestSessionExpiresAfter12Hours(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	ck := rg.sessionCookie(t)
	rg.clock.Advance(12*time.Hour - time.Second)
	if !rg.session(t, ck).LoggedIn {
		t.Fatal("not logged in a second before 12 h")
	}
	rg.clock.Advance(time.Second)
	if rg.session(t, ck).LoggedIn {
		t.Fatal("still logged in after 12 h")
	}
}

func TestSessionSharedByReplicasEndedByNewToken(t *testing.T) {
	a := newRig(t, console.Config{AdminToken: testToken})
	replica := newRig(t, console.Config{AdminToken: testToken})
	rotated := newRig(t, console.Config{AdminToken: "the-new-token"})
	ck := a.sessionCookie(t)
	if !replica.session(t, ck).LoggedIn {
		t.Fatal("a replica with the same token refused the session")
	}
	if rotated.session(t, ck).LoggedIn {
		t.Fatal("a gateway with another token accepted the session")
	}
	forged := *ck
	v := []byte(ck.Value)
	v[len(v)-5] ^= 'A' ^ 'B' // a letter of the signature, another letter
	forged.Value = string(v)
	if a.session(t, &forged).LoggedIn {
		t.Fatal("a cookie with a forged signature was accepted")
	}
}

// TestDashboardWritesNeedTheCSRFToken drives the operator API's writes
// with the console's session, as the page does.
func TestDashboardWritesNeedTheCSRFToken(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken, ProtectReads: true})
	ck := rg.sessionCookie(t)
	csrf := rg.session(t, ck).CSRFToken
	for _, tc := range []struct {
		name   string
		cookie *http.Cookie
		header map[string]string
		want   int
	}{
		{"no credentials", nil, nil, 401},
		{"cookie without the CSRF header", ck, nil, 403},
		{"cookie with a wrong CSRF token", ck, map[string]string{console.CSRFHeader: "x" + csrf}, 403},
		{"cookie and CSRF token from another site", ck, map[string]string{console.CSRFHeader: csrf, "Sec-Fetch-Site": "cross-site"}, 403},
		{"CSRF token without the cookie", nil, map[string]string{console.CSRFHeader: csrf}, 401},
		{"cookie and CSRF token", ck, map[string]string{console.CSRFHeader: csrf, "Sec-Fetch-Site": "same-origin"}, 200},
		{"bearer token", nil, map[string]string{"Authorization": "Bearer " + testToken}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			puts, used := rg.writer.count(), rg.sim.VRAMUsed()[0]
			rule := rg.do(req{method: http.MethodPut, path: "/api/rules/ddcolor_person", body: "resource: ddcolor_person\nflow: [{threshold: 5}]\n", cookie: tc.cookie, header: tc.header})
			sim := rg.do(req{method: http.MethodPut, path: "/api/simulator/vram", body: `{"used_ratio": 0.9}`, cookie: tc.cookie, header: tc.header})
			if rule.Code != tc.want || sim.Code != tc.want {
				t.Fatalf("PUT rules %d %s, PUT simulator %d %s; want %d", rule.Code, rule.Body, sim.Code, sim.Body, tc.want)
			}
			wrote := rg.writer.count() > puts || rg.sim.VRAMUsed()[0] != used
			if wrote != (tc.want == 200) {
				t.Fatalf("wrote = %v with status %d", wrote, tc.want)
			}
			rg.sim.SetVRAMUsed(0.3)
		})
	}
	// Reads under --protect-reads take the cookie alone.
	if rec := rg.do(req{method: http.MethodGet, path: "/api/resources", cookie: ck}); rec.Code != 200 {
		t.Fatalf("GET /api/resources with the cookie: %d", rec.Code)
	}
	if rec := rg.do(req{method: http.MethodGet, path: "/api/resources"}); rec.Code != 401 {
		t.Fatalf("GET /api/resources without: %d", rec.Code)
	}
	// After logout the same cookie and token write nothing.
	if rec := rg.do(req{method: http.MethodPost, path: "/dashboard/logout", cookie: ck}); rec.Code != 204 || cookieOf(t, rec).MaxAge >= 0 {
		t.Fatalf("logout: %d, cookie %v", rec.Code, rec.Result().Cookies())
	}
	if rec := rg.do(req{method: http.MethodPut, path: "/api/rules/ddcolor_person", body: "resource: ddcolor_person\n", cookie: ck, header: map[string]string{console.CSRFHeader: csrf}}); rec.Code != 403 {
		t.Fatalf("a write after logout: %d, want 403", rec.Code)
	}
}

func TestPageIsEmbeddedWithAStrictPolicy(t *testing.T) {
	rg := newRig(t, console.Config{})
	for _, p := range []string{"/dashboard", "/dashboard/"} {
		rec := rg.do(req{method: http.MethodGet, path: p})
		h := rec.Header()
		if rec.Code != 200 || h.Get("Content-Type") != "text/html; charset=utf-8" || !strings.Contains(rec.Body.String(), `id="login-token"`) {
			t.Fatalf("GET %s: %d %q %.80s", p, rec.Code, h.Get("Content-Type"), rec.Body)
		}
		if csp := h.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Fatalf("CSP %q", csp)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Cache-Control") != "no-cache" {
			t.Fatalf("headers %v", h)
		}
	}
	var asset string
	fs.WalkDir(web.Files, "assets", func(name string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && asset == "" {
			asset = name
		}
		return err
	})
	if asset == "" {
		t.Fatal("no embedded asset")
	}
	want, _ := fs.ReadFile(web.Files, asset)
	rec := rg.do(req{method: http.MethodGet, path: "/dashboard/" + asset})
	etag := rec.Header().Get("ETag")
	if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), want) || etag == "" || rec.Header().Get("Content-Type") == "" {
		t.Fatalf("GET %s: %d, ETag %q, type %q", asset, rec.Code, etag, rec.Header().Get("Content-Type"))
	}
	if rec := rg.do(req{method: http.MethodGet, path: "/dashboard/" + asset, header: map[string]string{"If-None-Match": etag}}); rec.Code != http.StatusNotModified {
		t.Fatalf("revalidation: %d, want 304", rec.Code)
	}
	for _, p := range []string{"/dashboard/assets/no-such.js", "/dashboard/assets/../index.html", "/dashboard/assets/embed.go"} {
		if rec := rg.do(req{method: http.MethodGet, path: p}); rec.Code == 200 {
			t.Fatalf("GET %s: 200", p)
		}
	}
}
