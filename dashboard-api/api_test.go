package dashboardapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

const testToken = "s3cret-admin-token"

func newEngine(t *testing.T, src string, opts engine.Options) *engine.Engine {
	t.Helper()
	set, err := rules.ParseSet("r.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	opts.Namespace = fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1))
	eng, err := engine.New(opts, set)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	return eng
}

// newRouter mounts the operator API on a router of its own, whose answers
// are checked against the OpenAPI document.
func newRouter(t *testing.T, cfg dashboardapi.Config) http.Handler {
	t.Helper()
	gin.SetMode(gin.TestMode)
	if cfg.Engine == nil {
		cfg.Engine = newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1}]\n", engine.Options{})
	}
	r := gin.New()
	if err := dashboardapi.Register(r, cfg); err != nil {
		t.Fatal(err)
	}
	return openapitest.Handler(t, r)
}

// request sends one request; auth is the Authorization header ("" for
// none).
func request(r http.Handler, method, path, auth string, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, body)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	return rec
}

func decode(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return body
}

// checkProblem checks an RFC 9457 problem answer and returns its body.
func checkProblem(t *testing.T, rec *httptest.ResponseRecorder, status int) map[string]any {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	p := decode(t, rec)
	if p["status"] != float64(status) || p["title"] != http.StatusText(status) ||
		!strings.HasPrefix(p["type"].(string), "https://sluice.dev/problems/") || p["detail"] == "" {
		t.Errorf("problem body: %v", p)
	}
	return p
}

// fakeWriter is a RuleWriter that records its calls and answers with err,
// or the next revision.
type fakeWriter struct {
	mu    sync.Mutex
	calls []string // "put ddcolor_person <doc>", "delete system"
	rev   int64
	err   error
}

func (w *fakeWriter) Put(ctx context.Context, resource string, doc []byte) (int64, error) {
	return w.record("put "+resource+" "+string(doc), ctx)
}

func (w *fakeWriter) Delete(ctx context.Context, resource string) (int64, error) {
	return w.record("delete "+resource, ctx)
}

func (w *fakeWriter) record(call string, ctx context.Context) (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		return 0, errors.New("fakeWriter: the context has no deadline")
	}
	w.calls = append(w.calls, call)
	if w.err != nil {
		return 0, w.err
	}
	w.rev++
	return w.rev, nil
}

func (w *fakeWriter) Calls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.calls...)
}

const flowDoc = "resource: ddcolor_person\nflow: [{threshold: 5}]\n"

func TestOperatorAPI(t *testing.T) {
	eng := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1}]\n---\nsystem: {concurrency: 9}\n", engine.Options{})
	r := newRouter(t, dashboardapi.Config{Engine: eng, Source: "r.yaml"})

	get := func(path string, want int) map[string]any {
		t.Helper()
		rec := request(r, http.MethodGet, path, "", nil)
		if rec.Code != want {
			t.Fatalf("GET %s: %d, want %d: %s", path, rec.Code, want, rec.Body)
		}
		return decode(t, rec)
	}

	all := get("/api/rules", 200)
	docsOut := all["documents"].([]any)
	if all["source"] != "r.yaml" || len(docsOut) != 2 {
		t.Fatalf("/api/rules = %v", all)
	}
	if _, ok := all["revision"]; ok {
		t.Errorf("/api/rules without Status has a revision: %v", all)
	}
	first := docsOut[0].(map[string]any)
	flow := first["rules"].(map[string]any)["flow"].([]any)[0].(map[string]any)
	if first["source"] != "r.yaml#1" || flow["window"] != "1s" || flow["behavior"] != "reject" {
		t.Fatalf("first document, defaults filled in: %v", first)
	}
	if sys := docsOut[1].(map[string]any); sys["resource"] != "system" || sys["system"].(map[string]any)["concurrency"] != 9.0 {
		t.Fatalf("system document: %v", sys)
	}
	if one := get("/api/rules/ddcolor_person", 200); one["resource"] != "ddcolor_person" {
		t.Fatalf("one resource: %v", one)
	}
	if sys := get("/api/rules/system", 200); sys["source"] != "r.yaml#2" || sys["system"].(map[string]any)["concurrency"] != 9.0 {
		t.Fatalf("/api/rules/system: %v", sys)
	}
	if none := get("/api/rules/zimage_generate", 200); none["rules"] != nil {
		t.Fatalf("a resource without rules: %v", none)
	}
	checkProblem(t, request(r, http.MethodGet, "/api/rules/cat", "", nil), 404)

	// One admission and one refusal show in the statistics.
	tok, _ := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	if _, err := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}); err == nil {
		t.Fatal("second call admitted")
	}
	tok.Exit(nil)
	stats := get("/api/resources", 200)["resources"].([]any)[0].(map[string]any)
	if stats["resource"] != "ddcolor_person" || stats["passed_total"] != 1.0 || stats["refused_total"].(map[string]any)["flow"] != 1.0 || stats["completed_total"] != 1.0 {
		t.Fatalf("/api/resources: %v", stats)
	}
	if get("/healthz", 200)["status"] != "ok" || get("/readyz", 200)["status"] != "ready" {
		t.Fatal("health endpoints")
	}
}

func TestRegisterRejectsBadConfig(t *testing.T) {
	eng := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1}]\n", engine.Options{})
	for _, tc := range []struct {
		name string
		cfg  dashboardapi.Config
		want string
	}{
		{"no engine", dashboardapi.Config{}, "an engine is required"},
		{"protected reads without a token", dashboardapi.Config{Engine: eng, ProtectReads: true}, "needs an admin token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := dashboardapi.Register(gin.New(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Register: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWritesNeedTheToken(t *testing.T) {
	var logs bytes.Buffer
	w := &fakeWriter{}
	r := newRouter(t, dashboardapi.Config{
		Writer: w, AdminToken: testToken,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	for _, tc := range []struct {
		name   string
		method string
		auth   string
		want   int
		call   string // the call the writer must see; "" for none
	}{
		{"put without credentials", http.MethodPut, "", 401, ""},
		{"put with basic credentials", http.MethodPut, "Basic YWRtaW46YWRtaW4=", 401, ""},
		{"put with an empty bearer token", http.MethodPut, "Bearer ", 401, ""},
		{"put with the wrong token", http.MethodPut, "Bearer " + testToken + "x", 403, ""},
		{"put with a prefix of the token", http.MethodPut, "Bearer " + testToken[:4], 403, ""},
		{"put with the token", http.MethodPut, "Bearer " + testToken, 200, "put ddcolor_person " + flowDoc},
		{"put, scheme in lower case", http.MethodPut, "bearer " + testToken, 200, "put ddcolor_person " + flowDoc},
		{"delete without credentials", http.MethodDelete, "", 401, ""},
		{"delete with the wrong token", http.MethodDelete, "Bearer nope", 403, ""},
		{"delete with the token", http.MethodDelete, "Bearer " + testToken, 200, "delete ddcolor_person"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(w.Calls())
			rec := request(r, tc.method, "/api/rules/ddcolor_person", tc.auth, strings.NewReader(flowDoc))
			if tc.want != 200 {
				checkProblem(t, rec, tc.want)
				if got := rec.Header().Get("WWW-Authenticate"); (tc.want == 401) != (got == `Bearer realm="sluice"`) {
					t.Errorf("WWW-Authenticate %q on a %d", got, tc.want)
				}
				if calls := w.Calls(); len(calls) != before {
					t.Errorf("the writer was called: %q", calls[before:])
				}
				return
			}
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			calls := w.Calls()
			if len(calls) != before+1 || calls[before] != tc.call {
				t.Fatalf("writer calls %q, want %q", calls[before:], tc.call)
			}
			if body := decode(t, rec); body["resource"] != "ddcolor_person" || body["revision"] != float64(len(calls)) {
				t.Errorf("answer %v", body)
			}
		})
	}
	if strings.Contains(logs.String(), testToken[:8]) || strings.Contains(logs.String(), "nope") {
		t.Errorf("a token was logged:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "wrong admin token") {
		t.Errorf("wrong tokens were not logged:\n%s", logs.String())
	}
}

func TestWritesWithoutTokenOrWriter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    dashboardapi.Config
		method string
		want   int
		detail string
	}{
		{"no token: put", dashboardapi.Config{Writer: &fakeWriter{}}, http.MethodPut, 403, "no admin token configured"},
		{"no token: delete", dashboardapi.Config{Writer: &fakeWriter{}}, http.MethodDelete, 403, "no admin token configured"},
		{"rules from files: put", dashboardapi.Config{Source: "testdata/rules", AdminToken: testToken}, http.MethodPut, 405, "rules come from testdata/rules"},
		{"rules from files: delete", dashboardapi.Config{Source: "testdata/rules"}, http.MethodDelete, 405, "rules come from testdata/rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRouter(t, tc.cfg)
			rec := request(r, tc.method, "/api/rules/ddcolor_person", "Bearer "+testToken, strings.NewReader(flowDoc))
			p := checkProblem(t, rec, tc.want)
			if !strings.Contains(p["detail"].(string), tc.detail) {
				t.Errorf("detail %q, want it to say %q", p["detail"], tc.detail)
			}
			if tc.want == 405 && rec.Header().Get("Allow") != "GET" {
				t.Errorf("Allow %q on a 405", rec.Header().Get("Allow"))
			}
			if w, ok := tc.cfg.Writer.(*fakeWriter); ok && len(w.Calls()) > 0 {
				t.Errorf("the writer was called: %q", w.Calls())
			}
		})
	}
}

func TestWriteOutcomes(t *testing.T) {
	invalid := rules.Errors{
		{File: "/sluice/rules/resources/ddcolor_person", Doc: 1, Resource: "ddcolor_person", Path: "flow[0].threshold", Msg: "must be > 0, got 0"},
		{File: "/sluice/rules/resources/ddcolor_person", Doc: 1, Resource: "ddcolor_person", Path: "flow[0].thresold", Msg: "unknown field"},
	}
	big := strings.Repeat("#", rules.MaxSourceBytes+1)
	for _, tc := range []struct {
		name       string
		method     string
		path       string
		body       io.Reader
		writerErr  error
		want       int
		wantCall   string   // "" when the writer must not be called
		wantErrors []string // the problem's errors
		detail     string
	}{
		{name: "put system", method: http.MethodPut, path: "/api/rules/system", body: strings.NewReader("system: {load: 4}\n"),
			want: 200, wantCall: "put system system: {load: 4}\n"},
		{name: "put JSON", method: http.MethodPut, path: "/api/rules/zimage_generate", body: strings.NewReader(`{"resource":"zimage_generate","concurrency":2}`),
			want: 200, wantCall: `put zimage_generate {"resource":"zimage_generate","concurrency":2}`},
		{name: "delete system", method: http.MethodDelete, path: "/api/rules/system", want: 200, wantCall: "delete system"},
		{name: "invalid rules", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(flowDoc),
			writerErr: invalid, want: 422, wantCall: "put ddcolor_person " + flowDoc, wantErrors: invalid.Messages(), detail: "2 problems"},
		{name: "invalid rules, wrapped", method: http.MethodDelete, path: "/api/rules/system",
			writerErr: fmt.Errorf("validate: %w", invalid[:1]), want: 422, wantCall: "delete system", wantErrors: invalid[:1].Messages()},
		{name: "one invalid rule", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(flowDoc),
			writerErr: invalid[1], want: 422, wantCall: "put ddcolor_person " + flowDoc, wantErrors: []string{invalid[1].Error()}},
		{name: "etcd down", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(flowDoc),
			writerErr: errors.New("etcdserver: no leader"), want: 502, wantCall: "put ddcolor_person " + flowDoc, detail: "could not write to etcd: etcdserver: no leader"},
		{name: "etcd down on delete", method: http.MethodDelete, path: "/api/rules/ddcolor_person",
			writerErr: errors.New("connection refused"), want: 502, wantCall: "delete ddcolor_person", detail: "could not write to etcd: connection refused"},
		{name: "delete what is not there", method: http.MethodDelete, path: "/api/rules/zimage_generate",
			writerErr: fmt.Errorf("%w: /sluice/rules/resources/zimage_generate", dashboardapi.ErrNotFound), want: 404, wantCall: "delete zimage_generate",
			detail: "zimage_generate has no rule document to delete"},
		{name: "etcd too slow", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(flowDoc),
			writerErr: fmt.Errorf("put: %w", context.DeadlineExceeded), want: 504, wantCall: "put ddcolor_person " + flowDoc, detail: "could not write to etcd within"},
		{name: "unknown resource: put", method: http.MethodPut, path: "/api/rules/cat", body: strings.NewReader(flowDoc), want: 404, detail: `unknown resource "cat"`},
		{name: "unknown resource: delete", method: http.MethodDelete, path: "/api/rules/cat", want: 404, detail: `unknown resource "cat"`},
		{name: "body too large", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(big), want: 413, detail: "at most 1048576 bytes"},
		{name: "body too large, length unknown", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: io.MultiReader(strings.NewReader(big)), want: 413},
		{name: "body at the limit", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(big[1:]), want: 200, wantCall: "put ddcolor_person " + big[1:]},
		{name: "empty body", method: http.MethodPut, path: "/api/rules/ddcolor_person", body: strings.NewReader(" \n"), want: 400, detail: "body is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &fakeWriter{err: tc.writerErr}
			r := newRouter(t, dashboardapi.Config{Writer: w, AdminToken: testToken})
			rec := request(r, tc.method, tc.path, "Bearer "+testToken, tc.body)
			switch calls := w.Calls(); {
			case tc.wantCall == "" && len(calls) > 0:
				t.Errorf("the writer was called: %.80q", calls)
			case tc.wantCall != "" && (len(calls) != 1 || calls[0] != tc.wantCall):
				t.Errorf("writer calls %.80q, want %.80q", calls, tc.wantCall)
			}
			if tc.want == 200 {
				if rec.Code != 200 {
					t.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				if body := decode(t, rec); body["revision"] != 1.0 || body["resource"] != strings.TrimPrefix(tc.path, "/api/rules/") {
					t.Errorf("answer %v", body)
				}
				return
			}
			p := checkProblem(t, rec, tc.want)
			if !strings.Contains(p["detail"].(string), tc.detail) {
				t.Errorf("detail %q, want it to say %q", p["detail"], tc.detail)
			}
			var got []string
			if errs, ok := p["errors"].([]any); ok {
				for _, e := range errs {
					got = append(got, e.(string))
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.wantErrors, "\n") {
				t.Errorf("errors %q, want %q", got, tc.wantErrors)
			}
		})
	}
}

func TestProtectReads(t *testing.T) {
	paths := []string{"/api/rules", "/api/rules/ddcolor_person", "/api/resources", "/api/blocked"}
	for _, tc := range []struct {
		name    string
		protect bool
		auth    string
		want    int
	}{
		{"open reads", false, "", 200},
		{"protected, no credentials", true, "", 401},
		{"protected, wrong token", true, "Bearer wrong", 403},
		{"protected, the token", true, "Bearer " + testToken, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRouter(t, dashboardapi.Config{AdminToken: testToken, ProtectReads: tc.protect})
			for _, path := range paths {
				if rec := request(r, http.MethodGet, path, tc.auth, nil); rec.Code != tc.want {
					t.Errorf("GET %s: %d, want %d: %s", path, rec.Code, tc.want, rec.Body)
				}
			}
			for _, path := range []string{"/healthz", "/readyz"} {
				if rec := request(r, http.MethodGet, path, "", nil); rec.Code != 200 {
					t.Errorf("GET %s: %d, want 200 always", path, rec.Code)
				}
			}
		})
	}
}

func TestBlocked(t *testing.T) {
	clock := &fixedClock{time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	eng := newEngine(t, "resource: ddcolor_building\nhotspot: [{param: origin, threshold: 1, window: 60s}, {param: tenant, threshold: 1, window: 60s}]\n", engine.Options{Clock: clock})
	r := newRouter(t, dashboardapi.Config{Engine: eng})

	if got := decode(t, request(r, http.MethodGet, "/api/blocked", "", nil))["blocked"]; got == nil || len(got.([]any)) != 0 {
		t.Fatalf("before any refusal: %v, want []", got)
	}
	for i, origin := range []string{"192.0.2.1", "192.0.2.1", "192.0.2.1", "192.0.2.9", "192.0.2.9"} {
		tok, err := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_building", Origin: origin, Size: 1280})
		if err == nil {
			tok.Exit(nil)
		} else if i != 1 && i != 2 && i != 4 {
			t.Fatalf("call %d: %v", i, err)
		}
	}

	all := decode(t, request(r, http.MethodGet, "/api/blocked", "", nil))["blocked"].([]any)
	if len(all) != 3 {
		t.Fatalf("blocked: %v, want 3 refusals", all)
	}
	newest := all[0].(map[string]any)
	want := map[string]any{
		"time": "2026-11-24T12:00:00Z", "origin": "192.0.2.9", "tier": "anonymous", "resource": "ddcolor_building", "size": 1280.0,
		"rule": "ddcolor_building/hotspot[0]", "kind": "hotspot", "value": "192.0.2.9",
	}
	if fmt.Sprint(newest) != fmt.Sprint(want) {
		t.Errorf("newest refusal:\n%v\nwant\n%v", newest, want)
	}
	if all[1].(map[string]any)["origin"] != "192.0.2.1" {
		t.Errorf("not newest first: %v", all)
	}
	if one := decode(t, request(r, http.MethodGet, "/api/blocked?limit=1", "", nil))["blocked"].([]any); len(one) != 1 || one[0].(map[string]any)["origin"] != "192.0.2.9" {
		t.Errorf("limit=1: %v", one)
	}
	if max := decode(t, request(r, http.MethodGet, "/api/blocked?limit=1024", "", nil))["blocked"].([]any); len(max) != 3 {
		t.Errorf("limit=1024: %v", max)
	}
	for _, bad := range []string{"0", "-1", "1025", "ten", "", "1.5"} {
		p := checkProblem(t, request(r, http.MethodGet, "/api/blocked?limit="+bad, "", nil), 400)
		if !strings.Contains(p["detail"].(string), fmt.Sprintf("from 1 to 1024; got %q", bad)) {
			t.Errorf("limit=%s: detail %q", bad, p["detail"])
		}
	}

	// An identified caller's refusal names its tenant and tier.
	acme := engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1", Tenant: "acme", Tier: "registered", Size: 1280}
	if tok, err := eng.Guard(t.Context(), acme); err != nil {
		t.Fatalf("acme's first call: %v", err)
	} else {
		tok.Exit(nil)
	}
	if _, err := eng.Guard(t.Context(), acme); err == nil {
		t.Fatal("acme's second call was admitted")
	}
	newest = decode(t, request(r, http.MethodGet, "/api/blocked?limit=1", "", nil))["blocked"].([]any)[0].(map[string]any)
	if newest["tenant"] != "acme" || newest["tier"] != "registered" || newest["value"] != "acme" || newest["rule"] != "ddcolor_building/hotspot[1]" {
		t.Errorf("the tenant's refusal: %v", newest)
	}
}

type fixedClock struct{ t time.Time }

func (c *fixedClock) Now() time.Time { return c.t }

func TestReadyz(t *testing.T) {
	var ready atomic.Bool
	r := newRouter(t, dashboardapi.Config{Ready: ready.Load})
	for _, want := range []struct {
		ready  bool
		code   int
		status string
	}{{false, 503, "not ready"}, {true, 200, "ready"}, {false, 503, "not ready"}} {
		ready.Store(want.ready)
		rec := request(r, http.MethodGet, "/readyz", "", nil)
		if rec.Code != want.code || decode(t, rec)["status"] != want.status {
			t.Errorf("ready=%v: %d %s, want %d %q", want.ready, rec.Code, rec.Body, want.code, want.status)
		}
	}
}

func TestRulesStatus(t *testing.T) {
	applied := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	status := dashboardapi.RulesStatus{Revision: 42, AppliedAt: applied}
	var mu sync.Mutex
	r := newRouter(t, dashboardapi.Config{
		Source: "etcd http://127.0.0.1:2379 /sluice",
		Status: func() dashboardapi.RulesStatus { mu.Lock(); defer mu.Unlock(); return status },
	})

	body := decode(t, request(r, http.MethodGet, "/api/rules", "", nil))
	if body["source"] != "etcd http://127.0.0.1:2379 /sluice" || body["revision"] != 42.0 || body["applied_at"] != "2026-11-24T12:00:00Z" ||
		body["last_rejection"] != nil || len(body["documents"].([]any)) != 1 {
		t.Fatalf("/api/rules: %v", body)
	}
	if _, ok := body["last_rejection"]; !ok {
		t.Error("last_rejection absent; want null when nothing was rejected")
	}

	mu.Lock()
	status.LastRejection = &dashboardapi.Rejection{
		Key: "/sluice/rules/resources/ddcolor_person", Revision: 43, At: applied.Add(time.Minute),
		Errors: []string{"/sluice/rules/resources/ddcolor_person: document 1 (ddcolor_person): flow[0].threshold: must be > 0, got 0"},
	}
	mu.Unlock()
	body = decode(t, request(r, http.MethodGet, "/api/rules", "", nil))
	rej, _ := body["last_rejection"].(map[string]any)
	if body["revision"] != 42.0 || rej["key"] != "/sluice/rules/resources/ddcolor_person" || rej["revision"] != 43.0 ||
		rej["at"] != "2026-11-24T12:01:00Z" || len(rej["errors"].([]any)) != 1 {
		t.Fatalf("/api/rules after a rejection: %v", body)
	}
}

func TestSystemEndpoint(t *testing.T) {
	gin.SetMode(gin.TestMode)
	docs, _ := rules.Parse("r.yaml", []byte("gpu: {memory_used_ratio: 0.875}\n"))
	set, err := rules.Build(docs)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{Namespace: fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1))}, set)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	eng.ReportGPUs("comfyui http://gpu-1:8188", []engine.GPU{{ID: "http://gpu-1:8188#0", Source: "comfyui", Backend: "http://gpu-1:8188",
		MemoryUsed: 15 << 30, MemoryTotal: 16 << 30, Utilization: -1, SampledAt: time.Now()}}, nil)
	// A CPU-only ComfyUI: its device is shown apart, never as a GPU.
	eng.ReportGPUs("comfyui http://cpu-1:8188", []engine.GPU{{ID: "http://cpu-1:8188#cpu", Source: "comfyui", Backend: "http://cpu-1:8188",
		Type: "cpu", Index: -1, Name: "cpu", MemoryUsed: 31 << 30, MemoryTotal: 32 << 30, Utilization: -1, SampledAt: time.Now()}}, nil)
	r := newRouter(t, dashboardapi.Config{Engine: eng})
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/system", nil))
	var sys struct {
		GPUs []struct {
			ID       string  `json:"id"`
			Source   string  `json:"source"`
			Ratio    float64 `json:"memory_used_ratio"`
			Pressure bool    `json:"pressure"`
		} `json:"gpus"`
		CPUDevices []struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		} `json:"cpu_devices"`
		Pressure struct {
			Active   bool     `json:"active"`
			Action   string   `json:"action"`
			Devices  []string `json:"devices"`
			Backends []string `json:"backends"`
		} `json:"gpu_pressure"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &sys); err != nil || rec.Code != 200 {
		t.Fatalf("%d %v %s", rec.Code, err, rec.Body)
	}
	if len(sys.GPUs) != 1 || sys.GPUs[0].Source != "comfyui" || sys.GPUs[0].Ratio != 0.9375 || !sys.GPUs[0].Pressure ||
		len(sys.CPUDevices) != 1 || sys.CPUDevices[0].Type != "cpu" ||
		!sys.Pressure.Active || sys.Pressure.Action != "reject" || sys.Pressure.Devices[0] != "http://gpu-1:8188#0" ||
		len(sys.Pressure.Backends) != 1 || sys.Pressure.Backends[0] != "http://gpu-1:8188" {
		t.Fatalf("/api/system: %s", rec.Body)
	}
}

// engineSeq gives every engine of the test binary its own sentinel-golang
// namespace, so windows of earlier tests (or earlier -count runs) do not
// leak into later ones.
var engineSeq atomic.Int64

type fakeSim struct{ used float64 }

func (f *fakeSim) VRAMUsed() []float64       { return []float64{f.used} }
func (f *fakeSim) SetVRAMUsed(ratio float64) { f.used = ratio }

func TestSimulatorControl(t *testing.T) {
	gin.SetMode(gin.TestMode)
	eng, err := engine.New(engine.Options{Namespace: fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	put := func(r http.Handler, token, body string) int {
		req := httptest.NewRequest(http.MethodPut, "/api/simulator/vram", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, tc := range []struct {
		name, adminToken, token, body string
		status                        int
		used                          float64
	}{
		// Pushing the memory up refuses every client's jobs: without a
		// token configured nobody may, not even from loopback.
		{"refused without an admin token", "", "", `{"used_ratio": 0.95}`, 403, 0.3},
		{"refused without an admin token, even with one sent", "", "s3cret", `{"used_ratio": 0.95}`, 403, 0.3},
		{"bad ratio", "s3cret", "s3cret", `{"used_ratio": 1.5}`, 400, 0.3},
		{"key in another case", "s3cret", "s3cret", `{"USED_RATIO": 0.95}`, 400, 0.3},
		{"ratio of the wrong type", "s3cret", "s3cret", `{"used_ratio": "0.95"}`, 400, 0.3},
		{"token configured, none sent", "s3cret", "", `{"used_ratio": 0.95}`, 401, 0.3},
		{"token configured, wrong one", "s3cret", "nope", `{"used_ratio": 0.95}`, 403, 0.3},
		{"token configured and sent", "s3cret", "s3cret", `{"used_ratio": 0.9}`, 200, 0.9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := &fakeSim{used: 0.3}
			r := newRouter(t, dashboardapi.Config{Engine: eng, AdminToken: tc.adminToken, Simulator: sim})
			if got := put(r, tc.token, tc.body); got != tc.status || sim.used != tc.used {
				t.Fatalf("status %d (want %d), used %v (want %v)", got, tc.status, sim.used, tc.used)
			}
		})
	}
}
