package dashboardapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/plan"
	"github.com/sluicehq/sluice/rules"
)

// planRouter serves the operator API with a planner over a farm of 4
// backends × 2 slots (the first one's URL with a password) and rec's times.
func planRouter(t *testing.T, rec *plan.Recorder, cfg dashboardapi.Config) http.Handler {
	t.Helper()
	st := dispatch.Stats{}
	for i, name := range []string{"http://ops:hunter2@gpu-1:8188", "http://gpu-2:8188", "http://gpu-3:8188", "http://gpu-4:8188"} {
		st.Backends = append(st.Backends, dispatch.BackendStats{Name: name, Slots: 2, Healthy: i != 3})
	}
	eng := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 9}]\nhotspot: [{param: origin, threshold: 3}]\n", engine.Options{})
	p, err := plan.New(plan.Config{Farm: func() dispatch.Stats { return st }, Times: rec, Rules: eng.Rules,
		Estimate: 5 * time.Second, EstimateSource: "--job-estimate"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Engine, cfg.Planner = eng, p
	return newRouter(t, cfg)
}

func TestPlanEndpoint(t *testing.T) {
	var rec plan.Recorder
	for range 10 {
		rec.Record(rules.ResourceDDColorPerson, 512, 3*time.Second)
	}
	r := planRouter(t, &rec, dashboardapi.Config{})
	res := request(r, "GET", "/api/plan", "", nil)
	if res.Code != http.StatusOK {
		t.Fatalf("GET /api/plan: %d %s", res.Code, res.Body)
	}
	if strings.Contains(res.Body.String(), "hunter2") {
		t.Fatalf("a backend's password is shown: %s", res.Body)
	}
	var body struct {
		Backends []struct {
			Name  string `json:"name"`
			Slots int    `json:"slots"`
		} `json:"backends"`
		SlotsTotal int `json:"slots_total"`
		Resources  []struct {
			Resource          string  `json:"resource"`
			Measured          bool    `json:"measured"`
			Samples           int     `json:"samples"`
			JobTimeMs         float64 `json:"job_time_ms"`
			P95Ms             float64 `json:"p95_ms"`
			Source            string  `json:"source"`
			SustainablePerSec float64 `json:"sustainable_per_sec"`
			Sizes             []struct {
				Size      int     `json:"size"`
				Samples   int     `json:"samples"`
				JobTimeMs float64 `json:"job_time_ms"`
				Cost      int     `json:"cost"`
			} `json:"sizes"`
			Proposed struct {
				FlowThreshold float64        `json:"flow_threshold"`
				Window        string         `json:"window"`
				Concurrency   int            `json:"concurrency"`
				Cost          map[string]int `json:"cost"`
				QueueWaitS    float64        `json:"queue_wait_s"`
			} `json:"proposed"`
		} `json:"resources"`
		Notes []string `json:"notes"`
		YAML  string   `json:"yaml"`
	}
	if err := json.Unmarshal(res.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.SlotsTotal != 8 || len(body.Backends) != 4 || body.Backends[0].Name != "http://gpu-1:8188" || body.Backends[0].Slots != 2 {
		t.Errorf("farm %+v, %d slots; want 4 backends × 2, the first without its password", body.Backends, body.SlotsTotal)
	}
	if len(body.Resources) != len(rules.Resources) {
		t.Fatalf("%d resources, want %d", len(body.Resources), len(rules.Resources))
	}
	p := body.Resources[0]
	if p.Resource != rules.ResourceDDColorPerson || !p.Measured || p.Source != "measured" || p.Samples != 10 || p.JobTimeMs != 3000 || p.P95Ms != 3000 ||
		p.SustainablePerSec != 2.667 || len(p.Sizes) != 1 || p.Sizes[0].Size != 512 || p.Sizes[0].Samples != 10 || p.Sizes[0].Cost != 1 {
		t.Errorf("ddcolor_person %+v", p)
	}
	if p.Proposed.FlowThreshold != 5 || p.Proposed.Window != "2s" || p.Proposed.Concurrency != 32 || p.Proposed.QueueWaitS != 9 || p.Proposed.Cost["512"] != 1 {
		t.Errorf("ddcolor_person's proposal %+v", p.Proposed)
	}
	b := body.Resources[1]
	if b.Measured || b.Source != "estimate" || b.JobTimeMs != 5000 || b.SustainablePerSec != 1.6 {
		t.Errorf("ddcolor_building, never measured: %+v; want the 5s estimate: 8/5 = 1.6/s", b)
	}
	notes := strings.Join(body.Notes, "\n")
	if !strings.Contains(notes, "ddcolor_building: no job measured yet") || !strings.Contains(notes, "1 of 4 backends are out") {
		t.Errorf("notes:\n%s", notes)
	}
	docs, err := rules.Parse("plan.yaml", []byte(body.YAML))
	if err != nil {
		t.Fatalf("the YAML does not parse: %v\n%s", err, body.YAML)
	}
	if _, err := rules.Build(docs); err != nil {
		t.Fatalf("the YAML does not validate: %v\n%s", err, body.YAML)
	}
	if d := docs[0].Resource; d.Flow[0].Threshold != 5 || len(d.Hotspot) != 1 {
		t.Errorf("ddcolor_person's document %+v: want the proposal and the hotspot rule in force", d)
	}
	if strings.Contains(body.YAML, "shadow") {
		t.Errorf("a plan without ?shadow marks rules shadow:\n%s", body.YAML)
	}

	res = request(r, "GET", "/api/plan?shadow=true", "", nil)
	var shadow struct{ YAML string }
	if err := json.Unmarshal(res.Body.Bytes(), &shadow); err != nil || res.Code != http.StatusOK {
		t.Fatalf("GET /api/plan?shadow=true: %d %s", res.Code, res.Body)
	}
	if !strings.Contains(shadow.YAML, "concurrency:\n  limit: 32\n  mode: shadow\n") || strings.Count(shadow.YAML, "mode: shadow") != 2*len(rules.Resources) {
		t.Errorf("?shadow=true does not put the proposal in shadow:\n%s", shadow.YAML)
	}
	checkProblem(t, request(r, "GET", "/api/plan?shadow=maybe", "", nil), http.StatusBadRequest)
}

func TestPlanIsAProtectedRead(t *testing.T) {
	r := planRouter(t, &plan.Recorder{}, dashboardapi.Config{AdminToken: testToken, ProtectReads: true})
	checkProblem(t, request(r, "GET", "/api/plan", "", nil), http.StatusUnauthorized)
	if res := request(r, "GET", "/api/plan", "Bearer "+testToken, nil); res.Code != http.StatusOK {
		t.Errorf("GET /api/plan with the token: %d %s", res.Code, res.Body)
	}
	if res := request(newRouter(t, dashboardapi.Config{}), "GET", "/api/plan", "", nil); res.Code != http.StatusNotFound {
		t.Errorf("GET /api/plan without a planner: %d, want 404", res.Code)
	}
}
