package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/console"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/plan"
	"github.com/sluicehq/sluice/rules"
)

// templateParams matches a path parameter in Gin's form (:id, *path) or
// OpenAPI's ({id}).
var templateParams = regexp.MustCompile(`:[^/]+|\*[^/]+|\{[^}/]+\}`)

// route is "METHOD /path" with every parameter written {}.
func route(method, path string) string {
	return method + " " + templateParams.ReplaceAllString(path, "{}")
}

// documented returns the document's operations as routes.
func documented(t *testing.T) []string {
	t.Helper()
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, route(method, path))
		}
	}
	slices.Sort(out)
	return out
}

// fullRouter mounts what serve mounts, every optional part of the operator
// API configured, on the public API's router.
func fullRouter(t *testing.T) *gin.Engine {
	t.Helper()
	gin.SetMode(gin.TestMode)
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{Namespace: t.Name() + "/"}, set)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: noRunner{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	farm := func() dispatch.Stats { return dispatch.Stats{} }
	con, err := console.Register(api.Router(), console.Config{Engine: eng, Backends: farm, AdminToken: "t"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(con.Close)
	planner, err := plan.New(plan.Config{Farm: farm, Times: &plan.Recorder{}, Rules: eng.Rules})
	if err != nil {
		t.Fatal(err)
	}
	if err := dashboardapi.Register(api.Router(), dashboardapi.Config{
		Engine: eng, Writer: stubParts{}, Status: func() dashboardapi.RulesStatus { return dashboardapi.RulesStatus{} },
		Ready: func() bool { return true }, AdminToken: "t", Backends: farm,
		Simulator: stubParts{}, Tiers: stubParts{}, Keys: stubParts{}, Planner: planner, Session: con,
	}); err != nil {
		t.Fatal(err)
	}
	if err := mountDocs(api.Router(), http.NotFoundHandler()); err != nil {
		t.Fatal(err)
	}
	return api.Router()
}

// TestEveryRouteIsDocumented compares the routes the gateway's router
// serves with the OpenAPI document's operations, both ways: a route
// served and not documented fails, and so does one documented and no
// longer served.
func TestEveryRouteIsDocumented(t *testing.T) {
	var served []string
	for _, r := range fullRouter(t).Routes() {
		served = append(served, route(r.Method, r.Path))
	}
	docs := documented(t)
	for _, r := range served {
		if !slices.Contains(docs, r) {
			t.Errorf("%s is served but not in the OpenAPI document (adapters/openapi/openapi.yaml)", r)
		}
	}
	for _, r := range docs {
		if !slices.Contains(served, r) {
			t.Errorf("%s is in the OpenAPI document but no longer served", r)
		}
	}
	if len(served) < 25 {
		t.Errorf("only %d routes served: %v", len(served), served)
	}
}

// TestDocumentedRoutesAnswerOnServe sends each documented operation to a
// real `sluice serve` and checks that a handler answered it, not the
// router's own "no endpoint" or "method not allowed"; GET /openapi.json is
// the document, open.
func TestDocumentedRoutesAnswerOnServe(t *testing.T) {
	g := startServe(t)
	client := &http.Client{Timeout: 5 * time.Second}
	for _, r := range documented(t) {
		method, path, _ := strings.Cut(r, " ")
		path = strings.ReplaceAll(path, "{}", "x")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, err := http.NewRequestWithContext(ctx, method, g.base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			cancel()
			t.Errorf("%s: %v", r, err)
			continue
		}
		var p problem.Problem
		if resp.Header.Get("Content-Type") == problem.ContentType {
			json.NewDecoder(resp.Body).Decode(&p)
		}
		resp.Body.Close()
		cancel()
		// The router's own 404 ("no endpoint …") or 405, not a handler's
		// 404 for a missing item such as an asset.
		if p.Type == problem.TypeBase+"not-found" && strings.HasPrefix(p.Detail, "no endpoint") || p.Type == problem.TypeBase+"method-not-allowed" {
			t.Errorf("%s is documented but serve answers %d %s", r, resp.StatusCode, p.Detail)
		}
	}
	resp, err := client.Get(g.base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		OpenAPI string `json:"openapi"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != http.StatusOK || doc.OpenAPI != "3.1.0" {
		t.Errorf("GET /openapi.json: %d %q %v", resp.StatusCode, doc.OpenAPI, err)
	}
}

// noRunner runs nothing: the route tests run no job.
type noRunner struct{}

func (noRunner) Run(context.Context, httpapi.Job) (*comfyui.Result, error) {
	return nil, fmt.Errorf("no runner in this test")
}

// stubParts stands for the operator API's optional parts, so that every
// route is mounted; the route tests call none of them.
type stubParts struct{}

func (stubParts) Put(context.Context, string, []byte) (int64, error) { return 0, nil }
func (stubParts) Delete(context.Context, string) (int64, error)      { return 0, nil }
func (stubParts) VRAMUsed() []float64                                { return nil }
func (stubParts) SetVRAMUsed(float64)                                {}
func (stubParts) Tiers() *rules.Tiers                                { return rules.DefaultTiers() }
func (stubParts) TiersStatus() dashboardapi.TiersStatus              { return dashboardapi.TiersStatus{} }
func (stubParts) PutTiers(context.Context, []byte) (int64, error)    { return 0, nil }
func (stubParts) List(context.Context) ([]dashboardapi.KeyInfo, error) {
	return nil, nil
}
func (stubParts) Create(context.Context, dashboardapi.KeyRequest) (string, dashboardapi.KeyInfo, error) {
	return "", dashboardapi.KeyInfo{}, nil
}
func (stubParts) Revoke(context.Context, string) error { return nil }
