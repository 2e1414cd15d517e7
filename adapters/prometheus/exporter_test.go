package prometheus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluicehq/sluice/adapters/prometheus"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/rules"
)

const gib = 1 << 30

// fixedClock is a Clock that stands still, so GPU samples never age.
type fixedClock struct{ now time.Time }

func (c fixedClock) Now() time.Time { return c.now }

// fixedCPU reports a fixed CPU usage.
type fixedCPU float64

func (f fixedCPU) CPUUsage() (float64, error) { return float64(f), nil }

var epoch = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// engines numbers the engines, so each has its own sentinel namespace even
// when a test runs again (-count): sentinel-golang's windows outlive them.
var engines atomic.Int64

// newEngine starts an engine with its own sentinel namespace, a clock that
// stands still and a CPU at 25 %.
func newEngine(t testing.TB, src string) *engine.Engine {
	t.Helper()
	set, err := rules.ParseSet(t.Name()+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{
		Namespace: fmt.Sprintf("%s#%d/", t.Name(), engines.Add(1)),
		Clock:     fixedClock{epoch},
		CPU:       fixedCPU(0.25),
	}, set)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	return eng
}

// guard makes n calls and returns the tokens admitted; it counts the
// refusals by kind.
func guard(t testing.TB, eng *engine.Engine, n int, c engine.Call) ([]*engine.Token, map[engine.Kind]int) {
	t.Helper()
	var toks []*engine.Token
	refused := map[engine.Kind]int{}
	for range n {
		tok, err := eng.Guard(context.Background(), c)
		var ref *engine.Refusal
		switch {
		case err == nil:
			toks = append(toks, tok)
		case errors.As(err, &ref):
			refused[ref.Kind]++
		default:
			t.Fatalf("Guard: %v", err)
		}
	}
	return toks, refused
}

// remote is GPU index of a ComfyUI backend, 16 GiB, used GiB in use.
func remote(backend string, index int, used float64) engine.GPU {
	return engine.GPU{
		ID: fmt.Sprintf("%s#%d", backend, index), Source: "comfyui", Backend: backend, Index: index,
		Name: "cuda:0 NVIDIA RTX 4080", MemoryUsed: uint64(used * gib), MemoryTotal: 16 * gib,
		Utilization: -1, SampledAt: epoch,
	}
}

// local is an 80 GiB GPU on this host, read through NVML.
func local(used float64, util float64) engine.GPU {
	return engine.GPU{
		ID: "nvml:0", Source: "nvml", Name: "NVIDIA H100 80GB HBM3",
		MemoryUsed: uint64(used * gib), MemoryTotal: 80 * gib, Utilization: util, SampledAt: epoch,
	}
}

// requestsText is the exposition of sluice_requests_total with the counts
// in want ("resource admitted" or "resource refused kind", of the anonymous
// tier) and 0 for every other resource, outcome and kind.
func requestsText(want map[string]int) string {
	return requestsTiersText(map[string]map[string]int{"anonymous": want})
}

// requestsTiersText is requestsText with the counts of several tiers: every
// resource has the anonymous tier's series, and those of each tier with a
// count of it in want.
func requestsTiersText(want map[string]map[string]int) string {
	tiers := slices.Sorted(maps.Keys(want))
	if _, ok := want["anonymous"]; !ok {
		tiers = append([]string{"anonymous"}, tiers...)
	}
	var b strings.Builder
	b.WriteString("# HELP sluice_requests_total Requests decided by the engine: admitted, or refused by a rule of kind rule_kind; by the caller's tier (anonymous callers: anonymous).\n")
	b.WriteString("# TYPE sluice_requests_total counter\n")
	for _, r := range rules.Resources {
		for _, tier := range tiers {
			seen := tier == "anonymous"
			for k := range want[tier] {
				seen = seen || strings.HasPrefix(k, r+" ")
			}
			if !seen {
				continue
			}
			fmt.Fprintf(&b, "sluice_requests_total{outcome=\"admitted\",resource=%q,rule_kind=\"\",tier=%q} %d\n", r, tier, want[tier][r+" admitted"])
			for _, k := range engine.Kinds {
				fmt.Fprintf(&b, "sluice_requests_total{outcome=\"refused\",resource=%q,rule_kind=%q,tier=%q} %d\n", r, k, tier, want[tier][r+" refused "+string(k)])
			}
		}
	}
	return b.String()
}

func TestRequestsByTierNeverByTenant(t *testing.T) {
	eng := newEngine(t, `resource: ddcolor_person
hotspot: [{param: tenant, threshold: 1, window: 60s}]
`)
	if err := eng.SetTierRates(map[string]rules.TierRate{"vip": {Threshold: 1, Window: rules.Duration(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	exp := prometheus.New(prometheus.Config{Engine: eng})
	acme, refused := guard(t, eng, 2, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Tenant: "acme", Tier: "registered"})
	if len(acme) != 1 || refused[engine.KindHotspot] != 1 {
		t.Fatalf("acme: admitted %d, refused %v; want 1 and 1 by hotspot", len(acme), refused)
	}
	defer acme[0].Exit(nil)
	initech, refused := guard(t, eng, 2, engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1", Tenant: "initech", Tier: "vip"})
	if len(initech) != 1 || refused[engine.KindTierRate] != 1 {
		t.Fatalf("initech: admitted %d, refused %v; want 1 and 1 by tier_rate", len(initech), refused)
	}
	defer initech[0].Exit(nil)
	anon, _ := guard(t, eng, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	defer anon[0].Exit(nil)

	// Each resource shows the anonymous tier and the tiers it has seen.
	want := requestsTiersText(map[string]map[string]int{
		"anonymous":  {"ddcolor_person admitted": 1},
		"registered": {"ddcolor_person admitted": 1, "ddcolor_person refused hotspot": 1},
		"vip":        {"zimage_generate admitted": 1, "zimage_generate refused tier_rate": 1},
	})
	if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want), "sluice_requests_total"); err != nil {
		t.Error(err)
	}
	got, err := exp.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range got {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" || strings.Contains(l.GetValue(), "acme") || strings.Contains(l.GetValue(), "initech") {
					t.Fatalf("%s has the tenant in label %s=%q", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}

func TestRequestsAndJobsInFlight(t *testing.T) {
	eng := newEngine(t, `resource: ddcolor_person
flow: [{threshold: 2, window: 10s}]
---
resource: zimage_generate
concurrency: 1
`)
	exp := prometheus.New(prometheus.Config{Engine: eng})
	reg := exp.Registry()

	if err := testutil.GatherAndCompare(reg, strings.NewReader(requestsText(nil)), "sluice_requests_total"); err != nil {
		t.Fatalf("before any request: %v", err)
	}

	person, refused := guard(t, eng, 5, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	if len(person) != 2 || refused[engine.KindFlow] != 3 {
		t.Fatalf("ddcolor_person: admitted %d, refused %v; want 2 and 3 by flow", len(person), refused)
	}
	person[0].Exit(nil)
	zimage, refused := guard(t, eng, 2, engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"})
	if len(zimage) != 1 || refused[engine.KindConcurrency] != 1 {
		t.Fatalf("zimage_generate: admitted %d, refused %v; want 1 and 1 by concurrency", len(zimage), refused)
	}
	defer person[1].Exit(nil)
	defer zimage[0].Exit(nil)

	want := requestsText(map[string]int{
		"ddcolor_person admitted":             2,
		"ddcolor_person refused flow":         3,
		"zimage_generate admitted":            1,
		"zimage_generate refused concurrency": 1,
	})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sluice_requests_total"); err != nil {
		t.Error(err)
	}
	const inFlight = `# HELP sluice_jobs_in_flight Admitted requests whose work has not ended.
# TYPE sluice_jobs_in_flight gauge
sluice_jobs_in_flight{resource="ddcolor_building"} 0
sluice_jobs_in_flight{resource="ddcolor_person"} 1
sluice_jobs_in_flight{resource="zimage_generate"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(inFlight), "sluice_jobs_in_flight"); err != nil {
		t.Error(err)
	}
}

func TestGPUMetrics(t *testing.T) {
	eng := newEngine(t, "gpu: {memory_used_ratio: 0.875}\n")
	exp := prometheus.New(prometheus.Config{Engine: eng})
	eng.ReportGPUs("comfyui http://gpu-1:8188", []engine.GPU{
		remote("http://gpu-1:8188", 0, 15), // 0.9375: under pressure
		remote("http://gpu-1:8188", 1, 8),
	}, nil)
	eng.ReportGPUs("comfyui http://gpu-2:8188", nil, errors.New("connection refused"))
	eng.ReportGPUs("nvml", []engine.GPU{local(40, 0.7)}, nil)

	const want = `# HELP sluice_cpu_usage_ratio The gateway's own CPU busy fraction (its cgroup's or its process's), 0–1, as the engine last sampled it.
# TYPE sluice_cpu_usage_ratio gauge
sluice_cpu_usage_ratio 0.25
# HELP sluice_gpu_memory_total_bytes GPU memory in all.
# TYPE sluice_gpu_memory_total_bytes gauge
sluice_gpu_memory_total_bytes{backend="",gpu="nvml:0",source="nvml"} 85899345920
sluice_gpu_memory_total_bytes{backend="http://gpu-1:8188",gpu="http://gpu-1:8188#0",source="comfyui"} 17179869184
sluice_gpu_memory_total_bytes{backend="http://gpu-1:8188",gpu="http://gpu-1:8188#1",source="comfyui"} 17179869184
# HELP sluice_gpu_memory_used_bytes GPU memory in use, as its source last saw it.
# TYPE sluice_gpu_memory_used_bytes gauge
sluice_gpu_memory_used_bytes{backend="",gpu="nvml:0",source="nvml"} 42949672960
sluice_gpu_memory_used_bytes{backend="http://gpu-1:8188",gpu="http://gpu-1:8188#0",source="comfyui"} 16106127360
sluice_gpu_memory_used_bytes{backend="http://gpu-1:8188",gpu="http://gpu-1:8188#1",source="comfyui"} 8589934592
# HELP sluice_gpu_pressure 1 while the GPU is over the GPU rule's thresholds (with hysteresis).
# TYPE sluice_gpu_pressure gauge
sluice_gpu_pressure{backend="",gpu="nvml:0",source="nvml"} 0
sluice_gpu_pressure{backend="http://gpu-1:8188",gpu="http://gpu-1:8188#0",source="comfyui"} 1
sluice_gpu_pressure{backend="http://gpu-1:8188",gpu="http://gpu-1:8188#1",source="comfyui"} 0
# HELP sluice_gpu_pressure_active 1 while the GPU rule refuses or tightens because a GPU is under pressure (an enforcing GPU rule only).
# TYPE sluice_gpu_pressure_active gauge
sluice_gpu_pressure_active 1
# HELP sluice_gpu_source_up 1 when the GPU source's last read succeeded.
# TYPE sluice_gpu_source_up gauge
sluice_gpu_source_up{source="comfyui http://gpu-1:8188"} 1
sluice_gpu_source_up{source="comfyui http://gpu-2:8188"} 0
sluice_gpu_source_up{source="nvml"} 1
# HELP sluice_gpu_tighten_factor Factor flow thresholds are scaled by; 1 unless a tighten pressure of an enforcing GPU rule is active.
# TYPE sluice_gpu_tighten_factor gauge
sluice_gpu_tighten_factor 1
# HELP sluice_gpu_utilization_ratio GPU busy fraction, 0–1, where the source reports it (NVML).
# TYPE sluice_gpu_utilization_ratio gauge
sluice_gpu_utilization_ratio{backend="",gpu="nvml:0",source="nvml"} 0.7
`
	names := []string{
		"sluice_cpu_usage_ratio", "sluice_gpu_memory_total_bytes", "sluice_gpu_memory_used_bytes",
		"sluice_gpu_pressure", "sluice_gpu_pressure_active", "sluice_gpu_source_up",
		"sluice_gpu_tighten_factor", "sluice_gpu_utilization_ratio",
	}
	if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// The pressure is the engine's: a GPU refusal shows in requests_total.
	if _, refused := guard(t, eng, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}); refused[engine.KindGPU] != 1 {
		t.Fatalf("refused %v, want one by the GPU rule", refused)
	}
	if got := value(t, exp.Registry(), "sluice_requests_total", "resource", "ddcolor_person", "outcome", "refused", "rule_kind", "gpu"); got != 1 {
		t.Errorf("gpu refusals exported %v, want 1", got)
	}
}

func TestGPUPressureAndFactor(t *testing.T) {
	tests := []struct {
		name     string
		rule     string
		used     float64 // GiB of 16
		active   float64
		factor   float64
		onTheGPU float64 // sluice_gpu_pressure of the GPU
		shadow   float64 // sluice_gpu_shadow_pressure_active
	}{
		{"no rule", "system: {concurrency: 64}\n", 15.5, 0, 1, 0, 0},
		{"under the threshold", "gpu: {memory_used_ratio: 0.875}\n", 8, 0, 1, 0, 0},
		{"reject", "gpu: {memory_used_ratio: 0.875}\n", 15, 1, 1, 1, 0},
		{"tighten", "gpu: {memory_used_ratio: 0.875, action: tighten, factor: 0.25}\n", 15, 1, 0.25, 1, 0},
		// A shadow GPU rule's pressure is not the enforced one: an alert on
		// sluice_gpu_pressure_active must not fire for it.
		{"shadow reject", "gpu: {mode: shadow, memory_used_ratio: 0.875}\n", 15, 0, 1, 1, 1},
		{"shadow tighten", "gpu: {mode: shadow, memory_used_ratio: 0.875, action: tighten, factor: 0.25}\n", 15, 0, 1, 1, 1},
		{"shadow under the threshold", "gpu: {mode: shadow, memory_used_ratio: 0.875}\n", 8, 0, 1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := newEngine(t, tt.rule)
			exp := prometheus.New(prometheus.Config{Engine: eng})
			eng.ReportGPUs("comfyui http://gpu-1:8188", []engine.GPU{remote("http://gpu-1:8188", 0, tt.used)}, nil)
			reg := exp.Registry()
			if got := value(t, reg, "sluice_gpu_pressure_active"); got != tt.active {
				t.Errorf("sluice_gpu_pressure_active = %v, want %v", got, tt.active)
			}
			if got := value(t, reg, "sluice_gpu_tighten_factor"); got != tt.factor {
				t.Errorf("sluice_gpu_tighten_factor = %v, want %v", got, tt.factor)
			}
			if got := value(t, reg, "sluice_gpu_shadow_pressure_active"); got != tt.shadow {
				t.Errorf("sluice_gpu_shadow_pressure_active = %v, want %v", got, tt.shadow)
			}
			if got := value(t, reg, "sluice_gpu_pressure", "gpu", "http://gpu-1:8188#0"); got != tt.onTheGPU {
				t.Errorf("sluice_gpu_pressure = %v, want %v", got, tt.onTheGPU)
			}
			if n, err := testutil.GatherAndCount(reg, "sluice_gpu_utilization_ratio"); err != nil || n != 0 {
				t.Errorf("sluice_gpu_utilization_ratio: %d series (%v); want none for a GPU that does not report it", n, err)
			}
		})
	}
}

func TestSameGPUFromTwoSources(t *testing.T) {
	eng := newEngine(t, "gpu: {memory_used_ratio: 0.875}\n")
	exp := prometheus.New(prometheus.Config{Engine: eng})
	g := remote("http://gpu-1:8188", 0, 4)
	eng.ReportGPUs("comfyui http://gpu-1:8188", []engine.GPU{g}, nil)
	eng.ReportGPUs("comfyui http://gpu-1:8188/", []engine.GPU{g}, nil)
	n, err := testutil.GatherAndCount(exp.Registry(), "sluice_gpu_memory_used_bytes")
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	if n != 1 {
		t.Errorf("%d series for one GPU, want 1", n)
	}
}

func TestObserveJob(t *testing.T) {
	exp := prometheus.New(prometheus.Config{})
	exp.ObserveJob("ddcolor_person", 300*time.Millisecond, 1500*time.Millisecond, nil)
	exp.ObserveJob("ddcolor_person", 0, 4*time.Second, errors.New("comfyui: out of memory"))
	exp.ObserveJob("zimage_generate", 2*time.Second, 6*time.Second, nil)
	exp.ObserveJob("zimage_generate", -time.Second, 9*time.Second, nil) // clocks that disagree
	reg := exp.Registry()

	tests := []struct {
		name   string
		labels []string
		count  uint64
		sum    float64
		le2    uint64 // observations ≤ 2s
	}{
		{"sluice_job_duration_seconds", []string{"resource", "ddcolor_person", "outcome", "success"}, 1, 1.5, 1},
		{"sluice_job_duration_seconds", []string{"resource", "ddcolor_person", "outcome", "failure"}, 1, 4, 0},
		{"sluice_job_duration_seconds", []string{"resource", "zimage_generate", "outcome", "success"}, 2, 15, 0},
		{"sluice_job_duration_seconds", []string{"resource", "ddcolor_building", "outcome", "success"}, 0, 0, 0},
		{"sluice_job_queue_wait_seconds", []string{"resource", "ddcolor_person"}, 1, 0.3, 1},
		{"sluice_job_queue_wait_seconds", []string{"resource", "zimage_generate"}, 2, 2, 2},
	}
	for _, tt := range tests {
		h := series(t, reg, tt.name, tt.labels...).GetHistogram()
		if h.GetSampleCount() != tt.count || h.GetSampleSum() != tt.sum {
			t.Errorf("%s%v: count %d sum %v, want %d and %v", tt.name, tt.labels, h.GetSampleCount(), h.GetSampleSum(), tt.count, tt.sum)
		}
		var bounds []float64
		for _, b := range h.GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
			if b.GetUpperBound() == 2 && b.GetCumulativeCount() != tt.le2 {
				t.Errorf("%s%v: %d at or under 2s, want %d", tt.name, tt.labels, b.GetCumulativeCount(), tt.le2)
			}
		}
		if want := []float64{.1, .25, .5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120}; !slices.Equal(bounds, want) {
			t.Errorf("%s buckets %v, want %v", tt.name, bounds, want)
		}
	}
	// Every resource's series exist before its first job.
	for name, want := range map[string]int{"sluice_job_duration_seconds": 2 * len(rules.Resources), "sluice_job_queue_wait_seconds": len(rules.Resources)} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != want {
			t.Errorf("%s: %d series (%v), want %d", name, n, err, want)
		}
	}
}

func TestRulesMetrics(t *testing.T) {
	t.Run("without a rules source", func(t *testing.T) {
		exp := prometheus.New(prometheus.Config{})
		n, err := testutil.GatherAndCount(exp.Registry(), "sluice_rules_revision", "sluice_rule_updates_rejected_total")
		if err != nil || n != 0 {
			t.Errorf("%d series (%v), want none", n, err)
		}
	})
	t.Run("read at every scrape", func(t *testing.T) {
		var rev atomic.Int64
		rev.Store(7)
		var rejected atomic.Uint64
		exp := prometheus.New(prometheus.Config{Rules: func() prometheus.RulesInfo {
			return prometheus.RulesInfo{Revision: rev.Load(), Rejections: rejected.Load()}
		}})
		want := func(rev int64, rejected uint64) string {
			return fmt.Sprintf(`# HELP sluice_rule_updates_rejected_total Rule updates refused as invalid; the last good rules stayed in force.
# TYPE sluice_rule_updates_rejected_total counter
sluice_rule_updates_rejected_total %d
# HELP sluice_rules_revision The etcd revision of the rules in force.
# TYPE sluice_rules_revision gauge
sluice_rules_revision %d
`, rejected, rev)
		}
		names := []string{"sluice_rules_revision", "sluice_rule_updates_rejected_total"}
		if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want(7, 0)), names...); err != nil {
			t.Error(err)
		}
		rev.Store(12)
		rejected.Add(2)
		if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want(12, 2)), names...); err != nil {
			t.Error(err)
		}
		// No engine: none of its metrics.
		if n, _ := testutil.GatherAndCount(exp.Registry(), "sluice_requests_total", "sluice_cpu_usage_ratio"); n != 0 {
			t.Errorf("%d engine series without an engine", n)
		}
	})
}

func TestHandlerServesTextExposition(t *testing.T) {
	eng := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 5, window: 10s}]\n---\ngpu: {memory_used_ratio: 0.875}\n")
	exp := prometheus.New(prometheus.Config{
		Engine: eng,
		Rules:  func() prometheus.RulesInfo { return prometheus.RulesInfo{Revision: 3, Rejections: 1} },
	})
	toks, _ := guard(t, eng, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	toks[0].Exit(nil)
	exp.ObserveJob("ddcolor_person", 200*time.Millisecond, 1200*time.Millisecond, nil)
	eng.ReportGPUs("nvml", []engine.GPU{local(76, 0.9)}, nil) // 0.95: under pressure

	srv := httptest.NewServer(exp.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("%s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, line := range []string{
		`sluice_requests_total{outcome="admitted",resource="ddcolor_person",rule_kind="",tier="anonymous"} 1`,
		`sluice_requests_total{outcome="refused",resource="ddcolor_person",rule_kind="gpu",tier="anonymous"} 0`,
		`sluice_jobs_in_flight{resource="ddcolor_person"} 0`,
		`sluice_job_duration_seconds_bucket{outcome="success",resource="ddcolor_person",le="2"} 1`,
		`sluice_job_duration_seconds_count{outcome="success",resource="ddcolor_person"} 1`,
		`sluice_job_queue_wait_seconds_bucket{resource="ddcolor_person",le="0.25"} 1`,
		`sluice_gpu_memory_used_bytes{backend="",gpu="nvml:0",source="nvml"} 8.1604378624e+10`,
		`sluice_gpu_memory_total_bytes{backend="",gpu="nvml:0",source="nvml"} 8.589934592e+10`,
		`sluice_gpu_utilization_ratio{backend="",gpu="nvml:0",source="nvml"} 0.9`,
		`sluice_gpu_pressure{backend="",gpu="nvml:0",source="nvml"} 1`,
		`sluice_gpu_pressure_active 1`,
		`sluice_gpu_tighten_factor 1`,
		`sluice_cpu_usage_ratio 0.25`,
		`sluice_rules_revision 3`,
		`sluice_rule_updates_rejected_total 1`,
		`# TYPE sluice_requests_total counter`,
		`# TYPE sluice_job_duration_seconds histogram`,
		`# TYPE go_goroutines gauge`,
		`promhttp_metric_handler_requests_total{code="200"} 0`,
	} {
		if !strings.Contains(string(body), "\n"+line+"\n") {
			t.Errorf("exposition lacks %q", line)
		}
	}

	// A second scrape sees the first counted.
	const scrapes = `# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code.
# TYPE promhttp_metric_handler_requests_total counter
promhttp_metric_handler_requests_total{code="200"} 1
promhttp_metric_handler_requests_total{code="500"} 0
promhttp_metric_handler_requests_total{code="503"} 0
`
	if err := testutil.ScrapeAndCompare(srv.URL, strings.NewReader(scrapes), "promhttp_metric_handler_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsLint(t *testing.T) {
	exp := fullExporter(t)
	names := sluiceFamilies(t, exp.Registry())
	if len(names) < 15 {
		t.Fatalf("only %d families of sluice's: %v", len(names), names)
	}
	problems, err := testutil.GatherAndLint(exp.Registry(), names...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// Scrapes run beside admissions, job observations and GPU reports; the race
// detector watches.
func TestConcurrentScrapes(t *testing.T) {
	eng := newEngine(t, "resource: ddcolor_person\nconcurrency: 4\n---\ngpu: {memory_used_ratio: 0.875}\n")
	exp := prometheus.New(prometheus.Config{Engine: eng, Rules: func() prometheus.RulesInfo { return prometheus.RulesInfo{} }})
	h := exp.Handler()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 50 {
				if toks, _ := guard(t, eng, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}); len(toks) == 1 {
					toks[0].Exit(nil)
				}
				exp.ObserveJob("ddcolor_person", time.Duration(j)*time.Millisecond, time.Second, nil)
				eng.ReportGPUs(fmt.Sprint("comfyui http://gpu-", i), []engine.GPU{remote(fmt.Sprint("http://gpu-", i), 0, float64(j%10))}, nil) // never under pressure
			}
		})
		wg.Go(func() {
			for range 20 {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
				if rec.Code != http.StatusOK {
					t.Errorf("scrape: %d %s", rec.Code, rec.Body)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := value(t, exp.Registry(), "sluice_requests_total", "resource", "ddcolor_person", "outcome", "admitted"); got != 200 {
		t.Errorf("admitted %v, want 200", got)
	}
}

// fullExporter is an exporter whose every series has a value: an engine
// with admissions, refusals and GPUs (one with its utilisation), rules, and
// jobs observed.
func fullExporter(t *testing.T) *prometheus.Exporter {
	t.Helper()
	eng := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n---\ngpu: {memory_used_ratio: 0.875}\n")
	exp := prometheus.New(prometheus.Config{
		Engine: eng,
		Rules: func() prometheus.RulesInfo {
			return prometheus.RulesInfo{Revision: 5, Rejections: 1, Live: true, HeardAt: epoch}
		},
		Backends: func() dispatch.Stats { return farmStats },
	})
	exp.ObserveClient("192.0.2.1")
	toks, _ := guard(t, eng, 2, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	for _, tok := range toks {
		tok.Exit(nil)
	}
	exp.ObserveJob("ddcolor_person", time.Second, 2*time.Second, nil)
	eng.ReportGPUs("nvml", []engine.GPU{local(10, 0.5)}, nil)
	eng.ReportGPUs("comfyui http://gpu-1:8188", []engine.GPU{remote("http://gpu-1:8188", 0, 15)}, nil)
	return exp
}

// sluiceFamilies names the families of sluice's own metrics g gathers.
func sluiceFamilies(t *testing.T, g prom.Gatherer) []string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "sluice_") {
			names = append(names, mf.GetName())
		}
	}
	return names
}

// series finds the one series of family name whose labels include the
// name/value pairs given.
func series(t *testing.T, g prom.Gatherer, name string, labels ...string) *dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var found []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}) {
					continue metrics
				}
			}
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, labels, len(found))
	}
	return found[0]
}

// value is the value of a gauge or counter series.
func value(t *testing.T, g prom.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	m := series(t, g, name, labels...)
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}
