package dashboardapi_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/tenant"
)

// TestBackendsShowTiersAndClasses: the fair queue's view names each
// tenant's tier and priority class and counts the jobs waiting and running
// by class, highest first; a backend URL's password is not shown.
func TestBackendsShowTiersAndClasses(t *testing.T) {
	st := dispatch.Stats{
		Backends: []dispatch.BackendStats{{Name: "http://ops:hunter2@gpu-1:8188", Slots: 2, InUse: 2, Healthy: true, Started: 9}},
		Queued:   3,
		Classes: []dispatch.ClassStats{
			{Class: tenant.Low, Waiting: 2, Running: 1},
			{Class: tenant.Medium, Waiting: 1},
			{Class: tenant.High, Running: 1},
		},
		Tenants: []dispatch.TenantStats{
			{Tenant: "192.0.2.1", Tier: "anonymous", Class: tenant.Low, Waiting: 2, Running: 1},
			{Tenant: "acme", Tier: "registered", Class: tenant.Medium, Waiting: 1},
			{Tenant: "bigco", Tier: "vip", Class: tenant.High, Running: 1},
		},
		AvgJobTime: 2500 * time.Millisecond,
	}
	r := newRouter(t, dashboardapi.Config{Backends: func() dispatch.Stats { return st }})
	rec := request(r, "GET", "/api/backends", "", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /api/backends: %d %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "hunter2") || strings.Contains(rec.Body.String(), "ops@") {
		t.Fatalf("the backend's credentials are shown: %s", rec.Body)
	}
	type count struct {
		Waiting int `json:"waiting"`
		Running int `json:"running"`
	}
	var body struct {
		Backends []struct {
			Name string `json:"name"`
		} `json:"backends"`
		Queued  int `json:"queued"`
		Classes []struct {
			Class string `json:"class"`
			count
		} `json:"classes"`
		Tenants []struct {
			Tenant, Tier, Class string
			count
		} `json:"tenants"`
		AvgJobTimeMs int64 `json:"avg_job_time_ms"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Backends) != 1 || body.Backends[0].Name != "http://gpu-1:8188" || body.Queued != 3 || body.AvgJobTimeMs != 2500 {
		t.Fatalf("backends %s", rec.Body)
	}
	wantClasses := []string{"high 0 1", "medium 1 0", "low 2 1"}
	if len(body.Classes) != len(wantClasses) {
		t.Fatalf("classes %+v", body.Classes)
	}
	for i, c := range body.Classes {
		if got := c.Class + " " + itoa(c.Waiting) + " " + itoa(c.Running); got != wantClasses[i] {
			t.Errorf("classes[%d] = %q, want %q", i, got, wantClasses[i])
		}
	}
	wantTenants := []string{"192.0.2.1 anonymous low 2 1", "acme registered medium 1 0", "bigco vip high 0 1"}
	if len(body.Tenants) != len(wantTenants) {
		t.Fatalf("tenants %+v", body.Tenants)
	}
	for i, tn := range body.Tenants {
		if got := strings.Join([]string{tn.Tenant, tn.Tier, tn.Class, itoa(tn.Waiting), itoa(tn.Running)}, " "); got != wantTenants[i] {
			t.Errorf("tenants[%d] = %q, want %q", i, got, wantTenants[i])
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
