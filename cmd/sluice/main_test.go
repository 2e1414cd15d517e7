package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/etcd"
)

func TestBadRulesFileFailsWithItsMessage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("resource: ddcolor_person\nflow:\n  - threshold: -1\n"), 0o644)
	err := run(context.Background(), []string{"serve", "--rules", bad, "--listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml: document 1 (ddcolor_person): flow[0].threshold: must be > 0, got -1") {
		t.Fatalf("err = %v", err)
	}
	if exitCode(err) != 1 {
		t.Errorf("exit code %d, want 1", exitCode(err))
	}
	// An explicit path that does not exist is an error, not the built-in rules.
	if err := run(context.Background(), []string{"serve", "--rules", filepath.Join(dir, "none")}, io.Discard, io.Discard); err == nil {
		t.Fatal("a missing --rules path was accepted")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"serve", "--no-such-flag"}, {"serve", "extra"}, {"serve", "--log-level", "loud"},
		{"serve", "--ipv6-prefix", "0"}, {"serve", "--ipv6-prefix", "129"}, {"serve", "--upload-min-rate", "0"}, {"serve", "--upload-grace", "0s"}, {"serve", "--tenant-inflight", "-1"}, {"serve", "--image-memory", "-1"}} {
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || exitCode(err) != exitUsage {
			t.Errorf("run(%q) = %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "sluice ") {
		t.Errorf("version: %v %q", err, out.String())
	}
}

// TestServeWithDefaults runs `sluice serve` as `make run` does: the rules of
// testdata/rules and the built-in simulator, then shuts it down.
// gateway is a `sluice serve` running in the test.
type gateway struct {
	base, etcdEndpoint string
	sawSim, seeded     bool
	stop               func() error // ends it and returns run's error
	log                serveLog     // all it logged; whole once stop returned nil
}

// serveLog keeps what a gateway logged. It is safe for concurrent use.
type serveLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *serveLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *serveLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startServe runs `sluice serve` as `make run` does — testdata/rules, the
// built-in simulator, an embedded etcd — on free ports, with extra flags.
func startServe(t *testing.T, extra ...string) *gateway {
	t.Helper()
	return startServeWith(t, func(ctx context.Context, args []string, stderr io.Writer) error {
		return run(ctx, args, io.Discard, stderr)
	}, extra...)
}

// startServeWith is startServe with the way serve is run: start runs
// `sluice args`, logging to stderr, until ctx ends, and returns its error.
func startServeWith(t *testing.T, start func(ctx context.Context, args []string, stderr io.Writer) error, extra ...string) *gateway {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	args := append([]string{"serve", "--rules", "../../testdata/rules", "--listen", "127.0.0.1:0", "--sim-job-time", "10ms", "--gpu-interval", "20ms",
		"--etcd-listen", "http://127.0.0.1:0", "--data-dir", t.TempDir()}, extra...)
	go func() {
		done <- start(ctx, args, pw)
		pw.Close()
	}()
	g := &gateway{}
	var once sync.Once
	var runErr error
	drained := make(chan struct{})
	g.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
				<-drained // the log's last lines are in g.log
			case <-time.After(30 * time.Second):
				runErr = errors.New("serve did not stop after its context ended")
			}
		})
		return runErr
	}
	t.Cleanup(func() { g.stop() })
	logs := bufio.NewScanner(pr)
	addrRE := regexp.MustCompile(`msg="sluice serving" addr=(\S+)`)
	etcdRE := regexp.MustCompile(`msg="embedded etcd started" endpoints=(\S+)`)
	for g.base == "" && logs.Scan() {
		line := logs.Text()
		g.log.Write([]byte(line + "\n"))
		g.sawSim = g.sawSim || strings.Contains(line, "built-in ComfyUI simulator")
		g.seeded = g.seeded || strings.Contains(line, "etcd held no rules: seeded")
		if m := etcdRE.FindStringSubmatch(line); m != nil {
			g.etcdEndpoint = m[1]
		}
		if m := addrRE.FindStringSubmatch(line); m != nil {
			g.base = m[1]
		}
	}
	if g.base == "" {
		close(drained)
		t.Fatalf("serve never said where it listens: %v", <-done)
	}
	go func() { // keep draining the log
		defer close(drained)
		io.Copy(&g.log, pr)
	}()
	return g
}

func TestServeWithDefaults(t *testing.T) {
	g := startServe(t, "--admin-token", "s3cret")
	base, etcdEndpoint := g.base, g.etcdEndpoint
	ctx := context.Background()
	if !g.sawSim {
		t.Error("the log did not name the built-in simulator")
	}
	if etcdEndpoint == "" || !g.seeded {
		t.Fatalf("embedded etcd not started and seeded (endpoint %q, seeded %v)", etcdEndpoint, g.seeded)
	}

	resp, err := http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	img, _ := os.ReadFile("../../testdata/images/person.png")
	colorize := func() (*http.Response, []byte) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		fw, _ := mw.CreateFormFile("image", "person.png")
		fw.Write(img)
		mw.Close()
		resp, err := http.Post(base+"/api/ddcolorize/person", mw.FormDataContentType(), &body)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, out
	}
	if resp, out := colorize(); resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || len(out) == 0 {
		t.Fatalf("colorize: %d %s", resp.StatusCode, out)
	}

	// `sluice rules apply` from another terminal changes what a client gets.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "person.yaml"), []byte("resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n"), 0o644)
	if out, errOut, code := sluice(t, "rules", "apply", "-f", dir, "--yes", "--endpoints", etcdEndpoint); code != 0 {
		t.Fatalf("rules apply: %d %s %s", code, out, errOut)
	}
	var refused bool
	for range 50 { // the watcher applies within milliseconds; bounded, not timed
		resp, _ := colorize()
		if resp.StatusCode == 429 {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("the applied rule (threshold 1 per 10s) never refused a request")
	}

	// The operator API writes to etcd only with the admin token.
	put := func(token, doc string) int {
		req, _ := http.NewRequest(http.MethodPut, base+"/api/rules/zimage_generate", strings.NewReader(doc))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const zimage = "resource: zimage_generate\nflow: [{threshold: 7}]\n"
	if c1, c2, c3 := put("", zimage), put("wrong", zimage), put("s3cret", "resource: zimage_generate\nflow: [{threshold: 0}]\n"); c1 != 401 || c2 != 403 || c3 != 422 {
		t.Fatalf("PUT without token %d (want 401), wrong token %d (want 403), invalid rule %d (want 422)", c1, c2, c3)
	}
	if code := put("s3cret", zimage); code != 200 {
		t.Fatalf("PUT with the token: %d", code)
	}
	resp, err = http.Get(base + "/api/rules/zimage_generate")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Rules struct {
			Flow []struct{ Threshold float64 } `json:"flow"`
		} `json:"rules"`
	}
	json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if len(doc.Rules.Flow) != 1 || doc.Rules.Flow[0].Threshold != 7 {
		t.Fatalf("the rule written through the API is not in force: %+v", doc)
	}

	// A bad document written straight into etcd (as with etcdctl) is
	// refused by the watcher: the rules stay and /api/rules says why.
	raw, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{etcdEndpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	pr2, err := raw.Put(ctx, "/sluice/rules/resources/zimage_generate", "resource: zimage_generate\nflow: [{threshold: 2, window: 7s}]\n")
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		Revision      int64 `json:"revision"`
		LastRejection *struct {
			Key      string   `json:"key"`
			Revision int64    `json:"revision"`
			Errors   []string `json:"errors"`
		} `json:"last_rejection"`
	}
	eventually(t, func() bool {
		getJSON(t, base+"/api/rules", &status)
		return status.LastRejection != nil
	})
	if r := status.LastRejection; r == nil || r.Revision != pr2.Header.Revision || r.Key != "/sluice/rules/resources/zimage_generate" ||
		len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "flow[0].window: must be one of") {
		t.Fatalf("/api/rules does not show the rejection: %+v", status)
	}
	if status.Revision >= pr2.Header.Revision {
		t.Fatalf("revision in force %d moved past the rejected %d", status.Revision, pr2.Header.Revision)
	}

	// Pushing the simulator's VRAM up refuses new jobs, with hysteresis, and
	// /api/system and /metrics show it.
	setVRAM := func(ratio float64) {
		req, _ := http.NewRequest(http.MethodPut, base+"/api/simulator/vram", strings.NewReader(fmt.Sprintf(`{"used_ratio": %v}`, ratio)))
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("PUT /api/simulator/vram: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	type system struct {
		GPUs []struct {
			Ratio    float64 `json:"memory_used_ratio"`
			Pressure bool    `json:"pressure"`
		} `json:"gpus"`
		Pressure struct {
			Active bool `json:"active"`
		} `json:"gpu_pressure"`
	}
	sampled := func(ratio float64) system { // waits for a sample at ratio
		var sys system
		eventually(t, func() bool {
			getJSON(t, base+"/api/system", &sys)
			return len(sys.GPUs) == 1 && math.Abs(sys.GPUs[0].Ratio-ratio) < 0.01
		})
		return sys
	}
	colorizeStatus := func() (int, string) {
		resp, body := colorize()
		return resp.StatusCode, string(body)
	}
	// Lift the flow limit set above, and mend the bad document in the same
	// transaction: while it is in etcd no candidate rule set validates.
	os.WriteFile(filepath.Join(dir, "person.yaml"), []byte("resource: ddcolor_person\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "zimage.yaml"), []byte("resource: zimage_generate\n"), 0o644)
	if _, errOut, code := sluice(t, "rules", "apply", "-f", dir, "--yes", "--endpoints", etcdEndpoint); code != 0 {
		t.Fatalf("rules apply: %s", errOut)
	}
	eventually(t, func() bool { code, _ := colorizeStatus(); return code == 200 })
	setVRAM(0.95)
	if sys := sampled(0.95); !sys.Pressure.Active || !sys.GPUs[0].Pressure {
		t.Fatalf("at 95%% VRAM no pressure: %+v", sys)
	}
	if code, body := colorizeStatus(); code != 503 || !strings.Contains(body, `"rule":"system/gpu"`) {
		t.Fatalf("under GPU pressure: %d %s", code, body)
	}
	setVRAM(0.85) // under the 0.875 threshold, above the 0.8 recovery
	if sys := sampled(0.85); !sys.Pressure.Active {
		t.Fatal("the pressure flapped off at 85%")
	}
	setVRAM(0.5)
	if sys := sampled(0.5); sys.Pressure.Active {
		t.Fatal("the pressure stayed on at 50%")
	}
	if code, body := colorizeStatus(); code != 200 {
		t.Fatalf("after the pressure: %d %s", code, body)
	}
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exposition, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sluice_requests_total{outcome="refused",resource="ddcolor_person",rule_kind="gpu",tier="anonymous"} 1`, "sluice_gpu_memory_used_bytes{", "sluice_rules_revision ", "sluice_job_duration_seconds_bucket{"} {
		if !strings.Contains(string(exposition), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	var farm struct {
		Backends []struct {
			Slots   int  `json:"slots"`
			Healthy bool `json:"healthy"`
			Started int  `json:"started_total"`
		} `json:"backends"`
	}
	getJSON(t, base+"/api/backends", &farm)
	if len(farm.Backends) != 1 || farm.Backends[0].Slots != 1 || !farm.Backends[0].Healthy || farm.Backends[0].Started == 0 {
		t.Fatalf("/api/backends: %+v", farm)
	}

	resp, err = http.Get(base + "/api/resources")
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Resources []struct {
			Resource string `json:"resource"`
			Passed   int    `json:"passed_total"`
		} `json:"resources"`
	}
	json.NewDecoder(resp.Body).Decode(&stats)
	resp.Body.Close()
	if len(stats.Resources) != 3 || stats.Resources[0].Resource != "ddcolor_person" || stats.Resources[0].Passed < 1 {
		t.Fatalf("/api/resources: %+v", stats)
	}

	if err := g.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// eventually polls cond until it holds, failing the test after 10 s: for
// state that changes asynchronously (a watcher, a sampler) behind an API.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// submitAsync asks the gateway at base for an async 256 px generation and
// returns the job's ID.
func submitAsync(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Post(base+"/v1/generate?mode=async", "application/json", strings.NewReader(`{"prompt": "a lighthouse", "width": 256, "height": 256}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sub struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %v", resp.StatusCode, err)
	}
	return sub.ID
}
