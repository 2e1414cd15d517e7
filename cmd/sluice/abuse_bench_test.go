package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/farm"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

// BenchmarkAbuse floods the whole gateway — a real HTTP listener, the
// httpapi server, the engine with a rule set, and the farm's fair queue —
// in front of fake ComfyUI backends, and measures what the well-behaved
// clients get. It is the end-to-end counterpart of BenchmarkOverload, which
// bypasses HTTP and the engine.
//
// The modelled farm: backends ComfyUI servers, one 2 s job at a time each,
// and clients that give up on a request after 30 s. One abuser asks for 20×
// the farm's capacity, open loop, from 1 IP (ips=1) or spread over 20
// (ips=20); three well-behaved clients each ask for 10 % of the capacity,
// with Poisson arrivals, and honour Retry-After while their deadline
// allows. Every time quantity — job time, deadline, queue wait, ban times,
// rate windows, the load's length — is divided by the scale (10 by
// default: 200 ms jobs, 3 s deadlines), so the run is short; rate rules
// keep their rate, their windows being whole real seconds. Two things do
// not scale: Retry-After is whole seconds (at least 1 s real, 10 s
// modelled), so a refused well-behaved client retries later than it would
// on the modelled farm; and the fake's own work on a prompt (the image it
// writes, a few ms) runs on top of the scaled job time, counted as busy.
//
// The scenario tiers (tiers/ips=20) adds client identity and the service
// tiers: the three well-behaved clients are registered, each with its own
// API key (made with identity.CreateKey in an embedded etcd, sent as
// Authorization: Bearer), and the abuser is anonymous from 20 IPs. The
// server then has a running identity.Resolver, daily quotas in that etcd
// (etcd.NewQuota), and the built-in tiers (anonymous: low priority, 1 job
// in flight, 50 jobs a day; registered: medium, 2, 200), their rates in the
// engine; the farm serves the tiers' priority classes and in-flight caps.
// One etcd serves the whole benchmark, each run under a fresh prefix, so
// every quota starts at zero. A day's quota is a count of jobs, which the
// scale does not change: the run charges what the modelled window would.
// If an anonymous tenant could reach its daily quota in the modelled
// window, the run says so and uses a larger anonymous quota.
//
// Per scenario it reports:
//   - well-%: well-behaved (in tiers: registered) requests answered 200
//     within their deadline;
//   - busy-%: the time the backends' slots executed prompts, as the fake
//     backends saw it, over the slots' time in the load's window;
//   - useful-%: of that, the GPU time of prompts whose image reached a
//     client that still waited for it (200 read before its deadline);
//   - jain: Jain's index over the four clients of x = served / fair, with
//     served a client's useful GPU time and fair its max-min fair share of
//     the window's GPU time given every client's demand (the abuser, one
//     client whatever its IPs). 1 is fair; 1/4 is one client served alone.
//
// Run it with `make bench-abuse`, or quicker, for instance:
//
//	SLUICE_ABUSE_SECONDS=5 go test ./cmd/sluice -run '^$' -bench 'Abuse/fair' -benchtime 1x
//
// SLUICE_ABUSE_SCALE (default 10), SLUICE_ABUSE_SECONDS (real seconds of
// load per scenario, default 20) and SLUICE_ABUSE_BACKENDS (default 2) set
// the scale; SLUICE_ABUSE_PER_IP (default 0.2) the rate set's per-IP rate
// as a share of the capacity, SLUICE_ABUSE_INFLIGHT (default the slots + 1)
// the farm's --tenant-inflight and, in the fair and rate sets, the
// anonymous tier's in_flight: a job carries its tier's cap, which the farm
// applies instead of its own, so these sets run with the built-in tiers but
// that cap (the built-in 1 lets a client alone use one slot; 1 reproduces
// it). The tiers set uses the built-in tiers unchanged.
func BenchmarkAbuse(b *testing.B) {
	sc, err := abuseScaleFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	gin.SetMode(gin.ReleaseMode)
	// The embedded etcd of the tiers scenario, started when it first runs.
	var store *abuseEtcd
	b.Cleanup(func() {
		if store != nil {
			store.close()
		}
	})
	for _, rs := range abuseRuleSets(sc) {
		for _, ips := range rs.ips {
			b.Run(fmt.Sprintf("%s/ips=%d", rs.name, ips), func(b *testing.B) {
				if rs.tiers && store == nil {
					if store, err = startAbuseEtcd(); err != nil {
						b.Fatal(err)
					}
				}
				var sum abuseResult
				for range b.N {
					r := runAbuse(b, sc, rs, ips, store)
					sum.add(r)
					r.print(os.Stdout, b.Name(), sc, rs)
				}
				sum.scale(1 / float64(b.N))
				b.ReportMetric(sum.wellPct, "well-%")
				b.ReportMetric(sum.busyPct, "busy-%")
				b.ReportMetric(sum.usefulPct, "useful-%")
				b.ReportMetric(sum.jain, "jain")
				b.ReportMetric(float64(sum.handoff.Microseconds())/1000, "handoff-ms")
				b.ReportMetric(float64(sum.lag.Microseconds())/1000, "lag-p99-ms")
			})
		}
	}
}

// The modelled farm and load, in unscaled time.
const (
	abuseJobTime   = 2 * time.Second  // one job on one backend
	abuseDeadline  = 30 * time.Second // a client gives up on a request after this
	abuseFactor    = 20               // the abuser asks for this many times the capacity
	abuseWellShare = 0.10             // each well-behaved client asks for this share of it
	abuseWellCount = 3
	abuseQueueMax  = 64
)

// abuseScale is how the modelled farm is run: time divided by factor, for
// window of real time per scenario, on backends fake ComfyUI servers.
type abuseScale struct {
	factor   float64
	window   time.Duration
	backends int
	perIP    float64 // the rate set's per-IP rate, as a share of the capacity
	inFlight int     // the farm's --tenant-inflight, the anonymous tier's in_flight in fair and rate
}

func abuseScaleFromEnv() (abuseScale, error) {
	sc := abuseScale{factor: 10, window: 20 * time.Second, backends: 2, perIP: 0.2}
	num := func(name string, def float64) (float64, error) {
		v := os.Getenv(name)
		if v == "" {
			return def, nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			return 0, fmt.Errorf("$%s: want a positive number, got %q", name, v)
		}
		return f, nil
	}
	var err error
	if sc.factor, err = num("SLUICE_ABUSE_SCALE", sc.factor); err != nil {
		return sc, err
	}
	secs, err := num("SLUICE_ABUSE_SECONDS", sc.window.Seconds())
	if err != nil {
		return sc, err
	}
	sc.window = time.Duration(secs * float64(time.Second))
	n, err := num("SLUICE_ABUSE_BACKENDS", float64(sc.backends))
	if err != nil {
		return sc, err
	}
	sc.backends = int(n)
	if sc.perIP, err = num("SLUICE_ABUSE_PER_IP", sc.perIP); err != nil {
		return sc, err
	}
	// One job more than the slots by default: a client alone keeps every
	// slot busy, with a job waiting for the next free one.
	n, err = num("SLUICE_ABUSE_INFLIGHT", float64(sc.backends+1))
	if err != nil {
		return sc, err
	}
	sc.inFlight = int(n)
	// The fake keeps the latest 4096 prompts, by which runs are matched to
	// requests.
	if perBackend := sc.window / sc.d(abuseJobTime); perBackend > 4000 {
		return sc, fmt.Errorf("$SLUICE_ABUSE_SECONDS / $SLUICE_ABUSE_SCALE: %d jobs per backend, more than the fake ComfyUI records (4000)", perBackend)
	}
	if sc.backends < 1 || sc.inFlight < 1 {
		return sc, fmt.Errorf("$SLUICE_ABUSE_BACKENDS and $SLUICE_ABUSE_INFLIGHT: want at least 1, got %d and %d", sc.backends, sc.inFlight)
	}
	return sc, nil
}

// d is the real duration of the unscaled duration u.
func (sc abuseScale) d(u time.Duration) time.Duration {
	return time.Duration(float64(u) / sc.factor)
}

// capacity is the farm's jobs per real second.
func (sc abuseScale) capacity() float64 {
	return float64(sc.backends) / sc.d(abuseJobTime).Seconds()
}

// abuseRules is a rule set for the scaled farm: the engine's rules (a
// file, or YAML text) and the farm's flags.
type abuseRules struct {
	name           string
	file           string // read when set
	yaml           string
	tenantInFlight int
	queueWait      time.Duration // real
	// anonInFlight, when not 0, is the anonymous tier's in_flight; the
	// other tiers are the built-in ones.
	anonInFlight int
	// ips are the abuser's numbers of IPs to run the set with.
	ips []int
	// tiers: the well-behaved clients are registered, with API keys; the
	// server identifies callers, charges daily quotas and serves the
	// built-in tiers (see BenchmarkAbuse).
	tiers bool
}

// recommendedRules is the README's recommended rule set for such a farm;
// it has no time quantity to scale.
const recommendedRules = "../../testdata/rules/recommended"

// abuseRuleSets are the rule sets the issue compares, on the same farm
// (its fair queue, a client's jobs in flight capped at the slots + 1, a job
// waiting at most the deadline less one job): "fair" is the recommended
// rules, which add nothing to the farm; "rate" adds a per-IP rate (0.2 of
// the capacity per IP, twice a well-behaved client's mean, over a 1 s real
// window) and a ban, as the built-in rules do; "tiers" is the recommended
// rules with the well-behaved clients registered (API keys) and the tiers'
// priority classes, in-flight caps and daily quotas.
func abuseRuleSets(sc abuseScale) []abuseRules {
	ms := func(u time.Duration) string { return strconv.FormatInt(sc.d(u).Milliseconds(), 10) + "ms" }
	perIP := max(1, int(math.Round(sc.perIP*sc.capacity()))) // per 1 s real
	queueWait := sc.d(abuseDeadline - abuseJobTime)
	inFlight := sc.inFlight
	rate := fmt.Sprintf(`# A per-IP rate of %g x capacity (%d per 1s real = %d per %s modelled)
# with a burst, and a ban (20 refusals in 10s: banned 1m, modelled).
resource: zimage_generate
hotspot:
  - param: origin
    threshold: %d
    window: 1s
    burst: 2
concurrency: 128
ban: {blocks: 20, within: %s, for: %s}
`, sc.perIP, perIP, perIP, time.Duration(sc.factor*float64(time.Second)), perIP, ms(10*time.Second), ms(time.Minute))
	return []abuseRules{
		{name: "fair", file: recommendedRules, tenantInFlight: inFlight, anonInFlight: inFlight, queueWait: queueWait, ips: []int{1, 20}},
		{name: "rate", yaml: rate, tenantInFlight: inFlight, anonInFlight: inFlight, queueWait: queueWait, ips: []int{1, 20}},
		// The tiers' in-flight caps (anonymous 1, registered 2) come with
		// each job; the farm's own applies to none.
		{name: "tiers", file: recommendedRules, tenantInFlight: inFlight, queueWait: queueWait, ips: []int{abuseTiersIPs}, tiers: true},
	}
}

// docs decodes the rule set.
func (rs abuseRules) docs() ([]rules.Document, error) {
	if rs.file != "" {
		return rules.ParseFS(os.DirFS(filepath.Dir(rs.file)), filepath.Base(rs.file))
	}
	return rules.Parse(rs.name+".yaml", []byte(rs.yaml))
}

// abuseResult is one scenario's figures.
type abuseResult struct {
	wellPct, busyPct, usefulPct, jain float64
	// handoff is the median time a backend stood idle between two prompts;
	// meanRun the mean time a prompt ran on it.
	handoff, meanRun time.Duration
	// lag is the 99th percentile of how late a 10 ms timer fired.
	lag      time.Duration
	clients  []abuseClientResult
	refusals map[string]map[string]int // client → status[/problem kind] → count
	// notes are the scenario's own lines (tiers: the daily quotas).
	notes []string
}

type abuseClientResult struct {
	name           string
	asked, ok      int
	demand, served time.Duration // GPU time asked for, useful GPU time got
	fair           time.Duration
	abuser         bool
	latencies      []time.Duration // of the 200s, request sent to body read
	// retried counts the refused attempts sent again; late the requests
	// whose deadline passed in the gateway; noTime those refused with a
	// Retry-After past their deadline.
	retried, late, noTime int
}

func (r *abuseResult) add(o abuseResult) {
	r.wellPct += o.wellPct
	r.busyPct += o.busyPct
	r.usefulPct += o.usefulPct
	r.jain += o.jain
	r.handoff += o.handoff
	r.lag += o.lag
}

func (r *abuseResult) scale(f float64) {
	r.wellPct *= f
	r.busyPct *= f
	r.usefulPct *= f
	r.jain *= f
	r.handoff = time.Duration(float64(r.handoff) * f)
	r.lag = time.Duration(float64(r.lag) * f)
}

func (r abuseResult) print(w io.Writer, name string, sc abuseScale, rs abuseRules) {
	fmt.Fprintf(w, "\n%s: %d backends × 1 slot, job %s (2s modelled), deadline %s (30s), %s of load (%s modelled)\n",
		name, sc.backends, sc.d(abuseJobTime), sc.d(abuseDeadline), sc.window, time.Duration(float64(sc.window)*sc.factor))
	rulesUsed := rs.file
	if rulesUsed == "" {
		rulesUsed = "\n" + rs.yaml
	}
	tiers := "built-in"
	if rs.anonInFlight > 0 {
		tiers = fmt.Sprintf("built-in, anonymous in_flight %d", rs.anonInFlight)
	}
	fmt.Fprintf(w, "farm: --tenant-inflight %d --queue-max %d --queue-wait %s; tiers: %s; rules: %s\n", rs.tenantInFlight, abuseQueueMax, rs.queueWait, tiers, rulesUsed)
	for _, n := range r.notes {
		fmt.Fprintln(w, n)
	}
	fmt.Fprintf(w, "%-8s %6s %6s %6s %6s %6s %8s %8s %8s %6s %8s  %s\n", "client", "asked", "ok", "late", "notime", "retry", "demand", "served", "fair", "x", "p99", "refused (status=count)")
	for _, c := range r.clients {
		slices.Sort(c.latencies)
		p99 := time.Duration(0)
		if n := len(c.latencies); n > 0 {
			p99 = c.latencies[int(0.99*float64(n-1))]
		}
		x := 0.0
		if c.fair > 0 {
			x = float64(c.served) / float64(c.fair)
		}
		var refused []string
		for status, n := range r.refusals[c.name] {
			refused = append(refused, fmt.Sprintf("%s=%d", status, n))
		}
		slices.Sort(refused)
		fmt.Fprintf(w, "%-8s %6d %6d %6d %6d %6d %8s %8s %8s %6.2f %8s  %s\n", c.name, c.asked, c.ok, c.late, c.noTime, c.retried,
			c.demand.Round(time.Millisecond), c.served.Round(time.Millisecond), c.fair.Round(time.Millisecond), x,
			p99.Round(time.Millisecond), strings.Join(refused, " "))
	}
	well := "well-behaved"
	if rs.tiers {
		well = "registered"
	}
	fmt.Fprintf(w, "%s within deadline %.1f%% (goal ≥ 99%%), GPU busy %.1f%% (≥ 90%%), useful %.1f%% (≥ 95%%), Jain %.3f\n",
		well, r.wellPct, r.busyPct, r.usefulPct, r.jain)
	fmt.Fprintf(w, "late: deadline passed in the gateway; notime: refused, Retry-After past the deadline; retry: attempts sent again; refused: status/problem kind[@Retry-After]\n")
	fmt.Fprintf(w, "a prompt ran %s on average; a backend stood %s idle between two prompts (median)\n",
		r.meanRun.Round(100*time.Microsecond), r.handoff.Round(100*time.Microsecond))
	fmt.Fprintf(w, "timers fired up to %s late (p99)", r.lag.Round(100*time.Microsecond))
	if r.lag > sc.d(abuseJobTime)/5 {
		fmt.Fprintf(w, ": the host was busy, these figures say more about it than about sluice (try a smaller SLUICE_ABUSE_SCALE, or a quieter host)")
	}
	fmt.Fprintln(w)
}

// gpuLog records, from a fake backend's own view, when each prompt ran: its
// start (when the fake asks for its job time) by seed, its end (the fake's
// "prompt done" log line) by prompt ID.
type gpuLog struct {
	mu     sync.Mutex
	starts map[int64]time.Time
	ends   map[string]time.Time
}

func newGPULog() *gpuLog {
	return &gpuLog{starts: make(map[int64]time.Time), ends: make(map[string]time.Time)}
}

func (g *gpuLog) jobTime(d time.Duration) func(comfyuitest.Prompt) time.Duration {
	return func(p comfyuitest.Prompt) time.Duration {
		now := time.Now()
		if seed, ok := p.Int("KSampler", "seed"); ok {
			g.mu.Lock()
			g.starts[seed] = now
			g.mu.Unlock()
		}
		return d
	}
}

// gpuLogHandler is the slog.Handler that hears the fake's "prompt done".
type gpuLogHandler struct {
	g        *gpuLog
	promptID string
}

func (h gpuLogHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h gpuLogHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "comfyuitest: prompt done" && h.promptID != "" {
		h.g.mu.Lock()
		h.g.ends[h.promptID] = r.Time
		h.g.mu.Unlock()
	}
	return nil
}

func (h gpuLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	for _, a := range attrs {
		if a.Key == "prompt_id" {
			h.promptID = a.Value.String()
		}
	}
	return h
}

func (h gpuLogHandler) WithGroup(string) slog.Handler { return h }

// interval is one prompt's run on a backend.
type interval struct{ start, end time.Time }

// runs returns, by seed, when the prompts of srv ran. Call it once srv is
// closed: every prompt has ended then; one with no end is an error.
func (g *gpuLog) runs(srv *comfyuitest.Server) (map[int64]interval, error) {
	seeds := make(map[string]int64)
	for _, p := range srv.Prompts() {
		if s, ok := p.Prompt.Int("KSampler", "seed"); ok {
			seeds[p.ID] = s
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[int64]interval, len(g.starts))
	for id, end := range g.ends {
		if seed, ok := seeds[id]; ok {
			if start, ok := g.starts[seed]; ok {
				out[seed] = interval{start, end}
			}
		}
	}
	if len(out) != len(g.starts) {
		return out, fmt.Errorf("%s: %d prompts started, %d of them seen done: does comfyuitest still log \"comfyuitest: prompt done\" with a prompt_id?", srv.URL, len(g.starts), len(out))
	}
	return out, nil
}

// abuseRequest is one request's outcome.
type abuseRequest struct {
	client  int // index into the clients
	seed    int64
	ok      bool // 200, its body read before the deadline
	latency time.Duration
}

// runAbuse runs one scenario; store is the embedded etcd of a tiers set
// (nil otherwise).
func runAbuse(b *testing.B, sc abuseScale, rs abuseRules, abuserIPs int, store *abuseEtcd) abuseResult {
	b.Helper()
	quiet := slog.New(slog.DiscardHandler)
	jobTime := sc.d(abuseJobTime)
	deadline := sc.d(abuseDeadline)

	var (
		servers []*comfyuitest.Server
		logs    []*gpuLog
		clients []comfyui.Config
	)
	for range sc.backends {
		g := newGPULog()
		srv := comfyuitest.NewServer(comfyuitest.Options{JobTime: g.jobTime(jobTime), Logger: slog.New(gpuLogHandler{g: g})})
		defer srv.Close()
		c := comfyui.Config{BaseURL: srv.URL, PollInterval: sc.d(time.Second)}
		servers, logs, clients = append(servers, srv), append(logs, g), append(clients, c)
	}
	f, err := farm.New(farm.Config{Backends: clients, Slots: 1, MaxQueue: abuseQueueMax, TenantInFlight: rs.tenantInFlight, MaxWait: rs.queueWait, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	docs, err := rs.docs()
	if err != nil {
		b.Fatal(err)
	}
	set, err := rules.Build(docs)
	if err != nil {
		b.Fatal(err)
	}
	eng, err := engine.New(engine.Options{Logger: quiet, Namespace: b.Name() + "/"}, set)
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	cfg := httpapi.Config{Engine: eng, Runner: f, Logger: quiet,
		TrustedProxies: []string{"127.0.0.1"}, JobTimeout: deadline}
	// The well-behaved clients' API keys (tiers only).
	keys := make([]string, abuseWellCount)
	var tn *abuseTenancy
	if rs.tiers {
		if tn, err = store.tenancy(sc, abuserIPs, abuseWellCount, quiet); err != nil {
			b.Fatal(err)
		}
		defer tn.close()
		if err := eng.SetTierRates(tn.tiers.Rates()); err != nil {
			b.Fatal(err)
		}
		cfg.Identity, cfg.Quota, cfg.Tiers = tn.resolver, tn.quota, tn
		keys = tn.keys
	} else if rs.anonInFlight > 0 {
		ts, err := tiersWithAnonymousInFlight(rs.anonInFlight)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Tiers = fixedTiers{ts}
	}
	api, err := httpapi.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer api.Close()
	ts := httptest.NewServer(api)
	defer ts.Close()
	transport := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute}
	defer transport.CloseIdleConnections()
	hc := &http.Client{Transport: transport}

	// The clients: three well-behaved, then the abuser.
	names := make([]string, 0, abuseWellCount+1)
	for i := range abuseWellCount {
		if rs.tiers {
			names = append(names, fmt.Sprintf("reg-%d", i+1))
		} else {
			names = append(names, fmt.Sprintf("well-%d", i+1))
		}
	}
	names = append(names, "abuser")
	abuser := abuseWellCount

	var (
		seed     atomic.Int64
		mu       sync.Mutex
		results  []abuseRequest
		refusals = make(map[string]map[string]int)
		retried  = make([]int, len(names))
		late     = make([]int, len(names))
		noTime   = make([]int, len(names))
	)
	record := func(r abuseRequest) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}
	refused := func(client int, status string) {
		mu.Lock()
		defer mu.Unlock()
		m := refusals[names[client]]
		if m == nil {
			m = make(map[string]int)
			refusals[names[client]] = m
		}
		m[status]++
	}
	// send makes one attempt, with key as its bearer when set; it returns
	// the status (0 on a transport error or the deadline), the problem's
	// kind on a refusal, and the Retry-After.
	send := func(ctx context.Context, ip, key string, s int64) (int, string, time.Duration) {
		body := fmt.Sprintf(`{"prompt":"abuse bench","width":256,"height":256,"steps":1,"seed":%d}`, s)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/generate", strings.NewReader(body))
		if err != nil {
			b.Error(err)
			return 0, "", 0
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", ip)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", 0
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, resp.Body); err != nil {
			return 0, "", 0
		}
		if resp.StatusCode == http.StatusOK {
			// Answered means the image came back: a 256×256 PNG.
			img, err := png.Decode(&buf)
			if err != nil || img.Bounds().Dx() != 256 || img.Bounds().Dy() != 256 {
				b.Errorf("a 200 without the 256x256 image: %v", err)
				return 0, "", 0
			}
		}
		var kind string
		if resp.StatusCode != http.StatusOK {
			var p struct {
				Kind string `json:"kind"`
			}
			if json.Unmarshal(buf.Bytes(), &p) == nil {
				kind = p.Kind
			}
		}
		retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return resp.StatusCode, kind, time.Duration(retry) * time.Second
	}
	// ask is one request of a client: sent, and for a well-behaved client
	// sent again after Retry-After while its deadline allows.
	ask := func(client int, ip, key string, retries bool) {
		s := seed.Add(1)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		for {
			status, kind, retry := send(ctx, ip, key, s)
			if status == http.StatusOK && time.Since(start) < deadline {
				record(abuseRequest{client: client, seed: s, ok: true, latency: time.Since(start)})
				return
			}
			if status != 0 && status != http.StatusOK {
				what := strings.TrimSuffix(strconv.Itoa(status)+"/"+kind, "/")
				if retries {
					what += "@" + retry.String() // the Retry-After a well-behaved client was told
				}
				refused(client, what)
			}
			if !retries || retry == 0 || time.Since(start)+retry >= deadline {
				mu.Lock()
				if status == 0 {
					late[client]++
				} else if retries {
					noTime[client]++
				}
				mu.Unlock()
				record(abuseRequest{client: client, seed: s})
				return
			}
			mu.Lock()
			retried[client]++
			mu.Unlock()
			t := time.NewTimer(retry)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			// A new attempt is a new prompt: a fresh seed, so that the fake
			// does not serve it from its cache.
			s = seed.Add(1)
		}
	}

	load, stop := context.WithTimeout(context.Background(), sc.window)
	defer stop()
	begin := time.Now()
	var running, loaders sync.WaitGroup
	// How late a 10 ms timer fires: a busy host delays every goroutine, the
	// gateway's and the fake GPUs' included, and the figures with them.
	var lags []time.Duration
	loaders.Go(func() {
		const every = 10 * time.Millisecond
		for {
			want := time.Now().Add(every)
			t := time.NewTimer(every)
			select {
			case <-load.Done():
				t.Stop()
				return
			case <-t.C:
			}
			lags = append(lags, max(time.Since(want), 0))
		}
	})
	for i := range abuseWellCount {
		rate := abuseWellShare * sc.capacity()
		rng := rand.New(rand.NewPCG(uint64(i+1), 8)) // the same arrivals every run
		ip, key := fmt.Sprintf("198.51.100.%d", i+1), keys[i]
		loaders.Go(func() {
			for {
				t := time.NewTimer(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
				select {
				case <-load.Done():
					t.Stop()
					return
				case <-t.C:
				}
				running.Go(func() { ask(i, ip, key, true) })
			}
		})
	}
	loaders.Go(func() {
		// Open loop at a steady rate; a tick the loaded machine delays
		// sends what fell due meanwhile, so the rate holds.
		rate := abuseFactor * sc.capacity()
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		for n := 0; ; {
			select {
			case <-load.Done():
				return
			case <-tick.C:
			}
			for due := int(time.Since(begin).Seconds() * rate); n < due; n++ {
				ip := fmt.Sprintf("203.0.113.%d", n%abuserIPs+1)
				running.Go(func() { ask(abuser, ip, "", false) })
			}
		}
	})
	loaders.Wait()
	running.Wait()

	// The backends' view: every prompt's run, clipped to the window.
	clip := func(iv interval) time.Duration {
		d := min(iv.end.Sub(begin), sc.window) - max(iv.start.Sub(begin), 0)
		return max(d, 0)
	}
	byseed := make(map[int64]abuseRequest, len(results))
	for _, r := range results {
		byseed[r.seed] = r
	}
	cr := make([]abuseClientResult, len(names))
	for i := range cr {
		cr[i].name, cr[i].abuser = names[i], i == abuser
		cr[i].retried, cr[i].late, cr[i].noTime = retried[i], late[i], noTime[i]
	}
	var busy, useful, ran time.Duration
	runs := 0
	var gaps []time.Duration // between a run's end and the next start on its backend
	for k, srv := range servers {
		srv.Close() // its executor has returned: every prompt is done
		ivs, err := logs[k].runs(srv)
		if err != nil {
			b.Error(err)
		}
		starts := make([]interval, 0, len(ivs))
		for _, iv := range ivs {
			starts = append(starts, iv)
		}
		slices.SortFunc(starts, func(a, b interval) int { return a.start.Compare(b.start) })
		for i := 1; i < len(starts); i++ {
			gaps = append(gaps, max(starts[i].start.Sub(starts[i-1].end), 0))
		}
		for s, iv := range ivs {
			runs++
			ran += iv.end.Sub(iv.start)
			d := clip(iv)
			busy += d
			if r, ok := byseed[s]; ok && r.ok {
				useful += d
				cr[r.client].served += d
			}
		}
	}
	// A request asks for one prompt's run: the mean run the backends saw
	// (the job time and the fake's own work on the image).
	meanRun := jobTime
	if runs > 0 {
		meanRun = ran / time.Duration(runs)
	}
	for _, r := range results {
		c := &cr[r.client]
		c.asked++
		c.demand += meanRun
		if r.ok {
			c.ok++
			c.latencies = append(c.latencies, r.latency)
		}
	}
	capacity := time.Duration(sc.backends) * sc.window
	demands := make([]time.Duration, len(cr))
	for i := range cr {
		demands[i] = cr[i].demand
	}
	for i, fs := range maxMinFair(demands, capacity) {
		cr[i].fair = fs
	}

	res := abuseResult{clients: cr, refusals: refusals}
	if tn != nil {
		attempts := 0
		for _, c := range cr {
			attempts += c.asked + c.retried
		}
		if res.notes, err = tn.report(abuserIPs, attempts); err != nil {
			b.Error(err)
		}
	}
	var wellAsked, wellOK int
	xs := make([]float64, 0, len(cr))
	for _, c := range cr {
		if !c.abuser {
			wellAsked += c.asked
			wellOK += c.ok
		}
		if c.fair > 0 {
			xs = append(xs, float64(c.served)/float64(c.fair))
		}
	}
	res.wellPct = 100 * float64(wellOK) / float64(max(wellAsked, 1))
	res.busyPct = 100 * float64(busy) / float64(capacity)
	res.usefulPct = 100 * float64(useful) / float64(max(busy, 1))
	res.jain = jainIndex(xs)
	if len(gaps) > 0 {
		slices.Sort(gaps)
		res.handoff = gaps[len(gaps)/2]
	}
	res.meanRun = meanRun
	if len(lags) > 0 {
		slices.Sort(lags)
		res.lag = lags[len(lags)*99/100]
	}
	return res
}

// maxMinFair shares capacity among demands by water-filling: every demand
// below the equal share is met in full, and what is left is shared equally
// among the rest.
func maxMinFair(demands []time.Duration, capacity time.Duration) []time.Duration {
	fair := make([]time.Duration, len(demands))
	left := make([]int, 0, len(demands))
	for i, d := range demands {
		if d > 0 {
			left = append(left, i)
		}
	}
	for len(left) > 0 && capacity > 0 {
		share := capacity / time.Duration(len(left))
		var next []int
		for _, i := range left {
			if demands[i]-fair[i] <= share {
				capacity -= demands[i] - fair[i]
				fair[i] = demands[i]
			} else {
				next = append(next, i)
			}
		}
		if len(next) == len(left) { // nobody is met in full: share what is left equally
			for _, i := range left {
				fair[i] += share
			}
			break
		}
		left = next
	}
	return fair
}

// jainIndex is (Σx)² / (n·Σx²): 1 when every x is equal, 1/n when one
// takes all.
func jainIndex(xs []float64) float64 {
	var sum, sumSq float64
	for _, x := range xs {
		sum, sumSq = sum+x, sumSq+x*x
	}
	if sumSq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sumSq)
}

func TestMaxMinFair(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name          string
		demands, want []time.Duration
		capacity      time.Duration
	}{
		{"all met", []time.Duration{1 * s, 2 * s}, []time.Duration{1 * s, 2 * s}, 10 * s},
		{"small met, rest shared", []time.Duration{1 * s, 1 * s, 1 * s, 100 * s}, []time.Duration{1 * s, 1 * s, 1 * s, 7 * s}, 10 * s},
		{"none met", []time.Duration{20 * s, 30 * s}, []time.Duration{5 * s, 5 * s}, 10 * s},
		{"cascade", []time.Duration{2 * s, 4 * s, 100 * s}, []time.Duration{2 * s, 4 * s, 6 * s}, 12 * s},
		{"no demand", []time.Duration{0, 5 * s}, []time.Duration{0, 5 * s}, 10 * s},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := maxMinFair(tc.demands, tc.capacity); !slices.Equal(got, tc.want) {
				t.Errorf("maxMinFair(%v, %v) = %v, want %v", tc.demands, tc.capacity, got, tc.want)
			}
		})
	}
}

func TestJainIndex(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{1, 1, 1, 1}, 1},
		{[]float64{1, 0, 0, 0}, 0.25},
		{[]float64{1, 1, 0, 0}, 0.5},
		{[]float64{0, 0}, 0},
	} {
		if got := jainIndex(tc.xs); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("jainIndex(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
}
