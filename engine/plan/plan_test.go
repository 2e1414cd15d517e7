package plan

import (
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/rules"
)

// repeat is n job times of d.
func repeat(d time.Duration, n int) []time.Duration {
	ts := make([]time.Duration, n)
	for i := range ts {
		ts[i] = d
	}
	return ts
}

// farm is n backends of slots each.
func farm(n, slots int) []Backend {
	var bs []Backend
	for i := range n {
		bs = append(bs, Backend{Name: string(rune('a' + i)), Slots: slots})
	}
	return bs
}

func resource(t *testing.T, p Plan, name string) Resource {
	t.Helper()
	for _, r := range p.Resources {
		if r.Resource == name {
			return r
		}
	}
	t.Fatalf("no resource %s in the plan", name)
	return Resource{}
}

func near(got, want float64) bool { return math.Abs(got-want) <= 0.005 }

func TestComputeSustainableRates(t *testing.T) {
	const person, building = rules.ResourceDDColorPerson, rules.ResourceDDColorBuilding
	type want struct {
		resource    string
		measured    bool
		rate        float64
		jobMillis   float64
		concurrency int
		threshold   float64
		window      string
		cost        map[string]int
		queueWait   float64
	}
	cases := []struct {
		name  string
		in    Input
		wants []want
	}{
		{
			name: "4 backends × 2 slots, 3 s per job: 2.67/s",
			in:   Input{Backends: farm(4, 2), Times: []Times{{Resource: person, Size: 512, Times: repeat(3*time.Second, 20)}}},
			wants: []want{{resource: person, measured: true, rate: 2.667, jobMillis: 3000, concurrency: 32, threshold: 5, window: "2s",
				cost: map[string]int{"512": 1}, queueWait: 9}},
		},
		{
			name: "nothing measured: the estimate, the farm alone",
			in:   Input{Backends: farm(4, 2), Estimate: 4 * time.Second, EstimateSource: "--job-estimate"},
			wants: []want{{resource: person, rate: 2, jobMillis: 4000, concurrency: 32, threshold: 2, window: "1s", cost: map[string]int{}, queueWait: 12},
				{resource: building, rate: 2, jobMillis: 4000, concurrency: 32, threshold: 2, window: "1s", cost: map[string]int{}, queueWait: 12}},
		},
		{
			name: "two sizes: the dearer one costs its time over the cheaper's",
			in: Input{Backends: farm(4, 2), Times: []Times{
				{Resource: person, Size: 512, Times: repeat(3*time.Second, 10)},
				{Resource: person, Size: 1024, Times: repeat(6*time.Second, 10)},
			}},
			// mean 4.5 s: 8/4.5 = 1.778 jobs/s at a mean cost of 1.5.
			wants: []want{{resource: person, measured: true, rate: 1.778, jobMillis: 4500, concurrency: 32, threshold: 5, window: "2s",
				cost: map[string]int{"512": 1, "1024": 2}, queueWait: 14}},
		},
		{
			name: "two resources share the slots by the slot time they used",
			in: Input{Backends: farm(4, 2), Times: []Times{
				{Resource: person, Size: 512, Times: repeat(3*time.Second, 10)},
				{Resource: building, Size: 1280, Times: repeat(6*time.Second, 5)},
			}},
			wants: []want{
				{resource: person, measured: true, rate: 1.333, jobMillis: 3000, concurrency: 16, threshold: 13, window: "10s", cost: map[string]int{"512": 1}, queueWait: 9},
				// 0.67 per 1s would admit no job, 1 per 2s only 75% of 1.33,
				// 3 per 5s 90%: 6 per 10s.
				{resource: building, measured: true, rate: 0.667, jobMillis: 6000, concurrency: 16, threshold: 6, window: "10s", cost: map[string]int{"1280": 1}, queueWait: 18},
			},
		},
		{
			name: "a slow farm: the window grows until the dearest size can pass",
			in: Input{Backends: farm(1, 1), Times: []Times{
				{Resource: person, Size: 512, Times: repeat(time.Second, 1)},
				{Resource: person, Size: 1280, Times: repeat(3*time.Second, 1)},
			}},
			// mean 2 s: 0.5 jobs/s at a mean cost of 2: 1 per second, 5 per 5s ≥ 3.
			wants: []want{{resource: person, measured: true, rate: 0.5, jobMillis: 2000, concurrency: 4, threshold: 5, window: "5s",
				cost: map[string]int{"512": 1, "1280": 3}, queueWait: 6}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Compute(tc.in)
			if p.SlotsTotal != totalSlots(tc.in.Backends) {
				t.Errorf("slots_total %d, want %d", p.SlotsTotal, totalSlots(tc.in.Backends))
			}
			for _, w := range tc.wants {
				r := resource(t, p, w.resource)
				if r.Measured != w.measured || (r.Source == SourceMeasured) != w.measured {
					t.Errorf("%s: measured %v source %s, want measured %v", w.resource, r.Measured, r.Source, w.measured)
				}
				if !near(r.SustainablePerSec, w.rate) || r.JobTimeMillis != w.jobMillis {
					t.Errorf("%s: %v/s at %v ms, want %v/s at %v ms", w.resource, r.SustainablePerSec, r.JobTimeMillis, w.rate, w.jobMillis)
				}
				pr := r.Proposed
				if pr.Concurrency != w.concurrency || !near(pr.FlowThreshold, w.threshold) || pr.Window != w.window || pr.QueueWaitSeconds != w.queueWait {
					t.Errorf("%s: proposed %+v, want concurrency %d threshold %v per %s queue wait %vs", w.resource, pr, w.concurrency, w.threshold, w.window, w.queueWait)
				}
				if !equalCosts(pr.Cost, w.cost) {
					t.Errorf("%s: cost %v, want %v", w.resource, pr.Cost, w.cost)
				}
			}
			// Whatever the case, the YAML is rules the gateway accepts.
			docs, err := rules.Parse("plan.yaml", []byte(p.YAML))
			if err != nil {
				t.Fatalf("the plan's YAML does not parse: %v\n%s", err, p.YAML)
			}
			if _, err := rules.Build(docs); err != nil {
				t.Fatalf("the plan's YAML does not validate: %v\n%s", err, p.YAML)
			}
			if len(docs) != len(rules.Resources) {
				t.Errorf("%d documents, want one per resource (%d)", len(docs), len(rules.Resources))
			}
			for _, d := range docs {
				r := resource(t, p, d.Name())
				if len(d.Resource.Flow) != 1 || d.Resource.Flow[0].Threshold != r.Proposed.FlowThreshold ||
					d.Resource.Flow[0].Window.String() != r.Proposed.Window || d.Resource.Concurrency != r.Proposed.Concurrency {
					t.Errorf("%s: document %+v does not carry the proposal %+v", d.Name(), *d.Resource, r.Proposed)
				}
			}
		})
	}
}

func totalSlots(bs []Backend) int {
	n := 0
	for _, b := range bs {
		n += b.Slots
	}
	return n
}

func equalCosts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestComputeSaysWhatIsEstimated(t *testing.T) {
	p := Compute(Input{Backends: farm(2, 1), Estimate: 2 * time.Second, EstimateSource: "--job-estimate",
		Times: []Times{{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(time.Second, 3)}}})
	notes := strings.Join(p.Notes, "\n")
	for _, name := range []string{rules.ResourceDDColorBuilding, rules.ResourceZImageGenerate} {
		if !strings.Contains(notes, name+": no job measured yet: planned with the configured estimate of 2s per job (--job-estimate)") {
			t.Errorf("no note says %s is estimated:\n%s", name, notes)
		}
		if !strings.Contains(p.YAML, "# "+name+": NOT measured: the estimate of 2s per job") {
			t.Errorf("the YAML does not say %s is estimated:\n%s", name, p.YAML)
		}
	}
	if strings.Contains(notes, rules.ResourceDDColorPerson+": no job measured") {
		t.Errorf("a note calls the measured resource estimated:\n%s", notes)
	}
	if !strings.Contains(notes, "--queue-wait 6s --queue-max 6") {
		t.Errorf("no note gives the queue's flags:\n%s", notes)
	}
}

// inForce is a rule set with hotspot, ban, a throttled flow and a cost rule
// for ddcolor_person.
func inForce(t *testing.T) *rules.Set {
	t.Helper()
	set, err := rules.ParseSet("rules.yaml", []byte(inForceSrc))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestComputeKeepsTheRulesInForce(t *testing.T) {
	p := Compute(Input{Backends: farm(4, 2), Rules: inForce(t), Times: []Times{
		{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(3*time.Second, 4)},
		{Resource: rules.ResourceDDColorPerson, Size: 1024, Times: repeat(6*time.Second, 4)},
	}})
	docs, err := rules.Parse("plan.yaml", []byte(p.YAML))
	if err != nil {
		t.Fatalf("%v\n%s", err, p.YAML)
	}
	if _, err := rules.Build(docs); err != nil {
		t.Fatalf("%v\n%s", err, p.YAML)
	}
	d := docs[0].Resource
	if d.Resource != rules.ResourceDDColorPerson || len(d.Hotspot) != 1 || d.Hotspot[0].Items["203.0.113.7"] != 10 || d.Ban == nil || d.Ban.Blocks != 20 {
		t.Errorf("the hotspot and ban in force are lost: %+v\n%s", d, p.YAML)
	}
	// 1.78 jobs/s at a mean cost of 1.5 is 2.67 per second: 5 per 2s
	// (2 per 1s would be 75% of it, and refuse 1280, costing 3 in force).
	if d.Concurrency != 32 || len(d.Flow) != 1 || d.Flow[0].Threshold != 5 || d.Flow[0].Window.String() != "2s" {
		t.Errorf("the proposal is not in the document: %+v", d)
	}
	// 1024 measured at twice 512; 1280, not measured, keeps its cost in force.
	if d.Cost == nil || d.Cost.Values["1024"] != 2 || d.Cost.Values["1280"] != 3 || len(d.Cost.Values) != 2 {
		t.Errorf("cost %+v, want 1024: 2 measured and 1280: 3 kept", d.Cost)
	}
	if got := resource(t, p, rules.ResourceDDColorPerson).Proposed.Cost; got["1280"] != 3 || got["1024"] != 2 || got["512"] != 1 {
		t.Errorf("proposed cost %v", got)
	}
}

func TestRecorderKeepsTheLastWindow(t *testing.T) {
	var r Recorder
	for i := range Window + 10 {
		r.Record("a", 512, time.Duration(i+1)*time.Millisecond)
	}
	r.Record("a", 512, 0) // a job that never ran
	r.Record("a", 1024, time.Second)
	snap := r.Snapshot()
	if len(snap) != 2 || snap[0].Size != 512 || snap[1].Size != 1024 {
		t.Fatalf("snapshot %v", snap)
	}
	ts := snap[0].Times
	if len(ts) != Window || ts[0] != 11*time.Millisecond || ts[Window-1] != (Window+10)*time.Millisecond {
		t.Errorf("kept %d times from %v to %v, want the last %d, oldest first", len(ts), ts[0], ts[len(ts)-1], Window)
	}
	if got := p95(repeat(time.Second, 95)); got != time.Second {
		t.Errorf("p95 %v", got)
	}
	if got := p95(append(repeat(time.Second, 95), repeat(2*time.Second, 5)...)); got != time.Second {
		t.Errorf("p95 of 95×1s+5×2s = %v, want 1s", got)
	}
	if got := p95(append(repeat(time.Second, 94), repeat(2*time.Second, 6)...)); got != 2*time.Second {
		t.Errorf("p95 of 94×1s+6×2s = %v, want 2s", got)
	}
}

func TestRecorderRecordDoesNotAllocate(t *testing.T) {
	var r Recorder
	r.Record(rules.ResourceDDColorPerson, 512, time.Second)
	if n := testing.AllocsPerRun(1000, func() { r.Record(rules.ResourceDDColorPerson, 512, time.Second) }); n != 0 {
		t.Errorf("Record allocates %v times per job", n)
	}
}

func TestRecorderIsSafeForConcurrentUse(t *testing.T) {
	var r Recorder
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				r.Record(rules.ResourceDDColorPerson, 512*(g%2+1), time.Duration(i+1))
				if i%100 == 0 {
					r.Snapshot()
				}
			}
		})
	}
	wg.Wait()
	n := 0
	for _, s := range r.Snapshot() {
		n += len(s.Times)
	}
	if n != 2*Window {
		t.Errorf("%d times kept, want %d (two full windows)", n, 2*Window)
	}
}
