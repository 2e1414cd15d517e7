package prometheus_test

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/adapters/prometheus"
	"github.com/sluicehq/sluice/engine/dispatch"
)

const alertsFile = "alerts.yml"

// alertRule is one alerting rule of alerts.yml.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// alertRules reads the alerting rules shipped beside the dashboard.
func alertRules(t *testing.T) []alertRule {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string      `yaml:"name"`
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var out []alertRule
	for _, g := range file.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// farmStats is a farm of two backends, one down, one reached with a
// password in its URL.
var farmStats = dispatch.Stats{
	Backends: []dispatch.BackendStats{
		{Name: "http://gpu-1:8188", Slots: 2, InUse: 1, Healthy: true},
		{Name: "http://ops:hunter2@gpu-2:8188", Slots: 2, Healthy: false},
	},
	Queued:     3,
	AvgJobTime: 1500 * time.Millisecond,
}

// TestAlertsUseExportedMetrics scrapes a gateway's /metrics and checks
// that every metric the alerting rules name is in it: a renamed metric
// breaks this test before it silences an alert.
func TestAlertsUseExportedMetrics(t *testing.T) {
	rec := httptest.NewRecorder()
	fullExporter(t).Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	exposed := map[string]bool{} // as PromQL names them
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			exposed[f[2]] = true
			if f[3] == "histogram" || f[3] == "summary" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					exposed[f[2]+s] = true
				}
			}
		}
	}
	rules := alertRules(t)
	if len(rules) < 6 {
		t.Fatalf("%d alerting rules, want at least 6", len(rules))
	}
	for _, r := range rules {
		names := metricName.FindAllString(r.Expr, -1)
		if len(names) == 0 {
			t.Errorf("%s: its expression names no sluice metric: %q", r.Alert, r.Expr)
		}
		for _, name := range names {
			if !exposed[name] {
				t.Errorf("%s: %s is not in the gateway's /metrics", r.Alert, name)
			}
		}
		if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: want a severity label, a summary and a description; got %v %v", r.Alert, r.Labels, r.Annotations)
		}
	}
}

func TestFarmMetrics(t *testing.T) {
	exp := prometheus.New(prometheus.Config{Backends: func() dispatch.Stats { return farmStats }})
	const want = `# HELP sluice_backend_slots Jobs the backend runs at once.
# TYPE sluice_backend_slots gauge
sluice_backend_slots{backend="http://gpu-1:8188"} 2
sluice_backend_slots{backend="http://gpu-2:8188"} 2
# HELP sluice_backend_slots_in_use Slots of the backend running a job.
# TYPE sluice_backend_slots_in_use gauge
sluice_backend_slots_in_use{backend="http://gpu-1:8188"} 1
sluice_backend_slots_in_use{backend="http://gpu-2:8188"} 0
# HELP sluice_backend_up 1 while the ComfyUI backend passes its health probe.
# TYPE sluice_backend_up gauge
sluice_backend_up{backend="http://gpu-1:8188"} 1
sluice_backend_up{backend="http://gpu-2:8188"} 0
# HELP sluice_job_time_average_seconds The farm's measured average job time (a job holding a slot); 0 before any job.
# TYPE sluice_job_time_average_seconds gauge
sluice_job_time_average_seconds 1.5
# HELP sluice_queue_waiting_jobs Jobs waiting in the fair queue for a GPU slot.
# TYPE sluice_queue_waiting_jobs gauge
sluice_queue_waiting_jobs 3
`
	if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want), "sluice_backend_slots", "sluice_backend_slots_in_use",
		"sluice_backend_up", "sluice_job_time_average_seconds", "sluice_queue_waiting_jobs"); err != nil {
		t.Error(err)
	}
	// Without a farm, none.
	if n, _ := testutil.GatherAndCount(prometheus.New(prometheus.Config{}).Registry(), "sluice_backend_up", "sluice_queue_waiting_jobs"); n != 0 {
		t.Errorf("%d farm series without a farm", n)
	}
}

func TestClientOriginsCountedOnce(t *testing.T) {
	exp := prometheus.New(prometheus.Config{})
	for _, origin := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.1", "2001:db8:1:2::/64", "192.0.2.2"} {
		exp.ObserveClient(origin)
	}
	const want = `# HELP sluice_client_origins_new_total Client origins (IPv4 addresses, IPv6 prefixes) that called and were not among the last 65536 seen: its rate is the rate of new clients.
# TYPE sluice_client_origins_new_total counter
sluice_client_origins_new_total 3
# HELP sluice_client_origins_recent Distinct client origins among those remembered (at most 65536).
# TYPE sluice_client_origins_recent gauge
sluice_client_origins_recent 3
`
	if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want), "sluice_client_origins_new_total", "sluice_client_origins_recent"); err != nil {
		t.Error(err)
	}
}

func TestRulesWatchMetrics(t *testing.T) {
	for _, tc := range []struct {
		name string
		info prometheus.RulesInfo
		want string
	}{
		{"live", prometheus.RulesInfo{Live: true, HeardAt: time.Unix(1_700_000_000, 500_000_000)}, "1 1.7000000005e+09"},
		{"stale", prometheus.RulesInfo{Live: false, HeardAt: time.Unix(1_700_000_000, 0)}, "0 1.7e+09"},
		{"never heard", prometheus.RulesInfo{}, "0 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp := prometheus.New(prometheus.Config{Rules: func() prometheus.RulesInfo { return tc.info }})
			live, heard, _ := strings.Cut(tc.want, " ")
			want := `# HELP sluice_rules_heard_timestamp_seconds When etcd last answered the rule watch, in Unix seconds; 0: never.
# TYPE sluice_rules_heard_timestamp_seconds gauge
sluice_rules_heard_timestamp_seconds ` + heard + `
# HELP sluice_rules_watch_live 1 while the rule watch hears etcd; 0: etcd is unreachable and the rules in force may be stale.
# TYPE sluice_rules_watch_live gauge
sluice_rules_watch_live ` + live + "\n"
			if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(want), "sluice_rules_watch_live", "sluice_rules_heard_timestamp_seconds"); err != nil {
				t.Error(err)
			}
		})
	}
}
