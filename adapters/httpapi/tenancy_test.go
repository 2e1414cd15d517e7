package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// The test's credentials: keys of two tenants, and one the identifier
// takes for an expired token.
const (
	acmeKey    = "sk_acme01_Zm9vYmFyYmF6cXV4cXV1eHF1dXgxMjM0NTY3ODkw"
	bigcoKey   = "sk_bigco1_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
	expiredJWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhY21lIiwiZXhwIjoxfQ.c2ln"
)

// fakeIdentity is a hand-written Identifier: Bearer keys of its table;
// anything else sent is refused; nothing sent is anonymous.
type fakeIdentity map[string]tenant.Identity

func (f fakeIdentity) Identify(r *http.Request, origin string) (tenant.Identity, error) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return tenant.Identity{Tenant: origin, Tier: tenant.AnonymousTier, Kind: tenant.Anonymous}, nil
	}
	cred := strings.TrimPrefix(auth, "Bearer ")
	if cred == expiredJWT {
		return tenant.Identity{}, &tenant.AuthError{Reason: "the token expired at 1970-01-01T00:00:01Z"}
	}
	id, ok := f[cred]
	if !ok {
		return tenant.Identity{}, &tenant.AuthError{Reason: "unknown or revoked API key"}
	}
	return id, nil
}

func testIdentity() fakeIdentity {
	return fakeIdentity{
		acmeKey:  {Tenant: "acme", Tier: "registered", Kind: tenant.APIKey, Credential: "key acme01"},
		bigcoKey: {Tenant: "bigco", Tier: "vip", Kind: tenant.APIKey, Credential: "key bigco1"},
	}
}

// fakeQuota is a hand-written Quota counting per tenant and day on a
// clock, as the etcd one does.
type fakeQuota struct {
	clk clock.Clock

	mu      sync.Mutex
	used    map[string]int64 // by day + "/" + tenant
	takes   int
	refunds []tenant.Ticket
}

func newFakeQuota(clk clock.Clock) *fakeQuota { return &fakeQuota{clk: clk, used: map[string]int64{}} }

func (q *fakeQuota) day(loc *time.Location) (string, time.Time) {
	now := q.clk.Now().In(loc)
	start := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, loc)
	return start.Format("2006-01-02"), start.AddDate(0, 0, 1)
}

func (q *fakeQuota) Take(_ context.Context, name string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	day, reset := q.day(loc)
	u := tenant.Usage{Day: day, Used: q.used[day+"/"+name], Limit: limit, Reset: reset}
	if limit != tenant.Unlimited && u.Used+units > limit {
		return u, tenant.Ticket{}, &tenant.QuotaExceeded{Usage: u}
	}
	q.takes++
	q.used[day+"/"+name] += units
	u.Used += units
	return u, tenant.Ticket{Tenant: name, Day: day, Units: units}, nil
}

func (q *fakeQuota) Refund(_ context.Context, t tenant.Ticket) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.refunds = append(q.refunds, t)
	q.used[t.Day+"/"+t.Tenant] -= t.Units
	return nil
}

func (q *fakeQuota) Usage(_ context.Context, name string, limit int64, loc *time.Location) (tenant.Usage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	day, reset := q.day(loc)
	return tenant.Usage{Day: day, Used: q.used[day+"/"+name], Limit: limit, Reset: reset}, nil
}

// state is the tenant's units used today, and the refunds made so far.
func (q *fakeQuota) state(name string) (used int64, refunds int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	day, _ := q.day(time.UTC)
	return q.used[day+"/"+name], len(q.refunds)
}

// staticTiers is a TierSource of one document.
type staticTiers struct{ t *rules.Tiers }

func (s staticTiers) Tiers() *rules.Tiers { return s.t }

// testTiers are the default tiers with registered's daily quota set.
func testTiers(registeredQuota int64) *rules.Tiers {
	t := rules.DefaultTiers()
	for i := range t.Tiers {
		if t.Tiers[i].Name == "registered" {
			t.Tiers[i].DailyQuota = registeredQuota
		}
	}
	return t
}

// tenantStack is the API with a runner of the test's, the fake identity
// and quota on a fake clock at 2026-11-30 12:00 UTC: 43200 s before the
// quota day ends.
type tenantStack struct {
	api *httpapi.Server
	// h serves api, checking every answer against the OpenAPI document.
	h      http.Handler
	eng    *engine.Engine
	runner *funcRunner
	quota  *fakeQuota
	clock  *clock.Fake
}

func newTenantStack(t *testing.T, src string, tiers *rules.Tiers, cfg httpapi.Config) *tenantStack {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	ts := &tenantStack{eng: testEngine(t, src, clk), runner: &funcRunner{run: succeedPNG}, quota: newFakeQuota(clk), clock: clk}
	cfg.Engine, cfg.Runner, cfg.Clock = ts.eng, ts.runner, clk
	cfg.Identity, cfg.Quota, cfg.Tiers = testIdentity(), ts.quota, staticTiers{tiers}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	api, err := httpapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	ts.api, ts.h = api, openapitest.Handler(t, api)
	return ts
}

func (ts *tenantStack) do(req *http.Request, key, peer string) *httptest.ResponseRecorder {
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return serve(ts.h, req, peer)
}

const testPNGSide = 24

// succeedPNG answers every job with a real PNG.
func succeedPNG(context.Context, httpapi.Job) (*comfyui.Result, error) {
	var b bytes.Buffer
	img := image.NewRGBA(image.Rect(0, 0, testPNGSide, testPNGSide))
	img.Set(3, 4, color.RGBA{R: 200, G: 120, B: 40, A: 255})
	if err := png.Encode(&b, img); err != nil {
		return nil, err
	}
	now := time.Now()
	return &comfyui.Result{PromptID: "p1", Image: b.Bytes(), ContentType: "image/png", Queued: now, Started: now, Finished: now}, nil
}

// checkPNG decodes an answer's body as the runner's PNG.
func checkPNG(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	img, err := png.Decode(rec.Body)
	if err != nil || rec.Header().Get("Content-Type") != "image/png" {
		t.Fatalf("not the result PNG (%q): %v", rec.Header().Get("Content-Type"), err)
	}
	if b := img.Bounds(); b.Dx() != testPNGSide || b.Dy() != testPNGSide {
		t.Fatalf("result %v, want %dx%d", b, testPNGSide, testPNGSide)
	}
}

const tenantRules = "resource: zimage_generate\n---\nresource: ddcolor_person\n"

// A credential that is sent but wrong is answered 401 with
// WWW-Authenticate on every endpoint, never taken as anonymous, and its
// text is in neither the answer nor the log.
func TestBadCredentialAnswers401(t *testing.T) {
	var logs bytes.Buffer
	ts := newTenantStack(t, tenantRules, testTiers(200), httpapi.Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	ran := 0
	ts.runner.set(func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
		ran++
		return succeedPNG(ctx, job)
	})
	badKey := "sk_acme01_bm90LXRoZS1yaWdodC1zZWNyZXQtYXQtYWxsLTEyMzQ1"
	img := pngBytes(t, 32, 32)
	for _, cred := range []struct{ name, text, reason string }{
		{"unknown key", badKey, "unknown or revoked API key"},
		{"expired token", expiredJWT, "the token expired at 1970-01-01T00:00:01Z"},
	} {
		for _, req := range []func() *http.Request{
			func() *http.Request { return colorizeRequest(t, "/api/ddcolorize/person", img, nil) },
			func() *http.Request { return asyncGenerate(`{"prompt": "a lighthouse"}`) },
			func() *http.Request { return httptest.NewRequest(http.MethodGet, "/api/me", nil) },
			func() *http.Request { return httptest.NewRequest(http.MethodGet, "/api/jobs/some-job", nil) },
		} {
			r := req()
			t.Run(cred.name+" "+r.URL.Path, func(t *testing.T) {
				rec := ts.do(r, cred.text, "192.0.2.1:1")
				want := `Bearer realm="sluice", error="invalid_token", error_description="` + cred.reason + `"`
				if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") != want {
					t.Fatalf("%d, WWW-Authenticate %q; want 401, %q: %s", rec.Code, rec.Header().Get("WWW-Authenticate"), want, rec.Body)
				}
				p := problemOf(t, rec.Body.Bytes())
				if p.Type != problem.TypeBase+"unauthorized" || !strings.Contains(p.Detail, cred.reason) {
					t.Errorf("problem %+v", p)
				}
				if strings.Contains(rec.Body.String(), cred.text) || strings.Contains(fmt.Sprint(rec.Header()), cred.text) {
					t.Errorf("the answer holds the credential: %v %s", rec.Header(), rec.Body)
				}
			})
		}
		if strings.Contains(logs.String(), cred.text) {
			t.Errorf("the log holds the credential: %s", logs.String())
		}
	}
	if used, _ := ts.quota.state("192.0.2.1"); used != 0 || ran != 0 || ts.quota.takes != 0 {
		t.Fatalf("a refused credential was served as anonymous: %d jobs ran, %d quota taken", ran, used)
	}
	if !strings.Contains(logs.String(), "credential refused") {
		t.Errorf("no log line for the refused credential: %s", logs.String())
	}
}

// A caller without a credential is anonymous, by its origin, in the
// anonymous tier; a key's caller runs in its tenant and tier, with its
// class and jobs in flight. Without Identity, Quota and Tiers the answer
// is as before: no daily quota fields.
func TestCallerReachesTheRunner(t *testing.T) {
	ts := newTenantStack(t, tenantRules, testTiers(200), httpapi.Config{})
	var got []httpapi.Job
	ts.runner.set(func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
		got = append(got, job)
		return succeedPNG(ctx, job)
	})
	for _, key := range []string{"", acmeKey, bigcoKey} {
		rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), key, "[2001:db8:1:2::7]:1")
		if rec.Code != 200 {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		checkPNG(t, rec)
	}
	want := []struct {
		tenant, tier string
		class        tenant.Class
		inFlight     int
	}{
		{"2001:db8:1:2::/64", "anonymous", tenant.Low, 1},
		{"acme", "registered", tenant.Medium, 2},
		{"bigco", "vip", tenant.High, 3},
	}
	for i, w := range want {
		j := got[i]
		if j.Tenant != w.tenant || j.Tier != w.tier || j.Class != w.class || j.InFlight != w.inFlight || j.Cost != 1 {
			t.Errorf("job %d: tenant %q tier %q class %v in flight %d cost %d; want %+v", i, j.Tenant, j.Tier, j.Class, j.InFlight, j.Cost, w)
		}
	}

	api, _, _ := runnerStack(t, tenantRules, httpapi.Config{})
	rec := serve(api, generateRequest(`{"prompt": "a lighthouse"}`), "192.0.2.1:1")
	if rec.Code != 200 || rec.Header().Get("RateLimit") != "" || rec.Header().Get("RateLimit-Policy") != "" {
		t.Fatalf("without tiers and quota: %d, RateLimit %q, policy %q", rec.Code, rec.Header().Get("RateLimit"), rec.Header().Get("RateLimit-Policy"))
	}
	// A credential sent to a gateway without Identity is not looked at.
	req := generateRequest(`{"prompt": "a lighthouse"}`)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	if rec := serve(api, req, "192.0.2.1:1"); rec.Code != 200 {
		t.Fatalf("without Identity: %d %s", rec.Code, rec.Body)
	}
}

// rateFields are an answer's RateLimit-Policy and RateLimit items.
func rateFields(rec *httptest.ResponseRecorder) (policy, limit []string) {
	return rec.Header().Values("RateLimit-Policy"), rec.Header().Values("RateLimit")
}

// Every answer on a guarded endpoint carries the daily quota as it stands
// after the request: admitted (200), refunded (503 from the farm), refused
// by a rule (429, after the rule's own item) or by capacity (503).
func TestDailyQuotaFieldsOnEveryAnswer(t *testing.T) {
	ts := newTenantStack(t, "resource: zimage_generate\nconcurrency: 1\n---\nresource: ddcolor_person\nflow: [{threshold: 1, window: 1s}]\n",
		testTiers(5), httpapi.Config{})
	const policy = `"daily";q=5;w=86400`
	check := func(name string, rec *httptest.ResponseRecorder, status int, remaining int, before ...string) {
		t.Helper()
		p, l := rateFields(rec)
		wantP := append(append([]string{}, before...), policy)
		wantL := fmt.Sprintf(`"daily";r=%d;t=43200`, remaining)
		if rec.Code != status || strings.Join(p, "|") != strings.Join(wantP, "|") || len(l) != len(wantP) || l[len(l)-1] != wantL {
			t.Fatalf("%s: %d, RateLimit-Policy %q, RateLimit %q; want %d, %q, last %q: %s", name, rec.Code, p, l, status, wantP, wantL, rec.Body)
		}
	}
	img := pngBytes(t, 32, 32)

	rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	check("admitted", rec, 200, 4)
	checkPNG(t, rec)

	ts.runner.set(func(context.Context, httpapi.Job) (*comfyui.Result, error) {
		return nil, &httpapi.BusyError{Reason: "queue full", RetryAfter: time.Second}
	})
	check("no GPU slot, refunded", ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1"), 503, 4)
	ts.runner.set(succeedPNG)

	check("admitted", ts.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), acmeKey, "192.0.2.1:1"), 200, 3)
	check("flow", ts.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), acmeKey, "192.0.2.1:1"), 429, 3, `"flow";q=1;w=1`)

	b := &blockingRunner{started: make(chan struct{}), release: make(chan struct{})}
	ts.runner.set(b.Run)
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1") }()
	<-b.started
	check("concurrency", ts.do(generateRequest(`{"prompt": "a harbour"}`), acmeKey, "192.0.2.1:1"), 503, 2, `"concurrency";q=1;qu="concurrent-requests"`)
	close(b.release)
	check("admitted while another waited", <-done, 200, 2)
	ts.runner.set(succeedPNG)

	check("bad request", ts.do(generateRequest(`{"prompt": ""}`), acmeKey, "192.0.2.1:1"), 400, 2)
	// An unlimited tier has no daily item.
	rec = ts.do(generateRequest(`{"prompt": "a lighthouse"}`), bigcoKey, "192.0.2.1:1")
	if p, l := rateFields(rec); rec.Code != 200 || len(p) != 0 || len(l) != 0 {
		t.Fatalf("unlimited: %d %q %q", rec.Code, p, l)
	}
	if used, _ := ts.quota.state("bigco"); used != 1 {
		t.Errorf("an unlimited tier's jobs are counted all the same: used %d", used)
	}
}

// A spent quota is answered 429 with Retry-After until the quota day ends;
// the refused call costs no quota and holds no admission; the next day the
// tenant is served again.
func TestDailyQuotaExhausted(t *testing.T) {
	ts := newTenantStack(t, tenantRules, testTiers(2), httpapi.Config{})
	for i := range 2 {
		if rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1"); rec.Code != 200 {
			t.Fatalf("request %d: %d %s", i+1, rec.Code, rec.Body)
		}
	}
	ts.clock.Advance(2*time.Hour + 500*time.Millisecond) // 21599.5 s left: 21600 rounded up
	rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	p := problemOf(t, rec.Body.Bytes())
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "36000" || p.Type != problem.TypeQuota ||
		p.Kind != "quota" || p.RetryAfter != 36000 || !strings.Contains(p.Detail, "2 of 2 jobs") {
		t.Fatalf("%d Retry-After %q %+v", rec.Code, rec.Header().Get("Retry-After"), p)
	}
	if _, l := rateFields(rec); len(l) != 1 || l[0] != `"daily";r=0;t=36000` {
		t.Errorf("RateLimit %q", l)
	}
	if used, refunds := ts.quota.state("acme"); used != 2 || refunds != 0 {
		t.Errorf("used %d refunds %d after the refusal", used, refunds)
	}
	if st := ts.eng.Stats()[2]; st.InFlight != 0 || st.Completed != 2 {
		t.Errorf("the refused call's admission not undone: %+v", st)
	}
	// Another tenant is not affected; the next day acme is served again.
	if rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), "", "192.0.2.1:1"); rec.Code != 200 {
		t.Fatalf("anonymous: %d", rec.Code)
	}
	ts.clock.Advance(36000 * time.Second)
	rec = ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	if _, l := rateFields(rec); rec.Code != 200 || len(l) != 1 || l[0] != `"daily";r=1;t=86400` {
		t.Fatalf("the next day: %d %q", rec.Code, l)
	}
}

// A synchronous job that fails on the gateway's side is refunded exactly
// once; one that succeeds, sent bad data, or whose client left is not.
func TestSyncRefundOnFailure(t *testing.T) {
	img := pngBytes(t, 32, 32)
	for _, tc := range []struct {
		name     string
		run      func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error)
		req      func() *http.Request
		cancel   bool // the client goes away while the job runs
		shutdown bool // the gateway stops while the job runs
		status   int
		used     int64
	}{
		{name: "success", run: succeedPNG, status: 200, used: 1},
		{name: "backend error", status: 502, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, errors.New("dial tcp: connection refused")
		}},
		{name: "comfyui error", status: 502, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, &comfyui.ExecutionError{ExceptionType: "torch.OutOfMemoryError", ExceptionMessage: "CUDA out of memory"}
		}},
		{name: "timeout", status: 504, run: func(ctx context.Context, _ httpapi.Job) (*comfyui.Result, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
		{name: "no GPU slot", status: 503, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, &httpapi.BusyError{Reason: "queue full", RetryAfter: time.Second}
		}},
		{name: "panic", status: 500, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			panic("a bug in the runner")
		}},
		{name: "shutdown", shutdown: true, status: 499},
		{name: "client gone", cancel: true, status: 499, used: 1},
		{name: "bad image after admission", status: 400, used: 1, req: func() *http.Request {
			return colorizeRequest(t, "/api/ddcolorize/person", img[:len(img)/2], nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTenantStack(t, tenantRules, testTiers(10), httpapi.Config{JobTimeout: 20 * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			run := tc.run
			if tc.cancel || tc.shutdown {
				run = func(jctx context.Context, _ httpapi.Job) (*comfyui.Result, error) {
					if tc.shutdown {
						ts.api.BeginShutdown() // as serve does at a signal, before the grace ends
					}
					cancel() // the connection ends
					<-jctx.Done()
					return nil, jctx.Err()
				}
			}
			if run != nil {
				ts.runner.set(run)
			}
			req := generateRequest(`{"prompt": "a lighthouse"}`)
			if tc.req != nil {
				req = tc.req()
			}
			rec := ts.do(req.WithContext(ctx), acmeKey, "192.0.2.1:1")
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if tc.status == 200 {
				checkPNG(t, rec)
			}
			wantRefunds := 0
			if tc.used == 0 {
				wantRefunds = 1
			}
			if used, refunds := ts.quota.state("acme"); used != tc.used || refunds != wantRefunds || ts.quota.takes != 1 {
				t.Fatalf("used %d, %d refunds, %d takes; want %d, %d, 1", used, refunds, ts.quota.takes, tc.used, wantRefunds)
			}
		})
	}
}

// submitKeyed submits an async request with key from peer, and returns
// the job's ID.
func (ts *tenantStack) submit(t *testing.T, req *http.Request, key, peer string) string {
	t.Helper()
	rec := ts.do(req, key, peer)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("async submit: %d %s", rec.Code, rec.Body)
	}
	var sub struct{ ID string }
	if err := json.Unmarshal(rec.Body.Bytes(), &sub); err != nil || sub.ID == "" {
		t.Fatalf("async answer %s: %v", rec.Body, err)
	}
	return sub.ID
}

func (ts *tenantStack) job(t *testing.T, id, key, peer string) jobs.Job {
	t.Helper()
	rec := ts.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id, nil), key, peer)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET job: %d %s", rec.Code, rec.Body)
	}
	var j jobs.Job
	if err := json.Unmarshal(rec.Body.Bytes(), &j); err != nil {
		t.Fatal(err)
	}
	return j
}

// An async job carries its quota ticket: failing on the gateway's side
// (the runner's error, a timeout, no GPU slot, a panic, the gateway
// stopping) refunds it once; a job its caller cancels (DELETE) is not
// refunded.
func TestAsyncRefundOnFailure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		run    func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error)
		end    string // drain, close, delete
		state  jobs.State
		used   int64
		errors string
	}{
		{name: "success", run: succeedPNG, end: "drain", state: jobs.Succeeded, used: 1},
		{name: "backend error", end: "drain", state: jobs.Failed, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, errors.New("dial tcp: connection refused")
		}},
		{name: "timeout", end: "drain", state: jobs.Failed, run: func(ctx context.Context, _ httpapi.Job) (*comfyui.Result, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
		{name: "no GPU slot", end: "drain", state: jobs.Failed, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			return nil, &httpapi.BusyError{Reason: "waited too long", RetryAfter: time.Second}
		}},
		{name: "panic", end: "drain", state: jobs.Failed, run: func(context.Context, httpapi.Job) (*comfyui.Result, error) {
			panic("a bug in the runner")
		}},
		{name: "shutdown", end: "close", state: jobs.Cancelled},
		{name: "cancelled by its caller", end: "delete", state: jobs.Cancelled, used: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTenantStack(t, tenantRules, testTiers(10), httpapi.Config{JobTimeout: 20 * time.Millisecond})
			started := make(chan struct{})
			ts.runner.set(func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
				close(started)
				if tc.run == nil {
					<-ctx.Done() // until cancelled or the gateway stops
					return nil, context.Cause(ctx)
				}
				return tc.run(ctx, job)
			})
			id := ts.submit(t, asyncGenerate(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
			<-started
			var last jobs.Job
			switch tc.end {
			case "drain":
				if err := ts.api.Drain(context.Background()); err != nil {
					t.Fatal(err)
				}
				last = ts.job(t, id, acmeKey, "192.0.2.1:1")
				if tc.state == jobs.Succeeded {
					rec := ts.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id+"/result", nil), acmeKey, "192.0.2.1:1")
					checkPNG(t, rec)
				}
			case "delete":
				rec := ts.do(httptest.NewRequest(http.MethodDelete, "/api/jobs/"+id, nil), acmeKey, "192.0.2.1:1")
				if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &last) != nil {
					t.Fatalf("cancel: %d %s", rec.Code, rec.Body)
				}
			case "close":
				ts.api.Close()
				last = ts.job(t, id, acmeKey, "192.0.2.1:1")
			}
			ts.api.Close() // every job's end, refunds included, is over
			if last.State != tc.state || last.Tier != "registered" {
				t.Fatalf("job %+v, want state %s in tier registered", last, tc.state)
			}
			wantRefunds := 0
			if tc.used == 0 {
				wantRefunds = 1
			}
			if used, refunds := ts.quota.state("acme"); used != tc.used || refunds != wantRefunds || ts.quota.takes != 1 {
				t.Fatalf("used %d, %d refunds, %d takes; want %d, %d, 1", used, refunds, ts.quota.takes, tc.used, wantRefunds)
			}
		})
	}
}

// An async job refused before it is taken (the farm is full) is refunded
// at once, and its answer says so.
// A farm that would refuse the caller (its in-flight share is full) is
// asked before the daily quota is charged: the refused call, sync or
// async, costs no quota write, and its answer still carries the daily
// items.
func TestRefusedByTheFarmBeforeTheQuotaIsCharged(t *testing.T) {
	for _, async := range []bool{false, true} {
		clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
		eng := testEngine(t, tenantRules, clk)
		q := newFakeQuota(clk)
		busy := &httpapi.BusyError{Reason: "2 jobs of this client already running or waiting", RetryAfter: time.Second, OverShare: true}
		api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: fullFarm{busyRunner{busy}}, Clock: clk,
			Identity: testIdentity(), Quota: q, Tiers: staticTiers{testTiers(10)}})
		if err != nil {
			t.Fatal(err)
		}
		req := generateRequest(`{"prompt": "a lighthouse"}`)
		if async {
			req = asyncGenerate(`{"prompt": "a lighthouse"}`)
		}
		req.Header.Set("Authorization", "Bearer "+acmeKey)
		rec := serve(api, req, "192.0.2.1:1")
		api.Close()
		if _, l := rateFields(rec); rec.Code != 429 || len(l) != 1 || l[0] != `"daily";r=10;t=43200` {
			t.Fatalf("async %v: %d %q %s", async, rec.Code, l, rec.Body)
		}
		if used, refunds := q.state("acme"); used != 0 || refunds != 0 || q.takes != 0 {
			t.Fatalf("async %v: used %d, %d refunds, %d takes; want none", async, used, refunds, q.takes)
		}
		if st := eng.Stats()[2]; st.InFlight != 0 {
			t.Fatalf("async %v: token not exited: %+v", async, st)
		}
	}
}

// A tier may be kept from resources and sizes: 403, before anything runs
// or is charged.
func TestTierForbidsResourceAndSize(t *testing.T) {
	tiers := rules.DefaultTiers()
	tiers.Tiers[0].Resources = []string{"ddcolor_person"}
	tiers.Tiers[0].MaxSize = 512
	ts := newTenantStack(t, tenantRules, tiers, httpapi.Config{})
	img := pngBytes(t, 32, 32)

	rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), "", "192.0.2.1:1")
	p := problemOf(t, rec.Body.Bytes())
	if rec.Code != http.StatusForbidden || p.Type != problem.TypeBase+"tier-forbids" || !strings.Contains(p.Detail, `"anonymous" may not use zimage_generate`) {
		t.Fatalf("resource: %d %+v", rec.Code, p)
	}
	rec = ts.do(colorizeRequest(t, "/api/ddcolorize/person", img, map[string]string{"size": "1024"}), "", "192.0.2.1:1")
	p = problemOf(t, rec.Body.Bytes())
	if rec.Code != http.StatusForbidden || p.Param != "size" || p.Value != "1024" || !strings.Contains(p.Detail, "512") {
		t.Fatalf("size: %d %+v", rec.Code, p)
	}
	if used, _ := ts.quota.state("192.0.2.1"); used != 0 {
		t.Fatalf("refused by the tier, yet charged %d", used)
	}
	rec = ts.do(colorizeRequest(t, "/api/ddcolorize/person", img, map[string]string{"size": "512"}), "", "192.0.2.1:1")
	if rec.Code != 200 {
		t.Fatalf("allowed size: %d %s", rec.Code, rec.Body)
	}
	checkPNG(t, rec)
	// Another tier is not limited.
	if rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1"); rec.Code != 200 {
		t.Fatalf("registered: %d %s", rec.Code, rec.Body)
	}
	// An identity in a tier the document lacks is refused, not demoted.
	ts2 := newTenantStack(t, tenantRules, &rules.Tiers{Timezone: "UTC", Tiers: tiers.Tiers[:1]}, httpapi.Config{})
	rec = ts2.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	if rec.Code != http.StatusForbidden || problemOf(t, rec.Body.Bytes()).Type != problem.TypeBase+"unknown-tier" {
		t.Fatalf("unknown tier: %d %s", rec.Code, rec.Body)
	}
}

type meBody struct {
	Tenant, Tier, Kind, Credential, Priority string
	InFlight                                 int `json:"in_flight"`
	Quota                                    *struct {
		Day, Unit, Reset string
		Used             int64
		Limit, Remaining any
	}
	Limits struct {
		DailyQuota any    `json:"daily_quota"`
		QuotaUnit  string `json:"quota_unit"`
		InFlight   int    `json:"in_flight"`
		Priority   string
	}
}

func (ts *tenantStack) me(t *testing.T, key, peer string) (meBody, string) {
	t.Helper()
	rec := ts.do(httptest.NewRequest(http.MethodGet, "/api/me", nil), key, peer)
	var me meBody
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &me) != nil {
		t.Fatalf("GET /api/me: %d %s", rec.Code, rec.Body)
	}
	return me, rec.Body.String()
}

// GET /api/me tells the caller its tenant, tier, credential (never the
// secret), quota and jobs in flight, sync and async.
func TestMe(t *testing.T) {
	ts := newTenantStack(t, tenantRules, testTiers(200), httpapi.Config{})
	if rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1"); rec.Code != 200 {
		t.Fatal(rec.Code)
	}
	b := &blockingRunner{started: make(chan struct{}), release: make(chan struct{})}
	ts.runner.set(b.Run)
	done := make(chan int)
	go func() { done <- ts.do(generateRequest(`{"prompt": "a harbour"}`), acmeKey, "192.0.2.1:1").Code }()
	<-b.started
	id := ts.submit(t, asyncGenerate(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	<-b.started

	me, raw := ts.me(t, acmeKey, "198.51.100.4:1")
	if me.Tenant != "acme" || me.Tier != "registered" || me.Kind != "key" || me.Credential != "key acme01" || me.Priority != "medium" ||
		me.InFlight != 2 || strings.Contains(raw, acmeKey) || strings.Contains(raw, "Zm9v") {
		t.Fatalf("me %+v: %s", me, raw)
	}
	if q := me.Quota; q == nil || q.Day != "2026-11-30" || q.Used != 3 || q.Limit != float64(200) || q.Remaining != float64(197) ||
		q.Reset != "2026-12-01T00:00:00Z" || q.Unit != "jobs" {
		t.Fatalf("quota %+v", me.Quota)
	}
	if l := me.Limits; l.DailyQuota != float64(200) || l.QuotaUnit != "jobs" || l.InFlight != 2 || l.Priority != "medium" {
		t.Fatalf("limits %+v", l)
	}
	close(b.release)
	if code := <-done; code != 200 {
		t.Fatal(code)
	}
	if err := ts.api.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if j := ts.job(t, id, acmeKey, "192.0.2.1:1"); j.State != jobs.Succeeded {
		t.Fatalf("async job %+v", j)
	}
	if me, _ := ts.me(t, acmeKey, "192.0.2.1:1"); me.InFlight != 0 || me.Quota.Used != 3 {
		t.Fatalf("after the jobs: %+v", me)
	}

	vip, _ := ts.me(t, bigcoKey, "192.0.2.1:1")
	if vip.Quota == nil || vip.Quota.Limit != "unlimited" || vip.Quota.Remaining != "unlimited" || vip.Limits.DailyQuota != "unlimited" || vip.Priority != "high" {
		t.Fatalf("vip %+v", vip)
	}
	anon, _ := ts.me(t, "", "192.0.2.9:1")
	if anon.Tenant != "192.0.2.9" || anon.Kind != "anonymous" || anon.Tier != "anonymous" || anon.Quota.Limit != float64(50) || anon.Limits.InFlight != 1 {
		t.Fatalf("anonymous %+v", anon)
	}
}

// An identified tenant sees its async jobs from any address; nobody else
// does, whatever its address.
func TestAsyncJobOfTenantFromAnotherAddress(t *testing.T) {
	ts := newTenantStack(t, tenantRules, testTiers(200), httpapi.Config{})
	id := ts.submit(t, asyncGenerate(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	if err := ts.api.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if j := ts.job(t, id, acmeKey, "203.0.113.50:1"); j.State != jobs.Succeeded || j.Tier != "registered" {
		t.Fatalf("from another address: %+v", j)
	}
	rec := ts.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id+"/result", nil), acmeKey, "203.0.113.50:1")
	checkPNG(t, rec)
	for _, who := range []struct{ key, peer string }{{"", "192.0.2.1:1"}, {"", "203.0.113.50:1"}, {bigcoKey, "192.0.2.1:1"}} {
		if rec := ts.do(httptest.NewRequest(http.MethodGet, "/api/jobs/"+id, nil), who.key, who.peer); rec.Code != http.StatusNotFound {
			t.Errorf("%+v: %d %s", who, rec.Code, rec.Body)
		}
	}
}

// The refusal log line names the tenant and tier, never the key.
func TestRefusalLogNamesTenantAndTier(t *testing.T) {
	var logs bytes.Buffer
	ts := newTenantStack(t, "resource: zimage_generate\nflow: [{threshold: 1, window: 1s}]\n", testTiers(200),
		httpapi.Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	for range 2 {
		ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	}
	var line map[string]any
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, "request refused") {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line == nil || line["tenant"] != "acme" || line["tier"] != "registered" || line["ip"] != "192.0.2.1" || line["kind"] != "flow" {
		t.Fatalf("refusal line %v in %s", line, logs.String())
	}
	if strings.Contains(logs.String(), acmeKey) {
		t.Fatalf("the log holds the key: %s", logs.String())
	}
}

// A tenant's async job that a restart leaves waiting keeps its tenant,
// tier and quota ticket: the next gateway runs it in its tier's class and
// refunds it once if it fails there; the stopping gateway does not.
func TestResumedJobKeepsItsTicket(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	eng := testEngine(t, tenantRules, clk)
	q := newFakeQuota(clk)
	journal, err := jobs.NewDirResults(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(m *jobs.Manager, run runnerFunc) httpapi.Config {
		return httpapi.Config{Engine: eng, Runner: run, Clock: clk, AsyncJobs: m,
			Identity: testIdentity(), Quota: q, Tiers: staticTiers{testTiers(10)}}
	}
	first := jobs.New(jobs.Config{Journal: journal, Refund: httpapi.RefundJobs(q, nil)})
	parked := make(chan struct{})
	api1, err := httpapi.New(cfg(first, func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
		close(parked)
		<-ctx.Done()
		return nil, context.Cause(ctx)
	}))
	if err != nil {
		t.Fatal(err)
	}
	ts := &tenantStack{api: api1, h: openapitest.Handler(t, api1), quota: q}
	id := ts.submit(t, asyncGenerate(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1")
	<-parked
	first.Close()
	if used, refunds := q.state("acme"); used != 1 || refunds != 0 {
		t.Fatalf("after the stop: used %d, %d refunds; want 1, 0", used, refunds)
	}

	second := jobs.New(jobs.Config{Journal: journal, Refund: httpapi.RefundJobs(q, nil)})
	defer second.Close()
	got := make(chan httpapi.Job, 1)
	api2, err := httpapi.New(cfg(second, func(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
		got <- job
		return nil, errors.New("dial tcp: connection refused")
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Restore(context.Background(), nil, nil, api2.Resume); err != nil {
		t.Fatal(err)
	}
	job := <-got
	if job.Tenant != "acme" || job.Tier != "registered" || job.Class != tenant.Medium || job.InFlight != 2 {
		t.Fatalf("resumed as tenant %q tier %q class %v in flight %d", job.Tenant, job.Tier, job.Class, job.InFlight)
	}
	// Adopted as its caller was admitted: in its tier, from its record's
	// tenant and origin (admitted once before the restart, once again now).
	if st := eng.Stats()[2]; st.Tiers["registered"].Passed != 2 || st.Tiers["anonymous"].Passed != 0 {
		t.Fatalf("resumed job adopted as %+v", st.Tiers)
	}
	if err := second.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	ts.api, ts.h = api2, openapitest.Handler(t, api2)
	if j := ts.job(t, id, acmeKey, "198.51.100.1:1"); j.State != jobs.Failed || j.Tier != "registered" {
		t.Fatalf("resumed job %+v", j)
	}
	if used, refunds := q.state("acme"); used != 0 || refunds != 1 {
		t.Fatalf("after the failure: used %d, %d refunds; want 0, 1", used, refunds)
	}
	if st := eng.Stats()[2]; st.InFlight != 0 {
		t.Fatalf("admission not given back: %+v", st)
	}
}

// A tier counting cost units is charged the call's admitted cost, and
// refunded as much.
func TestQuotaInCostUnits(t *testing.T) {
	tiers := testTiers(10)
	tiers.Tiers[1].QuotaUnit = "cost"
	ts := newTenantStack(t, "resource: ddcolor_person\ncost: {param: size, values: {\"1024\": 3}}\n---\nresource: zimage_generate\n", tiers, httpapi.Config{})
	img := pngBytes(t, 32, 32)
	rec := ts.do(colorizeRequest(t, "/api/ddcolorize/person", img, map[string]string{"size": "1024"}), acmeKey, "192.0.2.1:1")
	if _, l := rateFields(rec); rec.Code != 200 || len(l) != 1 || l[0] != `"daily";r=7;t=43200` {
		t.Fatalf("%d %q %s", rec.Code, l, rec.Body)
	}
	ts.runner.set(func(context.Context, httpapi.Job) (*comfyui.Result, error) { return nil, errors.New("backend down") })
	rec = ts.do(colorizeRequest(t, "/api/ddcolorize/person", img, map[string]string{"size": "1024"}), acmeKey, "192.0.2.1:1")
	if _, l := rateFields(rec); rec.Code != 502 || len(l) != 1 || l[0] != `"daily";r=7;t=43200` {
		t.Fatalf("%d %q %s", rec.Code, l, rec.Body)
	}
	if used, refunds := ts.quota.state("acme"); used != 3 || refunds != 1 {
		t.Fatalf("used %d refunds %d", used, refunds)
	}
}

// brokenIdentity cannot check credentials (a JWKS that does not answer).
type brokenIdentity struct{}

func (brokenIdentity) Identify(*http.Request, string) (tenant.Identity, error) {
	return tenant.Identity{}, errors.New("jwks: fetch: connection refused")
}

// brokenQuota's store does not answer.
type brokenQuota struct{ *fakeQuota }

func (b brokenQuota) Take(context.Context, string, int64, int64, *time.Location) (tenant.Usage, tenant.Ticket, error) {
	return tenant.Usage{}, tenant.Ticket{}, errors.New("etcdserver: request timed out")
}

func (b brokenQuota) Usage(context.Context, string, int64, *time.Location) (tenant.Usage, error) {
	return tenant.Usage{}, errors.New("etcdserver: request timed out")
}

// Credentials that cannot be checked are answered 503, never taken as
// anonymous; a quota store that does not answer admits the call uncharged
// and its answer goes without the daily item.
func TestIdentityOrQuotaStoreDown(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	eng := testEngine(t, tenantRules, clk)
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: &funcRunner{run: succeedPNG}, Clock: clk, Identity: brokenIdentity{}})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	req := generateRequest(`{"prompt": "a lighthouse"}`)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	if rec := serve(api, req, "192.0.2.1:1"); rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("identity down: %d %s", rec.Code, rec.Body)
	}

	q := brokenQuota{newFakeQuota(clk)}
	api2, err := httpapi.New(httpapi.Config{Engine: eng, Runner: &funcRunner{run: succeedPNG}, Clock: clk, Identity: testIdentity(), Quota: q})
	if err != nil {
		t.Fatal(err)
	}
	defer api2.Close()
	req = generateRequest(`{"prompt": "a lighthouse"}`)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	rec := serve(api2, req, "192.0.2.1:1")
	if p, l := rateFields(rec); rec.Code != 200 || len(p) != 0 || len(l) != 0 {
		t.Fatalf("quota store down: %d %q %q", rec.Code, p, l)
	}
	checkPNG(t, rec)

	// A store that never answers holds the call up for the charge's
	// bound only (it used to wait for ever), and is not asked again for
	// the answer's daily item.
	silent := &hangingQuota{fakeQuota: newFakeQuota(clk)}
	api3, err := httpapi.New(httpapi.Config{Engine: eng, Runner: &funcRunner{run: succeedPNG}, Clock: clk, Identity: testIdentity(), Quota: silent})
	if err != nil {
		t.Fatal(err)
	}
	defer api3.Close()
	req = generateRequest(`{"prompt": "a lighthouse"}`)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	rec = serve(api3, req, "192.0.2.1:1")
	if p, l := rateFields(rec); rec.Code != 200 || len(p) != 0 || len(l) != 0 || silent.calls.Load() != 1 {
		t.Fatalf("quota store silent: %d %q %q, %d calls; want the charge alone, no usage read", rec.Code, p, l, silent.calls.Load())
	}
	checkPNG(t, rec)
}

// hangingQuota is a quota store behind a half-open connection: it answers
// nothing until its caller gives up; calls counts what it was asked.
type hangingQuota struct {
	*fakeQuota
	calls atomic.Int32
}

func (h *hangingQuota) Take(ctx context.Context, _ string, _, _ int64, _ *time.Location) (tenant.Usage, tenant.Ticket, error) {
	h.calls.Add(1)
	<-ctx.Done()
	return tenant.Usage{}, tenant.Ticket{}, ctx.Err()
}

func (h *hangingQuota) Usage(ctx context.Context, _ string, _ int64, _ *time.Location) (tenant.Usage, error) {
	h.calls.Add(1)
	<-ctx.Done()
	return tenant.Usage{}, ctx.Err()
}

// TestQuotaStoreThatHangsHoldsNothingUp: with etcd unreachable, an admitted
// job waits for its quota charge at most a bounded time, once; the calls
// that follow are admitted uncharged without asking the store, until a
// while has passed (on the server's clock) and it is asked again. Without
// the bound, every request hung with the store.
func TestQuotaStoreThatHangsHoldsNothingUp(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	eng := testEngine(t, tenantRules, clk)
	q := &hangingQuota{fakeQuota: newFakeQuota(clk)}
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: &funcRunner{run: succeedPNG}, Clock: clk, Identity: testIdentity(), Quota: q})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	call := func() *httptest.ResponseRecorder {
		req := generateRequest(`{"prompt": "a lighthouse"}`)
		req.Header.Set("Authorization", "Bearer "+acmeKey)
		rec := serve(api, req, "192.0.2.1:1")
		if rec.Code != http.StatusOK {
			t.Fatalf("quota store hanging: %d %s", rec.Code, rec.Body)
		}
		checkPNG(t, rec)
		return rec
	}
	call() // waits for the store once (its charge is bounded), then runs
	asked := q.calls.Load()
	if asked == 0 {
		t.Fatal("the store was never asked")
	}
	for range 3 {
		call()
	}
	if n := q.calls.Load(); n != asked {
		t.Errorf("the store was asked %d more times right after it failed; want none", n-asked)
	}
	clk.Advance(11 * time.Second)
	call()
	if n := q.calls.Load(); n == asked {
		t.Error("the store was never asked again after the backoff")
	}
}

// contendedQuota answers acme's charges with the store's contention error
// (other replicas kept changing acme's count) and charges others.
type contendedQuota struct{ *fakeQuota }

func (q contendedQuota) Take(ctx context.Context, name string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket, error) {
	if name == "acme" {
		return tenant.Usage{}, tenant.Ticket{}, fmt.Errorf("quota: take for acme: %w (128 times); try again", tenant.ErrQuotaContended)
	}
	return q.fakeQuota.Take(ctx, name, limit, units, loc)
}

// One busy tenant's contention is not a store failure: the next tenant is
// still charged (a failure would leave the store alone, every tenant
// uncharged, for 10 s).
func TestQuotaContentionOfOneTenantChargesTheOthers(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	eng := testEngine(t, tenantRules, clk)
	q := contendedQuota{newFakeQuota(clk)}
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: &funcRunner{run: succeedPNG}, Clock: clk, Identity: testIdentity(), Quota: q})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	for _, key := range []string{acmeKey, bigcoKey} {
		req := generateRequest(`{"prompt": "a lighthouse"}`)
		req.Header.Set("Authorization", "Bearer "+key)
		rec := serve(api, req, "192.0.2.1:1")
		if rec.Code != http.StatusOK {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		checkPNG(t, rec)
	}
	if used, _ := q.state("bigco"); used != 1 || q.takes != 1 {
		t.Fatalf("bigco used %d, %d takes: the store was left alone after acme's contention", used, q.takes)
	}
}

// racingFarm had room when asked (Precheck) and none when the job came:
// another job took the slot in between.
type racingFarm struct{ busyRunner }

func (racingFarm) Precheck(httpapi.Job) error { return nil }

// A farm that refuses after its precheck passed (a race) refuses a call
// already charged: the charge is refunded.
func TestRefusedByTheFarmAfterTheChargeIsRefunded(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	eng := testEngine(t, tenantRules, clk)
	q := newFakeQuota(clk)
	busy := &httpapi.BusyError{Reason: "2 jobs of this client already running or waiting", RetryAfter: time.Second, OverShare: true}
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: racingFarm{busyRunner{busy}}, Clock: clk,
		Identity: testIdentity(), Quota: q, Tiers: staticTiers{testTiers(10)}})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	req := generateRequest(`{"prompt": "a lighthouse"}`)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	if rec := serve(api, req, "192.0.2.1:1"); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if used, refunds := q.state("acme"); used != 0 || refunds != 1 || q.takes != 1 {
		t.Fatalf("used %d, %d refunds, %d takes; want the one take refunded", used, refunds, q.takes)
	}
}
