package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// statsOf returns the statistics of resource.
func statsOf(t *testing.T, e *engine.Engine, resource string) engine.ResourceStats {
	t.Helper()
	for _, s := range e.Stats() {
		if s.Resource == resource {
			return s
		}
	}
	t.Fatalf("no statistics for %s", resource)
	return engine.ResourceStats{}
}

// twin drives the same calls through an enforcing rule and its shadow twin
// at the same instants: each step is guarded once on every target.
type twin struct {
	t       *testing.T
	clock   *clock.Fake
	targets []target
}

// target is one engine and resource a twin drives.
type target struct {
	e        *engine.Engine
	resource string
	held     []*engine.Token // admitted calls not yet exited, oldest first
}

// guard makes n calls like c on every target, holding the admitted ones.
func (w *twin) guard(n int, c engine.Call) {
	w.t.Helper()
	for i := range w.targets {
		tg := &w.targets[i]
		c.Resource = tg.resource
		toks, _ := burst(w.t, tg.e, n, c)
		tg.held = append(tg.held, toks...)
	}
}

// exit ends the n oldest held calls of every target (all when n < 0).
func (w *twin) exit(n int) {
	for i := range w.targets {
		tg := &w.targets[i]
		k := n
		if k < 0 || k > len(tg.held) {
			k = len(tg.held)
		}
		exitAll(tg.held[:k])
		tg.held = tg.held[k:]
	}
}

// check asserts that the shadow target (the second) refused nothing and
// counted, per kind, what the enforcing one (the first) refused, and that
// the enforcing one did refuse some.
func (w *twin) check(kinds ...engine.Kind) {
	w.t.Helper()
	w.exit(-1)
	enf := statsOf(w.t, w.targets[0].e, w.targets[0].resource)
	sh := statsOf(w.t, w.targets[1].e, w.targets[1].resource)
	for _, k := range engine.Kinds {
		if sh.Refused[k] != 0 {
			w.t.Errorf("the shadow twin refused %d calls by %s", sh.Refused[k], k)
		}
	}
	var total uint64
	for _, k := range kinds {
		total += enf.Refused[k]
		if enf.Refused[k] != sh.Shadow[k] {
			w.t.Errorf("%s: enforcing rule refused %d, shadow twin would refuse %d", k, enf.Refused[k], sh.Shadow[k])
		}
	}
	if total == 0 {
		w.t.Errorf("the enforcing rule refused nothing: the sequence proves nothing")
	}
	if sh.Passed != enf.Passed+total {
		w.t.Errorf("shadow twin admitted %d, want every call (%d)", sh.Passed, enf.Passed+total)
	}
}

// oneEngineTwin is an engine enforcing doc on ddcolor_person and its shadow
// twin, shadowDoc, on ddcolor_building.
func oneEngineTwin(t *testing.T, doc, shadowDoc string) *twin {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\n"+doc+"---\nresource: ddcolor_building\n"+shadowDoc, engine.Options{Clock: c})
	return &twin{t: t, clock: c, targets: []target{{e: e, resource: "ddcolor_person"}, {e: e, resource: "ddcolor_building"}}}
}

// twoEngineTwin is two engines on one clock, one enforcing doc and one its
// shadow twin: for the system and GPU rules, which are every resource's.
func twoEngineTwin(t *testing.T, doc, shadowDoc string) *twin {
	c := clock.NewFake(t0)
	a := newEngine(t, doc, engine.Options{Clock: c})
	b := newEngine(t, shadowDoc, engine.Options{Clock: c})
	return &twin{t: t, clock: c, targets: []target{{e: a, resource: "zimage_generate"}, {e: b, resource: "zimage_generate"}}}
}

func TestShadowTwinFlow(t *testing.T) {
	w := oneEngineTwin(t, "flow: [{threshold: 3}]\n", "flow: [{threshold: 3, mode: shadow}]\n")
	c := engine.Call{Origin: "192.0.2.1"}
	w.guard(5, c)
	w.exit(-1)
	w.clock.Advance(500 * time.Millisecond)
	w.guard(4, c)
	w.clock.Advance(600 * time.Millisecond)
	w.guard(6, c)
	w.clock.Advance(2 * time.Second)
	w.guard(2, c)
	w.check(engine.KindFlow)
}

func TestShadowTwinFlowThrottle(t *testing.T) {
	// With a 1 ms queue a call 500 ms apart from the last admitted one
	// passes at once and any closer one is refused: no call waits.
	w := oneEngineTwin(t, "flow: [{threshold: 2, behavior: throttle, max_queue: 1ms}]\n",
		"flow: [{threshold: 2, behavior: throttle, max_queue: 1ms, mode: shadow}]\n")
	c := engine.Call{Origin: "192.0.2.1"}
	w.guard(3, c)
	w.clock.Advance(250 * time.Millisecond)
	w.guard(1, c)
	w.clock.Advance(250 * time.Millisecond)
	w.guard(2, c)
	w.clock.Advance(time.Second)
	w.guard(1, c)
	w.check(engine.KindFlow)
}

func TestShadowTwinHotspotOrigin(t *testing.T) {
	w := oneEngineTwin(t, "hotspot: [{param: origin, threshold: 2, items: {\"192.0.2.9\": 4}}]\n",
		"hotspot: [{param: origin, threshold: 2, items: {\"192.0.2.9\": 4}, mode: shadow}]\n")
	for _, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.9"} {
		w.guard(5, engine.Call{Origin: ip, Size: 512})
	}
	w.clock.Advance(1100 * time.Millisecond)
	w.guard(3, engine.Call{Origin: "192.0.2.1", Size: 512})
	w.guard(1, engine.Call{Origin: "192.0.2.3", Tenant: "acme", Size: 512}) // identified: not limited by origin
	w.check(engine.KindHotspot)
}

func TestShadowTwinHotspotSize(t *testing.T) {
	w := oneEngineTwin(t, "hotspot: [{param: size, threshold: 3, items: {\"1024\": 1}}]\ncost: {param: size, values: {\"768\": 2}}\n",
		"hotspot: [{param: size, threshold: 3, items: {\"1024\": 1}, mode: shadow}]\ncost: {param: size, values: {\"768\": 2}}\n")
	for _, size := range []int{512, 768, 1024} {
		w.guard(4, engine.Call{Origin: "192.0.2.1", Size: size})
	}
	w.clock.Advance(1100 * time.Millisecond)
	w.guard(3, engine.Call{Origin: "192.0.2.1", Size: 1024})
	w.check(engine.KindHotspot)
}

func TestShadowTwinConcurrency(t *testing.T) {
	w := oneEngineTwin(t, "concurrency: 2\n", "concurrency: {limit: 2, mode: shadow}\n")
	c := engine.Call{Origin: "192.0.2.1"}
	w.guard(4, c) // 2 held, 2 refused
	w.exit(1)
	w.guard(3, c) // 1 more held, 2 refused
	w.exit(-1)
	w.guard(2, c)
	w.check(engine.KindConcurrency)
}

func TestShadowTwinBan(t *testing.T) {
	w := oneEngineTwin(t, "hotspot: [{param: origin, threshold: 1, window: 60s}]\nban: {blocks: 2, within: 10s, for: 30s}\n",
		"hotspot: [{param: origin, threshold: 1, window: 60s, mode: shadow}]\nban: {blocks: 2, within: 10s, for: 30s, mode: shadow}\n")
	c := engine.Call{Origin: "192.0.2.66", Size: 512}
	w.guard(6, c) // 1 admitted, 2 hotspot refusals earn the ban, 3 ban refusals
	w.clock.Advance(10 * time.Second)
	w.guard(1, engine.Call{Origin: "192.0.2.67"})
	e := w.targets[0].e
	bans := e.Bans()
	if len(bans) != 2 {
		t.Fatalf("bans %+v, want the real one and the shadow one", bans)
	}
	for _, b := range bans {
		wantShadow := b.Resource == "ddcolor_building"
		if b.Subject != "origin" || b.Who != "192.0.2.66" || b.Shadow != wantShadow || b.RemainingS != 20 ||
			!b.Until.Equal(t0.Add(30*time.Second)) {
			t.Errorf("ban %+v", b)
		}
	}
	w.check(engine.KindHotspot, engine.KindBan)
	if s := statsOf(t, e, "ddcolor_building"); s.Shadow[engine.KindBan] != 3 {
		t.Errorf("shadow ban would refuse %d, want 3", s.Shadow[engine.KindBan])
	}
	// Unban lifts the shadow ban too.
	if n := e.Unban("", "192.0.2.66"); n != 2 {
		t.Errorf("Unban lifted %d, want 2", n)
	}
	if b := e.Bans(); len(b) != 0 {
		t.Errorf("bans after Unban: %+v", b)
	}
}

func TestShadowTwinSystemInboundQPS(t *testing.T) {
	w := twoEngineTwin(t, "system: {inbound_qps: 3}\n", "system: {mode: shadow, inbound_qps: 3}\n")
	c := engine.Call{Origin: "192.0.2.1"}
	w.guard(5, c)
	w.clock.Advance(1100 * time.Millisecond)
	w.guard(2, c)
	w.clock.Advance(300 * time.Millisecond)
	w.guard(3, c)
	w.check(engine.KindSystem)
}

func TestShadowTwinSystemConcurrency(t *testing.T) {
	w := twoEngineTwin(t, "system: {concurrency: 2}\n", "system: {mode: shadow, concurrency: 2}\n")
	c := engine.Call{Origin: "192.0.2.1"}
	w.guard(3, c)
	w.exit(1)
	w.guard(3, c)
	w.check(engine.KindSystem)
}

func TestShadowTwinSystemCPU(t *testing.T) {
	cpuA, cpuB := &fakeCPU{}, &fakeCPU{}
	c := clock.NewFake(t0)
	a := newEngine(t, "system: {cpu_usage: 0.8}\n", engine.Options{Clock: c, CPU: cpuA})
	b := newEngine(t, "system: {mode: shadow, cpu_usage: 0.8}\n", engine.Options{Clock: c, CPU: cpuB})
	w := &twin{t: t, clock: c, targets: []target{{e: a, resource: "zimage_generate"}, {e: b, resource: "zimage_generate"}}}
	w.guard(1, engine.Call{})
	cpuA.set(0.95)
	cpuB.set(0.95)
	a.SampleCPU()
	b.SampleCPU()
	w.guard(3, engine.Call{})
	w.check(engine.KindCPU)
}

func TestShadowTwinGPU(t *testing.T) {
	for _, action := range []string{"reject", "tighten"} {
		t.Run(action, func(t *testing.T) {
			flow := "resource: zimage_generate\nflow: [{threshold: 10}]\n---\n"
			w := twoEngineTwin(t, flow+"gpu: {memory_used_ratio: 0.9, action: "+action+"}\n",
				flow+"gpu: {mode: shadow, memory_used_ratio: 0.9, action: "+action+"}\n")
			report, backend := w.reportGPU, twinBackend
			c := engine.Call{Origin: "192.0.2.1"}
			report(0.5)
			w.guard(2, c)
			report(0.95)
			if !w.targets[0].e.BackendPressure(backend) || w.targets[1].e.BackendPressure(backend) {
				t.Error("the shadow GPU rule must keep the backend in the farm, the enforcing one take it out")
			}
			if p := w.targets[1].e.System().Pressure; !p.Active || !p.Shadow {
				t.Errorf("shadow pressure shown as %+v", p)
			}
			w.clock.Advance(1100 * time.Millisecond)
			report(0.95)
			w.guard(8, c)
			report(0.5)
			w.guard(1, c)
			w.check(engine.KindGPU)
		})
	}
}

func TestShadowBesideEnforcing(t *testing.T) {
	var logs bytes.Buffer
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 5}, {threshold: 2, mode: shadow}]\n",
		engine.Options{Clock: c, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	toks, refs := burst(t, e, 10, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.5", Size: 512})
	exitAll(toks)
	if len(toks) != 5 || len(refs) != 5 || refs[0].Rule != "ddcolor_person/flow[0]" {
		t.Fatalf("admitted %d, refused %d (%+v): the enforcing rule must still refuse", len(toks), len(refs), refs)
	}
	s := statsOf(t, e, "ddcolor_person")
	// The shadow rule sees the 5 admitted calls and would refuse 3 of them.
	if s.Refused[engine.KindFlow] != 5 || s.Shadow[engine.KindFlow] != 3 || s.ShadowPerSec[engine.KindFlow] != 3 {
		t.Fatalf("refused %v shadow %v per sec %v; want 5 refused, 3 would-refuse", s.Refused, s.Shadow, s.ShadowPerSec)
	}
	var shadow, real int
	for _, b := range e.Blocked(0) {
		if b.Shadow {
			shadow++
			if b.Rule != "ddcolor_person/flow[1]" || b.Kind != engine.KindFlow || b.Origin != "192.0.2.5" || b.Size != 512 {
				t.Errorf("shadow entry %+v", b)
			}
		} else {
			real++
		}
	}
	if shadow != 3 || real != 5 {
		t.Errorf("blocked list: %d shadow, %d real; want 3 and 5", shadow, real)
	}
	var lines int
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil || m["shadow"] != true || m["msg"] != "shadow rule would refuse" {
			continue
		}
		lines++
		if m["rule"] != "ddcolor_person/flow[1]" || m["kind"] != "flow" || m["resource"] != "ddcolor_person" || m["ip"] != "192.0.2.5" {
			t.Errorf("log line %v", m)
		}
	}
	if lines != 3 {
		t.Errorf("%d shadow log lines, want 3:\n%s", lines, logs.String())
	}
}

func TestShadowSwitchedToEnforce(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 2, mode: shadow}]\n", engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.5"}
	toks, refs := burst(t, e, 5, call)
	exitAll(toks)
	if len(refs) != 0 || statsOf(t, e, "ddcolor_person").Shadow[engine.KindFlow] != 3 {
		t.Fatalf("shadow: refused %d, would refuse %d; want 0 and 3", len(refs), statsOf(t, e, "ddcolor_person").Shadow[engine.KindFlow])
	}
	if err := e.Apply(mustSet(t, "resource: ddcolor_person\nflow: [{threshold: 2, mode: enforce}]\n")); err != nil {
		t.Fatal(err)
	}
	c.Advance(1100 * time.Millisecond)
	toks, refs = burst(t, e, 5, call)
	exitAll(toks)
	if len(toks) != 2 || len(refs) != 3 || refs[0].Rule != "ddcolor_person/flow[0]" {
		t.Fatalf("enforced: admitted %d, refused %d; want 2 and 3", len(toks), len(refs))
	}
	if s := statsOf(t, e, "ddcolor_person"); s.Shadow[engine.KindFlow] != 3 {
		t.Errorf("would-refuse count moved to %d after the switch", s.Shadow[engine.KindFlow])
	}
	// And back to shadow: nothing refused again.
	if err := e.Apply(mustSet(t, "resource: ddcolor_person\nflow: [{threshold: 2, mode: shadow}]\n")); err != nil {
		t.Fatal(err)
	}
	c.Advance(1100 * time.Millisecond)
	toks, refs = burst(t, e, 5, call)
	exitAll(toks)
	if len(refs) != 0 {
		t.Fatalf("back in shadow: %d refused", len(refs))
	}
}

func TestShadowAbandonedWhilePacedFreesShadowSlot(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, behavior: throttle, max_queue: 2s}]\nconcurrency: {limit: 1, mode: shadow}\n",
		engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.5"}
	first, _ := burst(t, e, 1, call)
	ctx, cancel := context.WithCancel(context.Background())
	ch := guardLater(ctx, e, call) // paced 1 s; the shadow concurrency would refuse it (1 in flight)
	waitTimers(t, c, 1)
	if n := statsOf(t, e, "ddcolor_person").Shadow[engine.KindConcurrency]; n != 1 {
		t.Fatalf("the shadow concurrency would refuse %d, want 1", n)
	}
	exitAll(first)
	third := guardLater(ctx, e, call) // paced 2 s; the shadow admits it (0 in flight)
	waitTimers(t, c, 2)
	cancel()
	<-ch
	<-third
	// The abandoned call gave its shadow place back: one more passes the
	// shadow concurrency.
	c.Advance(5 * time.Second)
	toks, _ := burst(t, e, 1, call)
	exitAll(toks)
	if s := statsOf(t, e, "ddcolor_person"); s.Shadow[engine.KindConcurrency] != 1 {
		t.Errorf("would refuse %d by concurrency, want 1: the abandoned call kept its shadow place", s.Shadow[engine.KindConcurrency])
	}
}

func TestNoShadowRulesNoShadowCounts(t *testing.T) {
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1}]\n", engine.Options{})
	toks, _ := burst(t, e, 3, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.5"})
	exitAll(toks)
	s := statsOf(t, e, "ddcolor_person")
	for _, k := range engine.Kinds {
		if s.Shadow[k] != 0 {
			t.Errorf("shadow %s counted %d without shadow rules", k, s.Shadow[k])
		}
	}
	if len(s.Shadow) != len(engine.Kinds) || len(s.ShadowPerSec) != len(engine.Kinds) {
		t.Errorf("shadow maps %v %v must list every kind", s.Shadow, s.ShadowPerSec)
	}
}

func TestP95JobTime(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1000}]\n", engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.5"}
	if p := statsOf(t, e, "ddcolor_person").P95RTMillis; p != 0 {
		t.Fatalf("p95 %v before any job, want 0", p)
	}
	// 100 jobs of 1..100 ms, 5 s in all.
	for d := 1; d <= 100; d++ {
		toks, _ := burst(t, e, 1, call)
		c.Advance(time.Duration(d) * time.Millisecond)
		exitAll(toks)
	}
	p := statsOf(t, e, "ddcolor_person").P95RTMillis
	if math.Abs(p-95) > 95*0.2 {
		t.Fatalf("p95 %v ms, want 95 within a bucket (20 %%)", p)
	}
	// One slow job among them does not move the p95 much; 5 % slow jobs
	// do not either, 6 % do.
	toks, _ := burst(t, e, 5, call)
	c.Advance(2 * time.Second)
	exitAll(toks)
	if p := statsOf(t, e, "ddcolor_person").P95RTMillis; p > 120 {
		t.Fatalf("p95 %v ms with 5 of 105 jobs slow, want still about 95", p)
	}
	toks, _ = burst(t, e, 2, call)
	c.Advance(2 * time.Second)
	exitAll(toks)
	if p := statsOf(t, e, "ddcolor_person").P95RTMillis; p < 1500 || p > 2500 {
		t.Fatalf("p95 %v ms with 7 of 107 jobs at 2 s, want about 2000", p)
	}
	// Jobs older than 10 s leave it.
	c.Advance(11 * time.Second)
	if p := statsOf(t, e, "ddcolor_person").P95RTMillis; p != 0 {
		t.Fatalf("p95 %v ms 11 s after the last job, want 0", p)
	}
}

// TestShadowRulesCostOthersNothing: a resource without shadow rules
// allocates no more per call when another resource has some, and one with
// shadow rules pays for its second check.
func TestShadowRulesCostOthersNothing(t *testing.T) {
	allocs := func(src, resource string) float64 {
		e := newEngine(t, src, engine.Options{})
		call := engine.Call{Resource: resource, Origin: "192.0.2.5", Size: 512}
		return testing.AllocsPerRun(200, func() {
			tok, err := e.Guard(context.Background(), call)
			if err != nil {
				t.Fatal(err)
			}
			tok.Exit(nil)
		})
	}
	const plain = "resource: ddcolor_person\nflow: [{threshold: 1000000000}]\n"
	none := allocs(plain, "ddcolor_person")
	beside := allocs(plain+"---\nresource: ddcolor_building\nflow: [{threshold: 1000000000, mode: shadow}]\n", "ddcolor_person")
	shadowed := allocs(plain+"---\nresource: ddcolor_building\nflow: [{threshold: 1000000000, mode: shadow}]\n", "ddcolor_building")
	if beside != none {
		t.Errorf("%v allocations per call beside a shadow resource, %v without: want the same", beside, none)
	}
	if shadowed <= none {
		t.Errorf("%v allocations per call with a shadow rule, %v without: the shadow check must have run", shadowed, none)
	}
}
