package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

// A call refused by a later check spends nothing of its hotspot buckets:
// a client refused for capacity it did not take is neither charged nor
// moved toward a ban.
func TestRefusedCallSpendsNoHotspotTokens(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 2, window: 60s}]
concurrency: 1
ban: {blocks: 2, within: 60s, for: 1m}
`, engine.Options{})
	a := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 512}
	b := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.2", Size: 512}
	held, _ := burst(t, e, 1, a)
	if len(held) != 1 {
		t.Fatal("client A was not admitted")
	}
	for i := range 4 {
		if _, refs := burst(t, e, 1, b); len(refs) != 1 || refs[0].Kind != engine.KindConcurrency {
			t.Fatalf("B's call %d while A runs: refusals %v, want one by concurrency", i+1, refs)
		}
	}
	exitAll(held)
	for i := range 2 {
		toks, refs := burst(t, e, 1, b)
		if len(toks) != 1 {
			t.Fatalf("B's call %d after A's job: refused %v; its tokens were spent by calls that were refused", i+1, refs)
		}
		exitAll(toks)
	}
}

// A call refused by concurrency does not drain a bucket shared by every
// client (the size hotspot).
func TestRefusedCallsDoNotDrainASharedBucket(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: size, threshold: 2, window: 60s}]
concurrency: 1
`, engine.Options{})
	big := func(origin string) engine.Call {
		return engine.Call{Resource: "ddcolor_person", Origin: origin, Size: 1280}
	}
	held, _ := burst(t, e, 1, big("192.0.2.1"))
	if _, refs := burst(t, e, 5, big("198.51.100.66")); len(refs) != 5 || refs[0].Kind != engine.KindConcurrency {
		t.Fatalf("the abuser's calls: %v, want five refusals by concurrency", refs)
	}
	exitAll(held)
	toks, refs := burst(t, e, 1, big("192.0.2.7"))
	if len(toks) != 1 {
		t.Fatalf("an honest 1280 px call after the GPU freed: refused %v", refs)
	}
	exitAll(toks)
}

// A paced call whose client leaves gives its hotspot tokens back.
func TestAbandonedPacedCallGivesItsTokensBack(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 1, window: 1s, behavior: throttle, max_queue: 5s}]
hotspot: [{param: origin, threshold: 2, window: 60s}]
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1", Size: 512}
	first, _ := burst(t, e, 1, call) // takes the pacing slot now
	ctx, cancel := context.WithCancel(context.Background())
	done := guardLater(ctx, e, call) // paced 1s behind the first
	waitTimers(t, c, 1)
	cancel()
	if g := <-done; !errors.Is(g.err, context.Canceled) {
		t.Fatalf("the abandoned call: %v, want context.Canceled", g.err)
	}
	exitAll(first)
	c.Advance(2 * time.Second)
	toks, refs := burst(t, e, 1, call)
	if len(toks) != 1 {
		t.Fatalf("after an abandoned call, the client's second token is gone: %v", refs)
	}
	exitAll(toks)
}

// A throttle rule loosened by a rule update does not keep the old rule's
// schedule; an unchanged one keeps its pacing.
func TestRuleUpdateResetsAChangedThrottle(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 1, window: 10s, behavior: throttle, max_queue: 500ms}]
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	first, _ := burst(t, e, 1, call) // books the slot: the next is 10 s away
	exitAll(first)
	if _, refs := burst(t, e, 1, call); len(refs) != 1 {
		t.Fatal("the throttle did not pace the second call")
	}
	if err := e.Apply(mustSet(t, "resource: zimage_generate\nflow: [{threshold: 1, window: 10s, behavior: throttle, max_queue: 500ms}]\n")); err != nil {
		t.Fatal(err)
	}
	if _, refs := burst(t, e, 1, call); len(refs) != 1 {
		t.Fatal("an unchanged throttle lost its pacing in an update")
	}
	if err := e.Apply(mustSet(t, "resource: zimage_generate\nflow: [{threshold: 1, window: 1s, behavior: throttle, max_queue: 500ms}]\n")); err != nil {
		t.Fatal(err)
	}
	toks, refs := burst(t, e, 1, call)
	if len(toks) != 1 {
		t.Fatalf("a loosened throttle kept the old schedule: %v", refs)
	}
	exitAll(toks)
}

// A paced call abandoned after its bucket was refilled gives nothing back:
// the refill already counted from what was left, and a refund on top would
// let more through than the rule allows.
func TestAbandonedCallRefundsNothingAfterARefill(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 1, window: 2s, behavior: throttle, max_queue: 20s}]
hotspot: [{param: origin, threshold: 2, window: 1s}]
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	first, _ := burst(t, e, 1, call) // t0: a token left
	defer exitAll(first)
	var cancels []context.CancelFunc
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()
	guard := func() <-chan guarded {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		return guardLater(ctx, e, call)
	}
	second := guard() // the last token; paced to t0+2s
	waitTimers(t, c, 1)
	c.Advance(1500 * time.Millisecond)
	guard() // the bucket refills (one token left after it); paced to t0+4s
	waitTimers(t, c, 2)
	cancels[0]() // the second call's client leaves: its token must not come back
	if r := <-second; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("the abandoned call: %v", r.err)
	}
	guard() // takes the one token left; paced
	waitTimers(t, c, 2)
	last := guard()
	stop := make(chan struct{})
	defer close(stop)
	select {
	case r := <-last:
		var ref *engine.Refusal
		if !errors.As(r.err, &ref) || ref.Kind != engine.KindHotspot {
			t.Fatalf("a third call in the window: %v, want a hotspot refusal", r.err)
		}
	case <-waitTimersCh(c, 3, stop):
		t.Fatal("a third call in the refilled window passed the hotspot: the abandoned call's token came back after the refill")
	}
}

// waitTimersCh is closed once n timers wait on c; it stops looking when
// stop is closed.
func waitTimersCh(c *clock.Fake, n int, stop <-chan struct{}) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for c.Timers() < n {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
		close(ch)
	}()
	return ch
}

// A call cancelled before its work started counts as no job and gives its
// place and its hotspot tokens back.
func TestCancelledCallIsNoJob(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
concurrency: 1
`, engine.Options{})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 512}
	toks, _ := burst(t, e, 1, call)
	if len(toks) != 1 {
		t.Fatal("not admitted")
	}
	toks[0].Cancel()
	toks[0].Exit(nil) // does nothing after Cancel
	if st := e.Stats()[0]; st.InFlight != 0 || st.Completed != 0 {
		t.Fatalf("after Cancel: %+v, want nothing in flight and no job completed", st)
	}
	again, refs := burst(t, e, 1, call)
	if len(again) != 1 {
		t.Fatalf("the client's one token did not come back: %v", refs)
	}
	exitAll(again)
}

// A throttle tightened by a rule update keeps the calls already booked: a
// new call comes after them, at the new spacing.
func TestRuleUpdateKeepsATightenedThrottlesSchedule(t *testing.T) {
	c := clock.NewFake(t0)
	e := newEngine(t, `resource: zimage_generate
flow: [{threshold: 2, window: 1s, behavior: throttle, max_queue: 1s}]
`, engine.Options{Clock: c})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	first, _ := burst(t, e, 1, call) // t0; the next slot is 500ms on
	exitAll(first)
	if err := e.Apply(mustSet(t, "resource: zimage_generate\nflow: [{threshold: 1, window: 1s, behavior: throttle, max_queue: 500ms}]\n")); err != nil {
		t.Fatal(err)
	}
	// At 1 per second after the call at t0, the next is due at t0+1s: 1s
	// away, over max_queue. Had the schedule been forgotten, it would pass
	// at once.
	if _, refs := burst(t, e, 1, call); len(refs) != 1 || refs[0].Kind != engine.KindFlow {
		t.Fatalf("right after tightening: %v, want a throttle refusal", refs)
	}
}
