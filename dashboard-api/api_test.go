package dashboardapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

func TestOperatorAPI(t *testing.T) {
	gin.SetMode(gin.TestMode)
	docs, err := rules.Parse("r.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 1}]\n---\nsystem: {load: 9}\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Build(docs)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{Namespace: t.Name() + "/"}, set)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	r := gin.New()
	dashboardapi.Register(r, dashboardapi.Config{Engine: eng, Source: "r.yaml"})

	get := func(path string, want int) map[string]any {
		t.Helper()
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Fatalf("GET %s: %d, want %d: %s", path, rec.Code, want, rec.Body)
		}
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return body
	}

	all := get("/api/rules", 200)
	docsOut := all["documents"].([]any)
	if all["source"] != "r.yaml" || len(docsOut) != 2 {
		t.Fatalf("/api/rules = %v", all)
	}
	first := docsOut[0].(map[string]any)
	flow := first["rules"].(map[string]any)["flow"].([]any)[0].(map[string]any)
	if first["source"] != "r.yaml#1" || flow["window"] != "1s" || flow["behavior"] != "reject" {
		t.Fatalf("first document, defaults filled in: %v", first)
	}
	if sys := docsOut[1].(map[string]any); sys["resource"] != "system" || sys["system"].(map[string]any)["load"] != 9.0 {
		t.Fatalf("system document: %v", sys)
	}
	if one := get("/api/rules/ddcolor_person", 200); one["resource"] != "ddcolor_person" {
		t.Fatalf("one resource: %v", one)
	}
	if none := get("/api/rules/zimage_generate", 200); none["rules"] != nil {
		t.Fatalf("a resource without rules: %v", none)
	}
	get("/api/rules/cat", 404)

	// One admission and one refusal show in the statistics.
	tok, _ := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	if _, err := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}); err == nil {
		t.Fatal("second call admitted")
	}
	tok.Exit(nil)
	stats := get("/api/resources", 200)["resources"].([]any)[0].(map[string]any)
	if stats["resource"] != "ddcolor_person" || stats["passed_total"] != 1.0 || stats["refused_total"].(map[string]any)["flow"] != 1.0 || stats["completed_total"] != 1.0 {
		t.Fatalf("/api/resources: %v", stats)
	}
	if get("/healthz", 200)["status"] != "ok" || get("/readyz", 200)["status"] != "ready" {
		t.Fatal("health endpoints")
	}
}
