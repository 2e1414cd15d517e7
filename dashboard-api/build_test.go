package dashboardapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
)

// GET /api/system names the build that runs beside the machine's state.
func TestSystemNamesBuild(t *testing.T) {
	gin.SetMode(gin.TestMode)
	eng, err := engine.New(engine.Options{Namespace: fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	r := gin.New()
	build := dashboardapi.Build{Version: "v1.2.3", NVML: "cgo"}
	if err := dashboardapi.Register(r, dashboardapi.Config{Engine: eng, Build: build}); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/system", nil))
	var sys struct {
		Build dashboardapi.Build `json:"build"`
		GPUs  []json.RawMessage  `json:"gpus"`
		Load1 *float64           `json:"load1"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &sys); err != nil || rec.Code != 200 {
		t.Fatalf("%d %v %s", rec.Code, err, rec.Body)
	}
	if sys.Build != build || sys.GPUs == nil || sys.Load1 == nil {
		t.Fatalf("/api/system = %s, want build %+v beside gpus and load1", rec.Body, build)
	}
}
