package openapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/openapi"
	"github.com/sluicehq/sluice/adapters/openapi/openapitest"
)

// TestDocumentIsValidOpenAPI31 loads the document with kin-openapi and
// validates it as OpenAPI 3.1.
func TestDocumentIsValidOpenAPI31(t *testing.T) {
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	for _, p := range []string{"/v1/generate", "/api/rules/{resource}/dry-run", "/api/bans", "/api/plan", "/api/live", "/dashboard", "/openapi.json", "/metrics"} {
		if doc.Paths.Find(p) == nil {
			t.Errorf("path %s is missing", p)
		}
	}
}

// TestServedAsJSON fetches GET /openapi.json, open, and checks it is the
// document.
func TestServedAsJSON(t *testing.T) {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	if err := openapi.Register(r); err != nil {
		t.Fatal(err)
	}
	h := openapitest.Handler(t, r)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" || doc.Paths["/openapi.json"]["get"] == nil {
		t.Errorf("served %q with %d paths", doc.OpenAPI, len(doc.Paths))
	}
	// Aliases are resolved: the building endpoint carries the person's
	// request body.
	if doc.Paths["/api/ddcolorize/building"]["post"].(map[string]any)["requestBody"] == nil {
		t.Error("the YAML aliases were not resolved")
	}
}
