package engine_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// twinBackend is the one GPU backend of the GPU twin tests.
const twinBackend = "http://gpu-1:8188"

// reportGPU reports the same GPU sample, used of its memory in use, to
// both engines of the twin.
func (w *twin) reportGPU(used float64) {
	for _, tg := range w.targets {
		tg.e.ReportGPUs("comfyui "+twinBackend, []engine.GPU{remote(w.clock, twinBackend, used)}, nil)
	}
}

// gpuTwinRun drives a twin through a GPU pressure: calls before, during
// and after it, reporting the same samples to both engines.
func gpuTwinRun(w *twin) {
	report := w.reportGPU
	c := engine.Call{Origin: "192.0.2.1"}
	report(0.5)
	w.guard(2, c)
	report(0.95)
	w.clock.Advance(1100 * time.Millisecond)
	report(0.95)
	w.guard(8, c)
	w.clock.Advance(1100 * time.Millisecond)
	report(0.95)
	w.guard(3, c)
	report(0.5)
	w.guard(1, c)
}

// With every rule in shadow (the flow rules and the GPU rule), the shadow
// twin counts what enforcing them all refuses: the GPU rule tightens the
// shadow flow rules. And an enforcing GPU rule tightens the shadow flow
// rules in the shadow evaluation too.
func TestShadowTwinGPUAllRules(t *testing.T) {
	const res = "resource: zimage_generate\n"
	for _, action := range []string{"reject", "tighten"} {
		factor := ""
		if action == "tighten" {
			factor = ", factor: 0.5"
		}
		gpu := "gpu: {memory_used_ratio: 0.9, action: " + action + factor + "}\n"
		shadowGPU := "gpu: {mode: shadow, memory_used_ratio: 0.9, action: " + action + factor + "}\n"
		t.Run(action+"/all shadow", func(t *testing.T) {
			w := twoEngineTwin(t, res+"flow: [{threshold: 10}]\n---\n"+gpu,
				res+"flow: [{threshold: 10, mode: shadow}]\n---\n"+shadowGPU)
			gpuTwinRun(w)
			w.check(engine.KindGPU, engine.KindFlow)
		})
	}
	// Both twins enforce a tightening GPU rule; the flow rule is enforced
	// in one and shadow in the other. (An enforcing reject refuses a call
	// before any shadow rule sees it: nothing to compare there.)
	t.Run("tighten/enforcing gpu, shadow flow", func(t *testing.T) {
		gpu := "gpu: {memory_used_ratio: 0.9, action: tighten, factor: 0.5}\n"
		w := twoEngineTwin(t, res+"flow: [{threshold: 10}]\n---\n"+gpu,
			res+"flow: [{threshold: 10, mode: shadow}]\n---\n"+gpu)
		gpuTwinRun(w)
		w.check(engine.KindGPU, engine.KindFlow)
	})
}

// A shadow concurrency rule that Apply adds while jobs are in flight
// counts them, as the enforcing rule does.
func TestShadowConcurrencyAddedWhileJobsInFlight(t *testing.T) {
	w := oneEngineTwin(t, "flow: [{threshold: 100}]\n", "flow: [{threshold: 100}]\n")
	c := engine.Call{Origin: "192.0.2.1"}
	w.guard(2, c) // 2 in flight on each, before any concurrency rule
	e := w.targets[0].e
	if err := e.Apply(mustSet(t, "resource: ddcolor_person\nconcurrency: 2\n---\nresource: ddcolor_building\nconcurrency: {limit: 2, mode: shadow}\n")); err != nil {
		t.Fatal(err)
	}
	w.guard(2, c) // refused by the enforcing rule, would be by the shadow one
	w.exit(1)
	w.guard(2, c) // one admitted, one refused
	w.exit(-1)
	w.guard(1, c)
	w.check(engine.KindConcurrency)
}

// Jobs adopted after a restart count under a shadow concurrency rule and a
// shadow system concurrency rule, as under enforcing ones.
func TestShadowConcurrencyCountsAdoptedJobs(t *testing.T) {
	for name, docs := range map[string][2]string{
		"resource": {"resource: zimage_generate\nconcurrency: 2\n", "resource: zimage_generate\nconcurrency: {limit: 2, mode: shadow}\n"},
		"system":   {"system: {concurrency: 2}\n", "system: {mode: shadow, concurrency: 2}\n"},
	} {
		t.Run(name, func(t *testing.T) {
			w := twoEngineTwin(t, docs[0], docs[1])
			c := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
			var adopted []*engine.Token
			for _, tg := range w.targets {
				adopted = append(adopted, tg.e.Adopt(c))
			}
			w.guard(3, c) // one admitted, two refused
			exitAll(adopted)
			w.exit(-1)
			w.guard(1, c) // admitted
			w.check(kindOfDoc(name))
		})
	}
}

func kindOfDoc(name string) engine.Kind {
	if name == "system" {
		return engine.KindSystem
	}
	return engine.KindConcurrency
}

// A call the shadow rules would refuse does not hold a place under the
// shadow concurrency rule while it runs.
func TestShadowRefusedCallHoldsNoShadowPlace(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, mode: shadow}]\nconcurrency: {limit: 2, mode: shadow}\n", engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	toks, _ := burst(t, e, 3, call) // 1 shadow-admitted, 2 would be refused by flow
	defer exitAll(toks)
	s := statsOf(t, e, "ddcolor_person")
	if s.Shadow[engine.KindFlow] != 2 || s.Shadow[engine.KindConcurrency] != 0 {
		t.Errorf("would refuse %v, want 2 by flow and none by concurrency", s.Shadow)
	}
	c.Advance(1100 * time.Millisecond)
	more, _ := burst(t, e, 1, call) // the second shadow job in flight
	defer exitAll(more)
	c.Advance(1100 * time.Millisecond)
	over, _ := burst(t, e, 1, call) // one over the shadow concurrency
	defer exitAll(over)
	s = statsOf(t, e, "ddcolor_person")
	if s.Shadow[engine.KindFlow] != 2 || s.Shadow[engine.KindConcurrency] != 1 {
		t.Errorf("would refuse %v, want 2 by flow and 1 by concurrency", s.Shadow)
	}
}

// A flood of shadow would-refusals does not push the real refusals out of
// the log: each has a ring of its own, and Blocked merges them newest
// first.
func TestBlockedShadowFloodKeepsRealRefusals(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}, {threshold: 2, window: 10s, mode: shadow}]\n---\n"+
		"resource: ddcolor_building\nflow: [{threshold: 1, window: 10s, mode: shadow}]\n", engine.Options{Clock: c, BlockedLog: 4})
	person := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	building := engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.2"}
	toks, _ := burst(t, e, 1, person)
	defer exitAll(toks)
	c.Advance(time.Millisecond)
	if _, refs := burst(t, e, 2, person); len(refs) != 2 { // two real refusals
		t.Fatalf("refused %d, want 2", len(refs))
	}
	for range 10 { // a flood of would-refusals, more than the ring holds
		c.Advance(time.Millisecond)
		more, refs := burst(t, e, 1, building)
		exitAll(more)
		if len(refs) != 0 {
			t.Fatal("a shadow rule refused a call")
		}
	}
	got := e.Blocked(0)
	var real, shadow int
	for i, b := range got {
		if i > 0 && b.Time.After(got[i-1].Time) {
			t.Errorf("entry %d (%v) newer than entry %d (%v): not newest first", i, b.Time, i-1, got[i-1].Time)
		}
		if b.Shadow {
			shadow++
		} else {
			real++
		}
	}
	if real != 2 || shadow != 4 {
		t.Fatalf("held %d real and %d shadow entries, want 2 (the flood must not push them out) and 4", real, shadow)
	}
	if got[0].Resource != "ddcolor_building" || !got[0].Shadow || got[len(got)-1].Shadow {
		t.Errorf("newest %+v, oldest %+v: want the last would-refusal first and a real refusal last", got[0], got[len(got)-1])
	}
	if lim := e.Blocked(3); len(lim) != 3 || !lim[2].Shadow {
		t.Errorf("Blocked(3) = %+v, want the 3 newest (all shadow)", lim)
	}
}
