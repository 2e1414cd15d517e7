package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

// The end-to-end tests of issue 9: what a user does with keys, tiers,
// quotas and JWTs, through `sluice serve` and the sluice command line.

// answer is an HTTP answer read whole.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// problemRule is the rule a refusal's problem body names.
func (a answer) problemRule() string {
	var p struct {
		Rule string `json:"rule"`
	}
	json.Unmarshal(a.body, &p)
	return p.Rule
}

// callAs sends method url (body as JSON when not empty) with the bearer
// credential cred ("" for none).
func callAs(t *testing.T, ctx context.Context, method, url, cred, body string) answer {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if cred != "" {
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

const generate256 = `{"prompt": "a lighthouse", "width": 256, "height": 256}`

// generateAs asks base for a sync 256 px generation with cred. A refusal
// by the tier's per-tenant rate (not the daily quota) is retried after its
// Retry-After, as a client does, for up to 10 s: the demo tier allows 2
// requests a second, the worked example makes 4. Such a refusal must show
// the daily quota too (cred's tier has one).
func generateAs(t *testing.T, base, cred string) answer {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := callAs(t, context.Background(), http.MethodPost, base+"/v1/generate", cred, generate256)
		if a.status != http.StatusTooManyRequests || a.problemRule() == "daily quota" || time.Now().After(deadline) {
			return a
		}
		if !strings.Contains(field(a.header, "RateLimit"), `"daily";r=`) {
			t.Errorf("a refusal by %q lacks the daily quota's item: RateLimit %q", a.problemRule(), field(a.header, "RateLimit"))
		}
		secs, err := strconv.Atoi(a.header.Get("Retry-After"))
		if err != nil || secs > 5 {
			t.Fatalf("429 from %q with Retry-After %q: %s", a.problemRule(), a.header.Get("Retry-After"), a.body)
		}
		time.Sleep(time.Duration(secs) * time.Second)
	}
}

// me is the body of GET /api/me.
type me struct {
	Tenant     string `json:"tenant"`
	Tier       string `json:"tier"`
	Kind       string `json:"kind"`
	Credential string `json:"credential"`
	InFlight   int    `json:"in_flight"`
	Quota      *struct {
		Day       string    `json:"day"`
		Used      int64     `json:"used"`
		Limit     any       `json:"limit"`
		Remaining any       `json:"remaining"`
		Reset     time.Time `json:"reset"`
	} `json:"quota"`
	Limits struct {
		DailyQuota any `json:"daily_quota"`
	} `json:"limits"`
}

// meAs reads GET /api/me with cred; the status is 200 or the test fails.
func meAs(t *testing.T, base, cred string) me {
	t.Helper()
	a := callAs(t, context.Background(), http.MethodGet, base+"/api/me", cred, "")
	var m me
	if a.status != http.StatusOK || json.Unmarshal(a.body, &m) != nil || m.Quota == nil {
		t.Fatalf("GET /api/me: %d %s", a.status, a.body)
	}
	return m
}

// createKey runs `sluice keys create` on etcd at ep and returns the key
// and its ID.
func createKey(t *testing.T, ep, tenantName, tier string) (key, id string) {
	t.Helper()
	out, errOut, code := sluice(t, "keys", "create", "--tenant", tenantName, "--tier", tier, "--name", "demo", "--endpoints", ep)
	m := regexp.MustCompile(`(?m)^key +(sk_([0-9a-f]+)_\S+)$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("keys create: %d %q %q", code, out, errOut)
	}
	return m[1], m[2]
}

// applyTiers runs `sluice tiers apply file` on etcd at ep.
func applyTiers(t *testing.T, ep, file string) {
	t.Helper()
	if out, errOut, code := sluice(t, "tiers", "apply", file, "--yes", "--endpoints", ep); code != 0 {
		t.Fatalf("tiers apply %s: %d %q %q", file, code, out, errOut)
	}
}

// waitQuota polls /api/me on each base until cred is known there with the
// daily quota limit: the key and the tiers reach a gateway by etcd watch.
func waitQuota(t *testing.T, cred string, limit int64, bases ...string) {
	t.Helper()
	for _, base := range bases {
		eventually(t, func() bool {
			a := callAs(t, context.Background(), http.MethodGet, base+"/api/me", cred, "")
			var m me
			return a.status == http.StatusOK && json.Unmarshal(a.body, &m) == nil && m.Limits.DailyQuota == float64(limit)
		})
	}
}

// field is the header's values joined as one field.
func field(h http.Header, name string) string { return strings.Join(h.Values(name), ", ") }

// nextUTCMidnight is the first midnight UTC after t.
func nextUTCMidnight(t time.Time) time.Time {
	return t.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
}

// secondsNear tells whether got (whole seconds) is within 2 s of the time
// from the moments around a request to the quota day's end: serve takes no
// injected clock, so the gateway's now is somewhere between the two.
func secondsNear(got int64, before, after time.Time) bool {
	end := nextUTCMidnight(before)
	lo, hi := end.Sub(after).Seconds()-2, end.Sub(before).Seconds()+2
	return float64(got) >= lo && float64(got) <= hi
}

// TestTiersWorkedExample follows the README's worked example: create a
// key, apply the demo tiers (registered: 3 a day), call with the key and
// see the quota fields, exhaust the quota (429 until midnight UTC), read
// /api/me, revoke the key (401). The key's secret never reaches the log.
//
// serve has no injected clock: Retry-After and the RateLimit reset are
// compared with the time to the next midnight UTC within ±2 s. A run that
// crosses midnight UTC itself may fail (the day's count starts again).
func TestTiersWorkedExample(t *testing.T) {
	g := startServe(t, "--log-level", "debug", "--sim-job-time", "20ms")
	ep := g.etcdEndpoint

	key, id := createKey(t, ep, "acme", "registered")
	applyTiers(t, ep, "../../testdata/tiers/demo.yaml")
	waitQuota(t, key, 3, g.base)

	// The first call: a 256×256 PNG, and the daily quota in the fields.
	a := generateAs(t, g.base, key)
	if a.status != http.StatusOK || a.header.Get("Content-Type") != "image/png" {
		t.Fatalf("first call: %d %s", a.status, a.body)
	}
	img, err := png.Decode(bytes.NewReader(a.body))
	if err != nil || img.Bounds() != image.Rect(0, 0, 256, 256) {
		t.Fatalf("the image: %v, %v; want a 256x256 PNG", err, img)
	}
	if p := field(a.header, "RateLimit-Policy"); !strings.Contains(p, `"daily";q=3;w=86400`) {
		t.Fatalf("RateLimit-Policy %q lacks the daily quota", p)
	}
	if l := field(a.header, "RateLimit"); !strings.Contains(l, `"daily";r=2;t=`) {
		t.Fatalf("RateLimit %q: want 2 left today", l)
	}
	for _, left := range []string{"1", "0"} {
		a := generateAs(t, g.base, key)
		if a.status != http.StatusOK || !strings.Contains(field(a.header, "RateLimit"), `"daily";r=`+left+`;`) {
			t.Fatalf("call with %s left after it: %d %q %s", left, a.status, field(a.header, "RateLimit"), a.body)
		}
	}

	// The fourth: 429 until the next midnight UTC.
	before := time.Now()
	a = generateAs(t, g.base, key)
	after := time.Now()
	if a.status != http.StatusTooManyRequests || a.problemRule() != "daily quota" {
		t.Fatalf("the call past the quota: %d %s", a.status, a.body)
	}
	retry, err := strconv.ParseInt(a.header.Get("Retry-After"), 10, 64)
	if err != nil || !secondsNear(retry, before, after) {
		t.Fatalf("Retry-After %q, want the seconds to %s (±2 s)", a.header.Get("Retry-After"), nextUTCMidnight(before))
	}
	m := regexp.MustCompile(`"daily";r=0;t=(\d+)`).FindStringSubmatch(field(a.header, "RateLimit"))
	if m == nil || !strings.Contains(field(a.header, "RateLimit-Policy"), `"daily";q=3;w=86400`) {
		t.Fatalf("the refusal's fields: RateLimit %q, RateLimit-Policy %q", field(a.header, "RateLimit"), field(a.header, "RateLimit-Policy"))
	}
	if reset, _ := strconv.ParseInt(m[1], 10, 64); !secondsNear(reset, before, after) {
		t.Fatalf("RateLimit reset t=%d, want the seconds to midnight UTC", reset)
	}

	got := meAs(t, g.base, key)
	if got.Tenant != "acme" || got.Tier != "registered" || got.Kind != "key" || got.Credential != "key "+id ||
		got.Quota.Used != 3 || got.Quota.Remaining != float64(0) || got.Quota.Limit != float64(3) ||
		!got.Quota.Reset.Equal(nextUTCMidnight(before)) {
		t.Fatalf("/api/me: %+v %+v", got, got.Quota)
	}

	// Revoked: 401 on every call once the gateway's key watch has it.
	if out, errOut, code := sluice(t, "keys", "revoke", id, "--endpoints", ep); code != 0 {
		t.Fatalf("keys revoke: %d %q %q", code, out, errOut)
	}
	eventually(t, func() bool {
		return callAs(t, context.Background(), http.MethodGet, g.base+"/api/me", key, "").status == http.StatusUnauthorized
	})
	a = callAs(t, context.Background(), http.MethodPost, g.base+"/v1/generate", key, generate256)
	if a.status != http.StatusUnauthorized || !strings.HasPrefix(a.header.Get("WWW-Authenticate"), `Bearer realm="sluice"`) {
		t.Fatalf("a call with the revoked key: %d %q %s", a.status, a.header.Get("WWW-Authenticate"), a.body)
	}

	if err := g.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	secret := key[len("sk_"+id+"_"):]
	log := g.log.String()
	if !strings.Contains(log, `"daily quota"`) || !strings.Contains(log, "credential refused") {
		t.Fatalf("the log lacks the quota refusal or the refused credential:\n%s", log)
	}
	if strings.Contains(log, secret) {
		t.Fatal("the key's secret is in the log")
	}
}

// quotaTiers is a tiers document whose registered tier has a daily quota
// of n jobs, with in-flight room for a burst and no per-tenant rate.
func quotaTiers(t *testing.T, n int) string {
	t.Helper()
	doc := fmt.Sprintf("tiers:\n  - name: anonymous\n    daily_quota: 50\n  - name: registered\n    daily_quota: %d\n    in_flight: 32\n    priority: medium\n", n)
	return filepath.Join(writeFiles(t, map[string]string{"tiers.yaml": doc}), "tiers.yaml")
}

// anonymousInFlight are serve flags that let an anonymous client have n
// jobs running or waiting (the built-in anonymous tier allows 1, and
// --tenant-inflight applies to callers without a tier only).
func anonymousInFlight(t *testing.T, n int) []string {
	t.Helper()
	doc := fmt.Sprintf("tiers:\n  - name: anonymous\n    daily_quota: unlimited\n    in_flight: %d\n", n)
	return []string{"--tiers", filepath.Join(writeFiles(t, map[string]string{"tiers.yaml": doc}), "tiers.yaml")}
}

// looseRules are rules that refuse nothing, so that only the daily quota
// does.
func looseRules(t *testing.T) string {
	t.Helper()
	return writeFiles(t, map[string]string{"rules.yaml": "resource: zimage_generate\n---\nresource: ddcolor_person\n---\nresource: ddcolor_building\n"})
}

// TestTwoGatewaysShareTheDailyQuota: two gateways on one etcd (the first's
// embedded one; the second in a process of its own, see
// startServeProcess) share a tenant's daily quota. Racing calls through
// both admit exactly the quota, and a restarted gateway keeps the count.
func TestTwoGatewaysShareTheDailyQuota(t *testing.T) {
	const quota, calls = 5, 16
	rulesDir := looseRules(t)
	flags := []string{"--rules", rulesDir, "--sim-job-time", "20ms", "--queue-max", "64", "--tenant-inflight", "32"}
	g1 := startServe(t, flags...)
	ep := g1.etcdEndpoint
	g2 := startServeProcess(t, append(flags, "--etcd-endpoints", ep)...)

	key, _ := createKey(t, ep, "acme", "registered")
	applyTiers(t, ep, quotaTiers(t, quota))
	waitQuota(t, key, quota, g1.base, g2.base)

	var (
		wg     sync.WaitGroup
		ok, no atomic.Int64
		start  = make(chan struct{})
		odd    = make(chan string, calls)
	)
	for i := range calls {
		base := g1.base
		if i%2 == 1 {
			base = g2.base
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			a := callAs(t, context.Background(), http.MethodPost, base+"/v1/generate", key, generate256)
			switch {
			case a.status == http.StatusOK:
				if img, err := png.Decode(bytes.NewReader(a.body)); err != nil || img.Bounds() != image.Rect(0, 0, 256, 256) {
					odd <- fmt.Sprintf("200 without a 256x256 PNG: %v", err)
					return
				}
				ok.Add(1)
			case a.status == http.StatusTooManyRequests && a.problemRule() == "daily quota":
				no.Add(1)
			default:
				odd <- fmt.Sprintf("%d %s", a.status, a.body)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(odd)
	for o := range odd {
		t.Errorf("neither admitted nor refused by the quota: %s", o)
	}
	if ok.Load() != quota || no.Load() != calls-quota {
		t.Fatalf("%d admitted and %d refused by the quota over two gateways; want %d and %d", ok.Load(), no.Load(), quota, calls-quota)
	}
	for _, base := range []string{g1.base, g2.base} {
		if m := meAs(t, base, key); m.Quota.Used != quota || m.Quota.Remaining != float64(0) {
			t.Fatalf("/api/me at %s: %+v", base, m.Quota)
		}
	}

	// The second gateway restarts: the count is in etcd, not in it.
	if err := g2.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	g2 = startServeProcess(t, append(flags, "--etcd-endpoints", ep)...)
	waitQuota(t, key, quota, g2.base)
	if m := meAs(t, g2.base, key); m.Quota.Used != quota {
		t.Fatalf("after the restart /api/me says %d used, want %d", m.Quota.Used, quota)
	}
	if a := callAs(t, context.Background(), http.MethodPost, g2.base+"/v1/generate", key, generate256); a.status != http.StatusTooManyRequests {
		t.Fatalf("a call after the restart: %d %s", a.status, a.body)
	}
}

// TestRefundedWhenTheJobFails: a job that fails on ComfyUI (sync: 502;
// async: failed) or runs past --job-timeout (504) gives its quota back; a
// sync call its client cancels while the job runs keeps its charge.
func TestRefundedWhenTheJobFails(t *testing.T) {
	const (
		succeed = iota
		fail
		slow
		block
	)
	var mode atomic.Int32
	running, release := make(chan struct{}, 1), make(chan struct{})
	comfy := comfyuitest.NewServer(comfyuitest.Options{
		JobTime: func(comfyuitest.Prompt) time.Duration {
			switch mode.Load() {
			case slow:
				return time.Second // past --job-timeout
			case block:
				running <- struct{}{}
				<-release
			}
			return 10 * time.Millisecond
		},
		Fail: func(comfyuitest.Prompt) *comfyuitest.ExecutionFailure {
			if mode.Load() == fail {
				return &comfyuitest.ExecutionFailure{ExceptionType: "torch.OutOfMemoryError", ExceptionMessage: "CUDA out of memory"}
			}
			return nil
		},
	})
	defer comfy.Close()
	defer close(release) // before comfy.Close, which waits for JobTime
	g := startServe(t, "--comfyui", comfy.URL, "--gpu-interval", "1m", "--job-timeout", "300ms")
	key, _ := createKey(t, g.etcdEndpoint, "acme", "registered")
	waitQuota(t, key, 200, g.base) // the built-in tiers

	used := func() int64 { return meAs(t, g.base, key).Quota.Used }
	if a := callAs(t, context.Background(), http.MethodPost, g.base+"/v1/generate", key, generate256); a.status != http.StatusOK || used() != 1 {
		t.Fatalf("a job that succeeds: %d, %d used; want 200, 1 used", a.status, used())
	}

	mode.Store(fail)
	if a := callAs(t, context.Background(), http.MethodPost, g.base+"/v1/generate", key, generate256); a.status != http.StatusBadGateway {
		t.Fatalf("a job that fails on ComfyUI: %d %s, want 502", a.status, a.body)
	}
	if n := used(); n != 1 {
		t.Fatalf("after the failed sync job %d used, want 1 (refunded)", n)
	}
	a := callAs(t, context.Background(), http.MethodPost, g.base+"/v1/generate?mode=async", key, generate256)
	var sub struct{ ID string }
	if a.status != http.StatusAccepted || json.Unmarshal(a.body, &sub) != nil {
		t.Fatalf("async submit: %d %s", a.status, a.body)
	}
	var job struct{ State, Error string }
	eventually(t, func() bool { // the job is the tenant's: read with its key
		a := callAs(t, context.Background(), http.MethodGet, g.base+"/api/jobs/"+sub.ID, key, "")
		return json.Unmarshal(a.body, &job) == nil && (job.State == "failed" || job.State == "succeeded")
	})
	if job.State != "failed" || !strings.Contains(job.Error, "CUDA out of memory") {
		t.Fatalf("the async job %s (%s), want failed by ComfyUI", job.State, job.Error)
	}
	eventually(t, func() bool { return used() == 1 }) // the refund follows the job's end

	mode.Store(slow)
	if a := callAs(t, context.Background(), http.MethodPost, g.base+"/v1/generate", key, generate256); a.status != http.StatusGatewayTimeout {
		t.Fatalf("a job past --job-timeout: %d %s, want 504", a.status, a.body)
	}
	if n := used(); n != 1 {
		t.Fatalf("after the job that timed out %d used, want 1 (refunded)", n)
	}

	// The client leaves while its job runs: the charge stays.
	mode.Store(block)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	left := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.base+"/v1/generate", strings.NewReader(generate256))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		left <- err
	}()
	<-running
	cancel()
	if err := <-left; err == nil {
		t.Fatal("the cancelled call got an answer")
	}
	eventually(t, func() bool { return meAs(t, g.base, key).InFlight == 0 })
	if n := used(); n != 2 {
		t.Fatalf("after the call its client cancelled %d used, want 2 (not refunded)", n)
	}
}

// jwksServer serves the JSON Web Key Set of pub under kid.
func jwksServer(t *testing.T, kid string, pub *ecdsa.PublicKey) string {
	t.Helper()
	k, err := jwk.Import(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Set(jwk.KeyIDKey, kid); err != nil {
		t.Fatal(err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(k); err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestJWTThroughServe: serve verifies JWTs against a JWKS URL; a token for
// tenant acme in tier vip is served with an unlimited quota (no daily
// item in the fields), an expired one is refused 401.
func TestJWTThroughServe(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	g := startServe(t, "--jwt-jwks-url", jwksServer(t, "k1", &priv.PublicKey), "--jwt-alg", "ES256", "--sim-job-time", "20ms")
	token := func(exp time.Time) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "acme", "tier": "vip", "exp": exp.Unix()})
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := token(time.Now().Add(10 * time.Minute))

	a := callAs(t, context.Background(), http.MethodPost, g.base+"/v1/generate", good, generate256)
	if a.status != http.StatusOK || a.header.Get("Content-Type") != "image/png" {
		t.Fatalf("a call with the token: %d %s", a.status, a.body)
	}
	if img, err := png.Decode(bytes.NewReader(a.body)); err != nil || img.Bounds() != image.Rect(0, 0, 256, 256) {
		t.Fatalf("the image: %v; want a 256x256 PNG", err)
	}
	if p, l := field(a.header, "RateLimit-Policy"), field(a.header, "RateLimit"); strings.Contains(p, "daily") || strings.Contains(l, "daily") {
		t.Fatalf("an unlimited tier's answer has a daily item: RateLimit-Policy %q, RateLimit %q", p, l)
	}
	m := meAs(t, g.base, good)
	if m.Tenant != "acme" || m.Kind != "jwt" || m.Tier != "vip" || m.Quota.Limit != "unlimited" || m.Quota.Remaining != "unlimited" ||
		m.Limits.DailyQuota != "unlimited" || m.Quota.Used != 1 {
		t.Fatalf("/api/me with the token: %+v %+v", m, m.Quota)
	}

	expired := token(time.Now().Add(-time.Hour))
	for _, path := range []string{"/v1/generate", "/api/me"} {
		method, body := http.MethodPost, generate256
		if path == "/api/me" {
			method, body = http.MethodGet, ""
		}
		a := callAs(t, context.Background(), method, g.base+path, expired, body)
		if a.status != http.StatusUnauthorized || !strings.Contains(a.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Fatalf("%s with an expired token: %d %q %s", path, a.status, a.header.Get("WWW-Authenticate"), a.body)
		}
	}
	if err := g.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	log := g.log.String()
	for _, tok := range []string{good, expired} {
		if sig := tok[strings.LastIndexByte(tok, '.')+1:]; strings.Contains(log, sig) {
			t.Fatal("a token is in the log")
		}
	}
	if !strings.Contains(log, "the token has expired") {
		t.Fatalf("the log does not say why the token was refused:\n%s", log)
	}
}
