package plan

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// inForceSrc is inForce's rules: flow, hotspot, ban, concurrency and cost
// for ddcolor_person.
const inForceSrc = `resource: ddcolor_person
flow:
  - threshold: 6
    window: 1s
hotspot:
  - param: origin
    threshold: 3
    window: 1s
    items: {"203.0.113.7": 10}
concurrency: 2
cost: {param: size, values: {"1280": 3}}
ban: {blocks: 20, within: 10s, for: 1m}
`

// enforcing is what of r refuses calls: its rules not in mode shadow.
func enforcing(r *rules.Resource) rules.Resource {
	if r == nil {
		return rules.Resource{}
	}
	out := rules.Resource{Resource: r.Resource, Cost: r.Cost}
	for _, f := range r.Flow {
		if !f.Mode.IsShadow() {
			out.Flow = append(out.Flow, f)
		}
	}
	for _, h := range r.Hotspot {
		if !h.Mode.IsShadow() {
			out.Hotspot = append(out.Hotspot, h)
		}
	}
	if !r.ConcurrencyMode.IsShadow() {
		out.Concurrency = r.Concurrency
	}
	if r.Ban != nil && !r.Ban.Mode.IsShadow() {
		out.Ban = r.Ban
	}
	return out
}

// applyDocs is the rule set after the plan's documents replace those of
// their resources in docs (what `sluice rules apply -f -` does).
func applyDocs(t *testing.T, docs []rules.Document, yaml string) ([]rules.Document, *rules.Set) {
	t.Helper()
	planned, err := rules.Parse("plan.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("the plan does not parse: %v\n%s", err, yaml)
	}
	byRes := map[string]rules.Document{}
	var order []string
	for _, d := range append(docs, planned...) {
		if _, ok := byRes[d.Resource.Resource]; !ok {
			order = append(order, d.Resource.Resource)
		}
		byRes[d.Resource.Resource] = d
	}
	var out []rules.Document
	for _, r := range order {
		out = append(out, byRes[r])
	}
	set, err := rules.Build(out)
	if err != nil {
		t.Fatalf("the plan applied does not build: %v\n%s", err, yaml)
	}
	return out, set
}

func assertSameEnforcement(t *testing.T, before, after *rules.Set) {
	t.Helper()
	for _, res := range rules.Resources {
		b, a := enforcing(before.Resources[res]), enforcing(after.Resources[res])
		if a.Resource == "" && b.Resource == "" {
			continue
		}
		a.Resource, b.Resource = res, res
		if !reflect.DeepEqual(b, a) {
			t.Errorf("%s: the enforcing rules changed:\nbefore %+v\nafter  %+v", res, b, a)
		}
	}
}

// A shadow plan changes nothing that refuses: applied (twice), every
// enforcing rule stays as it is; the proposal is one shadow flow rule.
func TestShadowPlanLeavesEnforcementUnchanged(t *testing.T) {
	before, err := rules.ParseSet("rules.yaml", []byte(inForceSrc))
	if err != nil {
		t.Fatal(err)
	}
	// Two sizes measured: the plan without shadow would propose 1024: 2
	// and concurrency 32.
	times := []Times{
		{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(3*time.Second, 4)},
		{Resource: rules.ResourceDDColorPerson, Size: 1024, Times: repeat(6*time.Second, 4)},
	}
	p := Compute(Input{Backends: farm(4, 2), Rules: before, Shadow: true, Times: times})
	docs1, after := applyDocs(t, before.Docs, p.YAML)
	assertSameEnforcement(t, before, after)
	person := after.Resources[rules.ResourceDDColorPerson]
	if len(person.Flow) != 2 || !person.Flow[1].Mode.IsShadow() {
		t.Fatalf("want the flow in force and one shadow flow rule: %+v", person.Flow)
	}
	// The shadow threshold counts with the costs in force (1024 costs 1
	// there): 1.78 jobs/s at cost 1, whole and over 90%: 17 per 10s.
	if f := person.Flow[1]; f.Threshold != 17 || f.Window.String() != "10s" {
		t.Errorf("shadow flow %+v, want 17 per 10s with the costs in force", f)
	}
	notes := strings.Join(p.Notes, "\n")
	for _, want := range []string{"concurrency in force (2) is kept; the plan proposes 32", "the cost in force is kept", "1024: 2"} {
		if !strings.Contains(notes, want) {
			t.Errorf("no note says %q:\n%s", want, notes)
		}
	}
	// A resource with nothing in force gets its concurrency in shadow.
	if b := after.Resources[rules.ResourceDDColorBuilding]; b == nil || b.Concurrency != 32 || !b.ConcurrencyMode.IsShadow() {
		t.Errorf("ddcolor_building: %+v, want concurrency 32 in shadow", b)
	}
	// A second shadow plan on top replaces the first one's shadow rule.
	p2 := Compute(Input{Backends: farm(4, 2), Rules: after, Shadow: true, Times: times})
	_, after2 := applyDocs(t, docs1, p2.YAML)
	assertSameEnforcement(t, before, after2)
	if f := after2.Resources[rules.ResourceDDColorPerson].Flow; len(f) != 2 {
		t.Errorf("a second shadow plan stacks its flow rule: %+v", f)
	}
}

// A shadow document that cannot hold the rules in force is not proposed:
// never the proposal alone, which would drop them.
func TestShadowPlanNeverDropsTheRulesInForce(t *testing.T) {
	docs, err := rules.Parse("rules.yaml", []byte(`resource: ddcolor_person
flow: [{threshold: 40, window: 1s}]
concurrency: 2
cost: {param: size, values: {"1280": 30}}
`))
	if err != nil {
		t.Fatal(err)
	}
	before, err := rules.Build(docs)
	if err != nil {
		t.Fatal(err)
	}
	p := Compute(Input{Backends: farm(1, 1), Rules: before, Shadow: true,
		Times: []Times{{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(3*time.Second, 4)}}})
	if strings.Contains(p.YAML, "resource: "+rules.ResourceDDColorPerson) {
		t.Errorf("a shadow document for ddcolor_person, whose cost 30 no threshold admits:\n%s", p.YAML)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "ddcolor_person: no shadow document proposed") {
		t.Errorf("no note says why: %q", p.Notes)
	}
	_, after := applyDocs(t, docs, p.YAML)
	assertSameEnforcement(t, before, after)
}

// The job time, size mix and shares weigh every job of the span, not the
// last Window of each size.
func TestPlanWeighsByTraffic(t *testing.T) {
	c := clock.NewFake(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC))
	r := Recorder{Clock: c}
	for range 10000 {
		r.Record(rules.ResourceDDColorPerson, 512, time.Second)
	}
	for range 500 {
		r.Record(rules.ResourceDDColorPerson, 1024, 9*time.Second)
	}
	// ddcolor_building: 1000 jobs of 1.381 s: the same slot time as
	// ddcolor_person's, so half the farm each.
	for range 1000 {
		r.Record(rules.ResourceDDColorBuilding, 512, 14500*time.Millisecond)
	}
	p := Compute(Input{Backends: farm(4, 2), Times: r.Snapshot()})
	person := resource(t, p, rules.ResourceDDColorPerson)
	if person.Samples != 10500 || !near(person.JobTimeMillis, 1380.952) {
		t.Errorf("%d jobs, mean %v ms, want 10500 jobs, mean 1380.952 ms", person.Samples, person.JobTimeMillis)
	}
	if len(person.Sizes) != 2 || person.Sizes[0].Samples != 10000 || person.Sizes[1].Samples != 500 || person.Sizes[1].Cost != 9 {
		t.Errorf("sizes %+v", person.Sizes)
	}
	// 4 of 8 slots / 1.381 s = 2.897 jobs/s.
	if !near(person.SustainablePerSec, 2.897) {
		t.Errorf("ddcolor_person sustains %v/s, want 2.897 (half the farm)", person.SustainablePerSec)
	}
	// Jobs older than the span no longer count; the recent ones do.
	c.Advance(Span - time.Minute)
	r.Record(rules.ResourceDDColorPerson, 512, 2*time.Second)
	c.Advance(2 * time.Minute)
	snap := r.Snapshot()
	if len(snap) != 1 || snap[0].Count != 1 || snap[0].Total != 2*time.Second {
		t.Errorf("after the span: %+v, want the one recent job", snap)
	}
}

// The proposed concurrency leaves room for the queue: the engine counts a
// job from admission to its end, waiting in the queue included.
func TestConcurrencyLeavesRoomForTheQueue(t *testing.T) {
	p := Compute(Input{Backends: farm(4, 2), Times: []Times{{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(3*time.Second, 4)}}})
	queueMax := QueueJobTimes * p.SlotsTotal
	if got := resource(t, p, rules.ResourceDDColorPerson).Proposed.Concurrency; got != p.SlotsTotal+queueMax {
		t.Errorf("concurrency %d, want the slots and the queue: %d", got, p.SlotsTotal+queueMax)
	}
}

// The default of the cost rule in force stays when sizes are measured.
func TestCostDefaultInForceIsKept(t *testing.T) {
	docs, err := rules.Parse("rules.yaml", []byte(`resource: ddcolor_person
flow: [{threshold: 10, window: 1s}]
cost: {param: size, default: 4, values: {"1280": 6}}
`))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Build(docs)
	if err != nil {
		t.Fatal(err)
	}
	p := Compute(Input{Backends: farm(4, 2), Rules: set, Times: []Times{
		{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(3*time.Second, 4)},
		{Resource: rules.ResourceDDColorPerson, Size: 1024, Times: repeat(6*time.Second, 4)},
	}})
	_, after := applyDocs(t, docs, p.YAML)
	c := after.Resources[rules.ResourceDDColorPerson].Cost
	if c == nil || c.Default != 4 || c.Values["512"] != 1 || c.Values["1024"] != 2 || c.Values["1280"] != 6 {
		t.Errorf("cost %+v, want default 4 kept, 512: 1, 1024: 2, 1280: 6", c)
	}
}

// On a farm too slow for the measured costs, the YAML still validates: the
// costs are capped at what the 10s threshold admits, and a note says so.
func TestSlowFarmPlanValidates(t *testing.T) {
	p := Compute(Input{Backends: farm(1, 1), Times: []Times{
		{Resource: rules.ResourceDDColorPerson, Size: 512, Times: repeat(time.Second, 10)},
		{Resource: rules.ResourceDDColorPerson, Size: 2048, Times: repeat(12*time.Second, 10)},
	}})
	docs, err := rules.Parse("plan.yaml", []byte(p.YAML))
	if err != nil {
		t.Fatalf("%v\n%s", err, p.YAML)
	}
	set, err := rules.Build(docs)
	if err != nil {
		t.Fatalf("the plan does not validate: %v\n%s", err, p.YAML)
	}
	r := set.Resources[rules.ResourceDDColorPerson]
	// 0.154 jobs/s, half of them dear: 1.54 jobs per 10s admit a cost of
	// at most 3 (1.54 × (1+3)/2 = 3.08).
	if r == nil || r.Cost == nil || r.Cost.Values["2048"] != 3 || r.Flow[0].Threshold != 3 || r.Flow[0].Window.String() != "10s" {
		t.Errorf("ddcolor_person %+v cost %+v", r, r.Cost)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "costs capped at 3") {
		t.Errorf("no note says the costs are capped: %q", p.Notes)
	}
}
