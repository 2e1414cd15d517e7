package dashboardapi_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/rules"
)

// fakeTiers is a TierSource that validates like etcd's and keeps what it
// is given.
type fakeTiers struct {
	mu     sync.Mutex
	tiers  *rules.Tiers
	status dashboardapi.TiersStatus
	puts   int
	err    error // answered by PutTiers when set
}

func (f *fakeTiers) Tiers() *rules.Tiers {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tiers
}

func (f *fakeTiers) TiersStatus() dashboardapi.TiersStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fakeTiers) PutTiers(_ context.Context, doc []byte) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	ts, err := rules.ParseTiers("/sluice/tiers", doc)
	if err != nil {
		return 0, err
	}
	f.puts++
	f.tiers = ts
	f.status = dashboardapi.TiersStatus{Source: "etcd /sluice/tiers", Revision: int64(10 + f.puts)}
	return f.status.Revision, nil
}

func TestTiersAPI(t *testing.T) {
	src := &fakeTiers{tiers: rules.DefaultTiers(), status: dashboardapi.TiersStatus{Source: "built-in",
		LastRejection: &dashboardapi.Rejection{Key: "/sluice/tiers", Revision: 7, Errors: []string{"/sluice/tiers: tiers: missing"}}}}
	r := newRouter(t, dashboardapi.Config{Tiers: src, AdminToken: testToken})
	auth := "Bearer " + testToken

	rec := request(r, http.MethodGet, "/api/tiers", "", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET: %d %s", rec.Code, rec.Body)
	}
	body := decode(t, rec)
	tiers, _ := body["tiers"].([]any)
	rej, _ := body["last_rejection"].(map[string]any)
	if body["source"] != "built-in" || body["timezone"] != "UTC" || len(tiers) != 3 || rej == nil || rej["revision"] != float64(7) {
		t.Fatalf("GET body %s", rec.Body)
	}
	if vip := tiers[2].(map[string]any); vip["daily_quota"] != "unlimited" || vip["priority"] != "high" || vip["in_flight"] != float64(3) {
		t.Fatalf("vip as shown: %v", vip)
	}

	doc := "tiers:\n  - name: anonymous\n    daily_quota: 7\n"
	// Writes need the admin token.
	checkProblem(t, request(r, http.MethodPut, "/api/tiers", "", strings.NewReader(doc)), http.StatusUnauthorized)
	checkProblem(t, request(r, http.MethodPut, "/api/tiers", "Bearer wrong", strings.NewReader(doc)), http.StatusForbidden)
	// Invalid: 422 with every message; nothing written.
	p := checkProblem(t, request(r, http.MethodPut, "/api/tiers", auth,
		strings.NewReader("tiers:\n  - name: anonymous\n    daily_quota: lots\n    in_flight: many\n")), http.StatusUnprocessableEntity)
	errs, _ := p["errors"].([]any)
	if len(errs) != 2 || errs[0] != `/sluice/tiers: tiers[0].daily_quota: want an integer >= 0 or "unlimited", got "lots"` ||
		!strings.Contains(p["detail"].(string), "2 problems") {
		t.Fatalf("422 body %v", p)
	}
	checkProblem(t, request(r, http.MethodPut, "/api/tiers", auth, strings.NewReader("  \n")), http.StatusBadRequest)
	if src.puts != 0 {
		t.Fatal("a refused write reached the source")
	}

	rec = request(r, http.MethodPut, "/api/tiers", auth, strings.NewReader(doc))
	if rec.Code != http.StatusOK || decode(t, rec)["revision"] != float64(11) {
		t.Fatalf("PUT: %d %s", rec.Code, rec.Body)
	}
	body = decode(t, request(r, http.MethodGet, "/api/tiers", "", nil))
	if tiers, _ := body["tiers"].([]any); len(tiers) != 1 || body["source"] != "etcd /sluice/tiers" {
		t.Fatalf("after PUT: %v", body)
	}

	src.err = errors.New("etcd down")
	checkProblem(t, request(r, http.MethodPut, "/api/tiers", auth, strings.NewReader(doc)), http.StatusBadGateway)
	src.err = context.DeadlineExceeded
	checkProblem(t, request(r, http.MethodPut, "/api/tiers", auth, strings.NewReader(doc)), http.StatusGatewayTimeout)
	checkProblem(t, request(r, http.MethodPut, "/api/tiers", auth, strings.NewReader(strings.Repeat("x", rules.MaxSourceBytes+1))), http.StatusRequestEntityTooLarge)
}

func TestTiersAPIProtectedReadsAndAbsent(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{Tiers: &fakeTiers{tiers: rules.DefaultTiers()}, AdminToken: testToken, ProtectReads: true})
	checkProblem(t, request(r, http.MethodGet, "/api/tiers", "", nil), http.StatusUnauthorized)
	if rec := request(r, http.MethodGet, "/api/tiers", "Bearer "+testToken, nil); rec.Code != http.StatusOK {
		t.Fatalf("with the token: %d", rec.Code)
	}
	// No source: not mounted.
	r = newRouter(t, dashboardapi.Config{AdminToken: testToken})
	if rec := request(r, http.MethodGet, "/api/tiers", "", nil); rec.Code != http.StatusNotFound {
		t.Fatalf("without a TierSource: %d", rec.Code)
	}
}
