package etcd

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkPutToEnforced measures the time from an etcd put of a rule
// document to the engine enforcing it (the watcher has seen the revision and
// swapped the rule set in), against the real embedded etcd, and reports
// p50 and p99 over the run:
//
//	go test ./adapters/etcd -run '^$' -bench PutToEnforced -benchtime 400x
func BenchmarkPutToEnforced(b *testing.B) {
	f := newFixture(b, shared.client, nil)
	ctx := context.Background()
	key := f.store.Key("ddcolor_person")
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		doc := fmt.Sprintf("resource: ddcolor_person\nflow: [{threshold: %d}]\n", i)
		start := time.Now()
		resp, err := f.store.Client().Put(ctx, key, doc)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.w.WaitRevision(ctx, resp.Header.Revision); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if got := f.eng.Rules().Resources["ddcolor_person"].Flow[0].Threshold; got != float64(i) {
			b.Fatalf("threshold %v in force, want %d", got, i)
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat)), "updates")
}
