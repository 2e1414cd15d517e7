package prometheus_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

const dashboardFile = "grafana/sluice-dashboard.json"

// dataSource is the data source every query names: the dashboard's
// variable, so it works with any Prometheus.
const dataSource = "${DS_PROMETHEUS}"

type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func (d *datasourceRef) ok() bool { return d != nil && d.Type == "prometheus" && d.UID == dataSource }

var metricName = regexp.MustCompile(`\bsluice_[a-zA-Z0-9_]+`)

// notOnTheDashboard are the exporter's families the dashboard may leave
// out.
var notOnTheDashboard = []string{"sluice_load1"}

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q", d.SchemaVersion, d.UID, d.Title)
	}

	// What the exporter exposes, as PromQL names it: a histogram is its
	// _bucket, _sum and _count series.
	exp := fullExporter(t)
	mfs, err := exp.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	exposed := map[string]string{} // PromQL name → family
	for _, mf := range mfs {
		name := mf.GetName()
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exposed[name+s] = name
			}
			continue
		}
		exposed[name] = name
	}

	used := map[string]bool{} // families
	check := func(where, expr string) {
		t.Helper()
		if expr == "" {
			t.Errorf("%s: no expression", where)
		}
		for _, name := range metricName.FindAllString(expr, -1) {
			family, ok := exposed[name]
			if !ok {
				t.Errorf("%s: %s is not a metric the exporter exposes", where, name)
				continue
			}
			used[family] = true
		}
	}

	var hasDS bool
	for _, v := range d.Templating.List {
		switch {
		case v.Name == "DS_PROMETHEUS":
			hasDS = v.Type == "datasource" && string(v.Query) == `"prometheus"`
		case v.Type == "query":
			if !v.Datasource.ok() {
				t.Errorf("variable %s: data source %+v, want %s", v.Name, v.Datasource, dataSource)
			}
			check("variable "+v.Name, v.Definition)
		}
	}
	if !hasDS {
		t.Errorf("no datasource variable DS_PROMETHEUS of type prometheus")
	}

	ids := map[int]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if !p.Datasource.ok() {
				t.Errorf("panel %q: data source %+v, want %s", p.Title, p.Datasource, dataSource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no queries", p.Title)
			}
			for _, q := range p.Targets {
				if !q.Datasource.ok() {
					t.Errorf("panel %q query %s: data source %+v, want %s", p.Title, q.RefID, q.Datasource, dataSource)
				}
				check("panel "+p.Title+" query "+q.RefID, q.Expr)
			}
		}
	}
	walk(d.Panels)

	// And the other way round: what sluice exports, the dashboard shows or
	// an alert watches.
	alerted := map[string]bool{}
	for _, a := range alertRules(t) {
		for _, name := range metricName.FindAllString(a.Expr, -1) {
			alerted[exposed[name]] = true
		}
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if metricName.MatchString(name) && !used[name] && !alerted[name] && !slices.Contains(notOnTheDashboard, name) {
			t.Errorf("%s is exported but on no panel and in no alert", name)
		}
	}
}
