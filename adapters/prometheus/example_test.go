package prometheus_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/sluicehq/sluice/adapters/prometheus"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

func ExampleExporter_Handler() {
	docs, err := rules.Parse("rules.yaml", []byte("resource: ddcolor_person\nconcurrency: 1\n"))
	if err != nil {
		panic(err)
	}
	set, err := rules.Build(docs)
	if err != nil {
		panic(err)
	}
	eng, err := engine.New(engine.Options{Namespace: "ExampleExporter_Handler/"}, set)
	if err != nil {
		panic(err)
	}
	defer eng.Close()
	exp := prometheus.New(prometheus.Config{Engine: eng})

	// One job running; a second request meanwhile is refused.
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	tok, err := eng.Guard(context.Background(), call)
	if err != nil {
		panic(err)
	}
	_, err = eng.Guard(context.Background(), call)
	fmt.Println(err)
	exp.ObserveJob("ddcolor_person", 0, 1500*time.Millisecond, nil) // what httpapi reports as the job ends
	tok.Exit(nil)

	rec := httptest.NewRecorder()
	exp.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for line := range strings.Lines(rec.Body.String()) {
		shown := strings.HasPrefix(line, "sluice_requests_total{") || strings.HasPrefix(line, "sluice_job_duration_seconds_count{")
		if shown && strings.Contains(line, `resource="ddcolor_person"`) && !strings.HasSuffix(line, " 0\n") {
			fmt.Print(line)
		}
	}
	// Output:
	// ddcolor_person refused by concurrency rule ddcolor_person/concurrency (threshold 1); retry after 1s
	// sluice_job_duration_seconds_count{outcome="success",resource="ddcolor_person"} 1
	// sluice_requests_total{outcome="admitted",resource="ddcolor_person",rule_kind="",tier="anonymous"} 1
	// sluice_requests_total{outcome="refused",resource="ddcolor_person",rule_kind="concurrency",tier="anonymous"} 1
}
