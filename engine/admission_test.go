package engine_test

import (
	"context"
	"errors"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// retrySeconds rounds a Retry-After up to whole seconds, as the HTTP
// header does.
func retrySeconds(d time.Duration) time.Duration {
	return time.Duration(max(math.Ceil(d.Seconds()), 1)) * time.Second
}

// waitTimers waits until n timers wait on c: the code under test has
// reached its wait.
func waitTimers(t *testing.T, c *clock.Fake, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Timers() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers wait on the clock, want %d", c.Timers(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBanCountsOnlyTheCallersOwnRefusals(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
flow: [{threshold: 1, window: 10s}]
ban: {blocks: 3, within: 10s, for: 1m}
`, engine.Options{})
	// A takes the resource's one admission per 10 s; B, refused by the
	// resource-wide flow rule three times, did nothing wrong.
	toks, _ := burst(t, e, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 512})
	defer exitAll(toks)
	b := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.2", Size: 1024}
	_, refs := burst(t, e, 4, b)
	for i, r := range refs {
		if r.Kind != engine.KindFlow {
			t.Fatalf("B's refusal %d by %s (%s), want the flow rule: B was banned for A's traffic", i, r.Kind, r.Rule)
		}
	}
	if r := e.Precheck(b); r != nil {
		t.Fatalf("B banned for the resource-wide flow rule: %+v", r)
	}
}

func TestBanIgnoresTheSizeHotspot(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: size, threshold: 1, window: 60s}]
ban: {blocks: 2, within: 10s, for: 1m}
`, engine.Options{})
	toks, _ := burst(t, e, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 1280})
	defer exitAll(toks)
	b := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.2", Size: 1280}
	_, refs := burst(t, e, 3, b)
	if refs[2].Kind != engine.KindHotspot || refs[2].Param != rules.ParamSize {
		t.Fatalf("third refusal %+v, want the size hotspot again, not a ban", refs[2])
	}
}

func TestStrikeCountsTowardTheBan(t *testing.T) {
	e := newEngine(t, `resource: zimage_generate
ban: {blocks: 2, within: 10s, for: 1m}
`, engine.Options{})
	const origin = "192.0.2.7"
	call := engine.Call{Resource: "zimage_generate", Origin: origin}
	if e.Strike(call) {
		t.Fatal("one strike of two started a ban")
	}
	if !e.Strike(call) {
		t.Fatal("the second strike did not start the ban")
	}
	r := e.Precheck(engine.Call{Resource: "zimage_generate", Origin: origin})
	if r == nil || r.Kind != engine.KindBan || r.RetryAfter != time.Minute {
		t.Fatalf("after two strikes: %+v, want a 1m ban", r)
	}
	if e.Strike(engine.Call{Resource: "ddcolor_person", Origin: origin}) || e.Strike(engine.Call{Resource: "nope", Origin: origin}) {
		t.Fatal("a strike on a resource without a ban rule started a ban")
	}
}

func TestConcurrencyCountsJobsNotCost(t *testing.T) {
	for _, tc := range []struct {
		concurrency, want int
	}{{4, 4}, {2, 2}, {1, 1}} {
		e := newEngine(t, `resource: ddcolor_person
concurrency: `+string(rune('0'+tc.concurrency))+`
cost: {param: size, values: {"1280": 3}}
`, engine.Options{})
		toks, refs := burst(t, e, tc.want+1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 1280})
		if len(toks) != tc.want || refs[0].Kind != engine.KindConcurrency {
			t.Fatalf("concurrency %d, cost-3 jobs: admitted %d, want %d", tc.concurrency, len(toks), tc.want)
		}
		toks[0].Exit(nil)
		toks[0].Exit(nil) // frees one place only
		more, _ := burst(t, e, 2, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 1280})
		if len(more) != 1 {
			t.Fatalf("concurrency %d: %d admitted after one Exit, want 1", tc.concurrency, len(more))
		}
		if got := e.Stats()[0].InFlight; got != int64(tc.want) {
			t.Fatalf("in flight %d, want %d", got, tc.want)
		}
		exitAll(append(toks[1:], more...))
	}
}

func TestHotspotRetryAfterIsEnough(t *testing.T) {
	for _, tc := range []struct {
		name, rules string
		size        int
	}{
		{"origin", "hotspot: [{param: origin, threshold: 2, window: 10s}]", 512},
		{"origin with burst and cost", "hotspot: [{param: origin, threshold: 3, window: 10s, burst: 3}]\ncost: {param: size, values: {\"1280\": 3}}", 1280},
		{"long window", "hotspot: [{param: origin, threshold: 5, window: 60s}]", 512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clock.NewFake(t0)
			e := newEngine(t, "resource: ddcolor_person\n"+tc.rules+"\n", engine.Options{Clock: c})
			call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: tc.size}
			admitted := 0
			for step := range 40 {
				tok, err := e.Guard(context.Background(), call)
				if err == nil {
					tok.Exit(nil)
					admitted++
					c.Advance(700 * time.Millisecond)
					continue
				}
				var ref *engine.Refusal
				if !errors.As(err, &ref) {
					t.Fatal(err)
				}
				c.Advance(retrySeconds(ref.RetryAfter))
				tok, err = e.Guard(context.Background(), call)
				if err != nil {
					t.Fatalf("step %d: waited Retry-After %s (%s), refused again: %v", step, retrySeconds(ref.RetryAfter), ref.RetryAfter, err)
				}
				tok.Exit(nil)
				admitted++
			}
			if admitted < 40 {
				t.Fatalf("admitted %d", admitted)
			}
		})
	}
}

func TestTwoEnginesEnforceTheirOwnRules(t *testing.T) {
	a := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n", engine.Options{})
	b := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 3, window: 10s}]\n", engine.Options{})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	ta, ra := burst(t, a, 5, call)
	tb, _ := burst(t, b, 5, call)
	defer exitAll(append(ta, tb...))
	if len(ta) != 1 || len(tb) != 3 {
		t.Fatalf("engine a admitted %d (want 1), engine b %d (want 3)", len(ta), len(tb))
	}
	if ra[0].Kind != engine.KindFlow {
		t.Fatalf("a refused by %s", ra[0].Kind)
	}
	ns := t.Name() + "/shared/"
	first, err := engine.New(engine.Options{Namespace: ns, CPU: &fakeCPU{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := engine.New(engine.Options{Namespace: ns, CPU: &fakeCPU{}}, nil); err == nil {
		second.Close()
		t.Fatalf("a second live engine in namespace %s was accepted", ns)
	}
	first.Close()
	again, err := engine.New(engine.Options{Namespace: ns, CPU: &fakeCPU{}}, nil)
	if err != nil {
		t.Fatalf("the namespace of a closed engine: %v", err)
	}
	again.Close()
}

func TestClosingOneEngineLeavesTheOtherRules(t *testing.T) {
	a := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n", engine.Options{})
	b, err := engine.New(engine.Options{Namespace: t.Name() + "/b/", CPU: &fakeCPU{}}, mustSet(t, "resource: ddcolor_person\nflow: [{threshold: 3}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	toks, _ := burst(t, a, 3, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	defer exitAll(toks)
	if len(toks) != 1 {
		t.Fatalf("after the other engine closed, a admitted %d, want 1", len(toks))
	}
}

func TestApplyKeepsConcurrencyExact(t *testing.T) {
	const limit = 2
	sets := []*rules.Set{
		mustSet(t, "resource: zimage_generate\nconcurrency: 2\nflow: [{threshold: 1000000}]\n"),
		mustSet(t, "resource: zimage_generate\nconcurrency: 2\nflow: [{threshold: 2000000}]\n"),
	}
	e := newEngine(t, "resource: zimage_generate\nconcurrency: 2\n", engine.Options{})
	var inFlight, most, admitted atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := e.Guard(context.Background(), engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"})
				if err != nil {
					continue
				}
				n := inFlight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				admitted.Add(1)
				for range 20 { // hold the place while others try
					runtime.Gosched()
				}
				inFlight.Add(-1)
				tok.Exit(nil)
			}
		})
	}
	for i := range 2000 {
		if err := e.Apply(sets[i%2]); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()
	if most.Load() > limit {
		t.Fatalf("%d jobs in flight during rule swaps, limit %d", most.Load(), limit)
	}
	if admitted.Load() == 0 {
		t.Fatal("nothing admitted")
	}
}

func TestStatsCountJobsNotCost(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: ddcolor_person
cost: {param: size, values: {"1280": 3}}
---
system: {avg_rt: 1s}
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 1280}
	toks, _ := burst(t, e, 1, call)
	c.Advance(1200 * time.Millisecond)
	toks[0].Exit(nil)
	s := e.Stats()[0]
	if s.CompletedPerSec != 1 || s.AvgRTMillis != 1200 {
		t.Fatalf("one cost-3 job of 1.2 s: completed_per_sec %v (want 1), avg_rt_ms %v (want 1200)", s.CompletedPerSec, s.AvgRTMillis)
	}
	// The avg_rt system rule sees the same 1.2 s, over its 1 s threshold.
	_, refs := burst(t, e, 1, call)
	if len(refs) != 1 || refs[0].Kind != engine.KindSystem || refs[0].Rule != "system/avg_rt" {
		t.Fatalf("after a 1.2 s job under avg_rt 1s: %+v, want a system/avg_rt refusal", refs)
	}
}

func TestThrottleWaitsOnlyAfterEveryOtherCheck(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 1, window: 1s, behavior: throttle, max_queue: 2s}]
concurrency: 1
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	first, _ := burst(t, e, 1, call) // paced at t0, no wait
	if len(first) != 1 {
		t.Fatal("the first call was not admitted at once")
	}
	// Refused by concurrency at once: it neither waits nor books a slot.
	_, refs := burst(t, e, 1, call)
	if len(refs) != 1 || refs[0].Kind != engine.KindConcurrency || c.Timers() != 0 {
		t.Fatalf("second call: %+v with %d timers, want a concurrency refusal without waiting", refs, c.Timers())
	}
	first[0].Exit(nil)
	// The next slot is t0+1s, not t0+2s.
	done := guardLater(context.Background(), e, call)
	waitTimers(t, c, 1)
	c.Advance(time.Second)
	g := <-done
	if g.err != nil {
		t.Fatal(g.err)
	}
	g.tok.Exit(nil)
}

func TestThrottleWaitEndsWithTheClient(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 1, window: 1s, behavior: throttle, max_queue: 5s}]
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	first, _ := burst(t, e, 1, call)
	defer exitAll(first)
	ctx, cancel := context.WithCancel(context.Background())
	left := guardLater(ctx, e, call)
	waitTimers(t, c, 1)
	cancel()
	if g := <-left; !errors.Is(g.err, context.Canceled) {
		g.tok.Exit(nil)
		t.Fatalf("a call whose client left while paced: %v, want context.Canceled", g.err)
	}
	if s := e.Stats()[2]; s.InFlight != 1 || s.Passed != 1 {
		t.Fatalf("after the client left: in flight %d, passed %d; want 1 and 1", s.InFlight, s.Passed)
	}
	// Its slot (t0+1s) was given back: the next call waits 1 s, not 2 s.
	done := guardLater(context.Background(), e, call)
	waitTimers(t, c, 1)
	c.Advance(time.Second)
	g := <-done
	if g.err != nil {
		t.Fatal(g.err)
	}
	g.tok.Exit(nil)
}

func TestThrottleRefusesBeyondMaxQueue(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 2, window: 1s, behavior: throttle, max_queue: 400ms}]
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	first, _ := burst(t, e, 1, call) // t0
	defer exitAll(first)
	_, refs := burst(t, e, 1, call)
	if len(refs) != 1 || refs[0].Kind != engine.KindFlow || refs[0].RetryAfter != 100*time.Millisecond {
		t.Fatalf("a call 500ms from its slot under max_queue 400ms: %+v, want a flow refusal retrying after 100ms", refs)
	}
	if refs[0].Overload() {
		t.Error("a throttle refusal is the resource's rate, not overload")
	}
}

func TestSystemRulesArePerEngine(t *testing.T) {
	a := newEngine(t, "system: {concurrency: 1}\n", engine.Options{})
	b := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 100}]\n", engine.Options{})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	ta, ra := burst(t, a, 3, call)
	tb, _ := burst(t, b, 3, call)
	defer exitAll(append(ta, tb...))
	if len(ta) != 1 || ra[0].Kind != engine.KindSystem || ra[0].Rule != "system/concurrency" {
		t.Fatalf("engine a under system concurrency 1: admitted %d, refusals %+v", len(ta), ra)
	}
	if len(tb) != 3 {
		t.Fatalf("engine b, without system rules, admitted %d of 3: a's system rule reached it", len(tb))
	}
}

func TestHotspotRetryAfterIsExact(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, "resource: ddcolor_person\nhotspot: [{param: origin, threshold: 2, window: 10s}]\n", engine.Options{Clock: c})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	toks, _ := burst(t, e, 2, call) // the bucket filled at t0, now empty
	exitAll(toks)
	c.Advance(3 * time.Second)
	_, refs := burst(t, e, 1, call)
	// It refills at the first call more than 10 s after t0: t0+10.001s.
	if len(refs) != 1 || refs[0].RetryAfter != 7*time.Second+time.Millisecond {
		t.Fatalf("refused 3 s after the bucket filled: %+v, want retry after 7.001s", refs)
	}
	c.Advance(7 * time.Second)
	if _, refs := burst(t, e, 1, call); len(refs) != 1 {
		t.Fatal("admitted at exactly one window after the fill: sentinel-golang refills only after more than a window")
	}
	c.Advance(time.Millisecond)
	toks, _ = burst(t, e, 1, call)
	exitAll(toks)
	if len(toks) != 1 {
		t.Fatal("refused at the retry time")
	}
}
