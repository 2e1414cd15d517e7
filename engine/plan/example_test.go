package plan_test

import (
	"fmt"
	"time"

	"github.com/sluicehq/sluice/engine/plan"
	"github.com/sluicehq/sluice/rules"
)

// Four GPUs running two jobs at once, 3 s per job: 2.67 jobs per second.
func ExampleCompute() {
	var times plan.Recorder
	for range 20 {
		times.Record(rules.ResourceDDColorPerson, 512, 3*time.Second)
	}
	var backends []plan.Backend
	for i := range 4 {
		backends = append(backends, plan.Backend{Name: fmt.Sprintf("http://gpu-%d:8188", i+1), Slots: 2})
	}
	p := plan.Compute(plan.Input{Backends: backends, Times: times.Snapshot()})
	r := p.Resources[0]
	fmt.Printf("%s: %.2f jobs/s; flow %g per %s, concurrency %d, queue wait %gs\n",
		r.Resource, r.SustainablePerSec, r.Proposed.FlowThreshold, r.Proposed.Window, r.Proposed.Concurrency, r.Proposed.QueueWaitSeconds)
	// Output:
	// ddcolor_person: 2.67 jobs/s; flow 5 per 2s, concurrency 32, queue wait 9s
}
