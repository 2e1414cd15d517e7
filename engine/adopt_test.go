package engine_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// A job adopted after a restart holds its place under concurrency until it
// ends, without being refused itself, and counts as one completed job.
func TestAdoptedJobHoldsItsPlace(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: ddcolor_person
concurrency: 1
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 512}
	adopted := e.Adopt(call)
	if adopted == nil {
		t.Fatal("Adopt returned nil for a known resource")
	}
	// A second adoption is not refused either (the jobs are already running).
	second := e.Adopt(call)
	if got := e.Stats()[0].InFlight; got != 2 {
		t.Fatalf("in flight after two adoptions = %d, want 2", got)
	}
	second.Exit(nil)
	if _, refs := burst(t, e, 1, call); len(refs) != 1 || refs[0].Kind != engine.KindConcurrency {
		t.Fatalf("a new call while the adopted job runs: refusals %v, want one by concurrency", refs)
	}
	c.Advance(3 * time.Second)
	adopted.Exit(nil)
	toks, refs := burst(t, e, 1, call)
	if len(toks) != 1 {
		t.Fatalf("after the adopted job ended: refused %v", refs)
	}
	exitAll(toks)
	if e.Adopt(engine.Call{Resource: "nope"}) != nil {
		t.Fatal("Adopt of an unknown resource returned a token")
	}
}
