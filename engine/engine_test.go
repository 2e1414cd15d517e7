package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alibaba/sentinel-golang/util"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// t0 is where every test's fake clock starts.
var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// useSentinelClock makes sentinel-golang's process-wide clock follow c for
// the rest of the test (tests of this package do not run in parallel).
func useSentinelClock(t testing.TB, c clock.Clock) {
	t.Helper()
	util.SetClock(clock.Sentinel(c))
	t.Cleanup(func() { util.SetClock(util.NewRealClock()) })
}

// fakeCPU reports a fixed usage.
type fakeCPU struct {
	mu    sync.Mutex
	usage float64
}

func (f *fakeCPU) CPUUsage() (float64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.usage, nil
}

func (f *fakeCPU) set(u float64) {
	f.mu.Lock()
	f.usage = u
	f.mu.Unlock()
}

func mustSet(t testing.TB, src string) *rules.Set {
	t.Helper()
	set, err := rules.ParseSet(t.Name()+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// newEngine starts an engine with its own sentinel namespace, so windows of
// earlier tests do not leak into this one. It runs on a fake clock (a new
// one unless opts has one), which sentinel-golang's clock follows too; a
// benchmark passes clock.System{}.
func newEngine(t testing.TB, src string, opts engine.Options) *engine.Engine {
	t.Helper()
	if opts.Namespace == "" {
		opts.Namespace = fmt.Sprintf("%s#%d/", t.Name(), engineSeq.Add(1))
	}
	if opts.CPU == nil {
		opts.CPU = &fakeCPU{}
	}
	if opts.Clock == nil {
		opts.Clock = clock.NewFake(t0)
	}
	if _, real := opts.Clock.(clock.System); !real {
		useSentinelClock(t, opts.Clock)
	}
	e, err := engine.New(opts, mustSet(t, src))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// burst guards n calls and returns the tokens admitted and the refusals.
func burst(t testing.TB, e *engine.Engine, n int, c engine.Call) ([]*engine.Token, []*engine.Refusal) {
	t.Helper()
	var toks []*engine.Token
	var refs []*engine.Refusal
	for range n {
		tok, err := e.Guard(context.Background(), c)
		var ref *engine.Refusal
		switch {
		case err == nil:
			toks = append(toks, tok)
		case errors.As(err, &ref):
			refs = append(refs, ref)
		default:
			t.Fatalf("Guard: %v", err)
		}
	}
	return toks, refs
}

// guarded is what Guard returned for a call run by guardLater.
type guarded struct {
	tok *engine.Token
	err error
}

// guardLater runs Guard in the background — a paced call waits there on
// the test's clock — and delivers what it returned.
func guardLater(ctx context.Context, e *engine.Engine, call engine.Call) <-chan guarded {
	ch := make(chan guarded, 1)
	go func() {
		tok, err := e.Guard(ctx, call)
		ch <- guarded{tok, err}
	}()
	return ch
}

func exitAll(toks []*engine.Token) {
	for _, tok := range toks {
		tok.Exit(nil)
	}
}

func TestFlowThreshold(t *testing.T) {
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 2, window: 1s}]\n", engine.Options{})
	toks, refs := burst(t, e, 10, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 512})
	defer exitAll(toks)
	if len(toks) != 2 || len(refs) != 8 {
		t.Fatalf("admitted %d, refused %d; want 2 and 8", len(toks), len(refs))
	}
	r := refs[0]
	if r.Kind != engine.KindFlow || r.Rule != "ddcolor_person/flow[0]" || r.Threshold != 2 || r.Window != time.Second || r.RetryAfter != time.Second {
		t.Fatalf("refusal = %+v", r)
	}
	if r.Overload() {
		t.Error("a flow refusal is the caller's rate, not overload")
	}
	if !strings.Contains(r.Error(), "flow rule ddcolor_person/flow[0] (threshold 2 per 1s)") {
		t.Errorf("message: %s", r.Error())
	}
}

func TestCostWeighsAgainstThreshold(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
flow: [{threshold: 4}]
cost: {param: size, values: {"1280": 2}}
`, engine.Options{})
	big, _ := burst(t, e, 5, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 1280})
	defer exitAll(big)
	if len(big) != 2 {
		t.Fatalf("size 1280 costs 2 of 4: admitted %d, want 2", len(big))
	}
	if big[0].Cost != 2 {
		t.Errorf("token cost = %d, want 2", big[0].Cost)
	}
}

func TestHotspotSizeItem(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_building
hotspot:
  - param: size
    threshold: 5
    window: 60s
    items: {"1280": 2}
`, engine.Options{})
	big, bigRefs := burst(t, e, 5, engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1", Size: 1280})
	small, smallRefs := burst(t, e, 5, engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1", Size: 512})
	defer exitAll(append(big, small...))
	if len(big) != 2 || len(small) != 5 || len(smallRefs) != 0 {
		t.Fatalf("1280 admitted %d (want 2), 512 admitted %d (want 5)", len(big), len(small))
	}
	r := bigRefs[0]
	if r.Kind != engine.KindHotspot || r.Param != "size" || r.Value != "1280" || r.Threshold != 2 || r.Window != time.Minute {
		t.Fatalf("refusal = %+v", r)
	}
	// sentinel-golang refills the bucket only once more than a window has
	// passed since it was filled.
	if r.RetryAfter != time.Minute+time.Millisecond {
		t.Errorf("retry after %s, want 1m0.001s (the bucket refills once a whole window has passed)", r.RetryAfter)
	}
}

func TestHotspotOriginVIP(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot:
  - param: origin
    threshold: 2
    window: 10s
    items: {"203.0.113.7": 6}
`, engine.Options{})
	vip, _ := burst(t, e, 10, engine.Call{Resource: "ddcolor_person", Origin: "203.0.113.7", Size: 512})
	other, refs := burst(t, e, 10, engine.Call{Resource: "ddcolor_person", Origin: "198.51.100.4", Size: 512})
	defer exitAll(append(vip, other...))
	if len(vip) != 6 || len(other) != 2 {
		t.Fatalf("VIP admitted %d (want 6), other admitted %d (want 2)", len(vip), len(other))
	}
	if refs[0].Param != "origin" || refs[0].Value != "198.51.100.4" {
		t.Fatalf("refusal = %+v", refs[0])
	}
}

func TestWarmUpAdmitsFewerAtFirst(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_building
flow:
  - threshold: 30
    warm_up: {period: 60s, cold_factor: 3}
---
resource: ddcolor_person
flow:
  - threshold: 30
`, engine.Options{})
	cold, _ := burst(t, e, 30, engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1"})
	warm, _ := burst(t, e, 30, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	defer exitAll(append(cold, warm...))
	if len(warm) != 30 {
		t.Fatalf("without warm-up %d of 30 admitted, want 30", len(warm))
	}
	if len(cold) < 8 || len(cold) > 12 {
		t.Fatalf("cold start admitted %d of 30; want about threshold/cold_factor = 10", len(cold))
	}
}

func TestBanStartsAndEnds(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, `resource: ddcolor_person
hotspot:
  - param: origin
    threshold: 1
    window: 60s
ban: {blocks: 3, within: 10s, for: 1m}
`, engine.Options{Clock: clock})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.66", Size: 512}
	toks, refs := burst(t, e, 4, call) // 1 admitted, 3 refused: the third earns the ban
	defer exitAll(toks)
	for i, r := range refs {
		if r.Kind != engine.KindHotspot {
			t.Fatalf("refusal %d kind %s, want hotspot", i, r.Kind)
		}
	}
	_, refs = burst(t, e, 1, call)
	if len(refs) != 1 || refs[0].Kind != engine.KindBan || refs[0].RetryAfter != time.Minute || refs[0].Value != "192.0.2.66" {
		t.Fatalf("after 3 refusals: %+v, want a 1m ban", refs)
	}
	// Another origin is not banned.
	other, _ := burst(t, e, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.67"})
	defer exitAll(other)
	if len(other) != 1 {
		t.Fatal("the ban caught an innocent origin")
	}
	clock.Advance(59 * time.Second)
	if _, refs = burst(t, e, 1, call); refs[0].Kind != engine.KindBan || refs[0].RetryAfter != time.Second {
		t.Fatalf("59s in: %+v, want ban with 1s left", refs[0])
	}
	clock.Advance(time.Second)
	if _, refs = burst(t, e, 1, call); refs[0].Kind != engine.KindHotspot {
		t.Fatalf("after the ban: refused by %s, want the hotspot rule again", refs[0].Kind)
	}
}

func TestBanNeedsRefusalsWithinWindow(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
ban: {blocks: 3, within: 10s, for: 1m}
`, engine.Options{Clock: clock})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.66"}
	toks, _ := burst(t, e, 3, call) // 1 admitted, 2 refusals
	defer exitAll(toks)
	clock.Advance(10 * time.Second) // those two leave the window
	_, refs := burst(t, e, 2, call)
	if refs[1].Kind != engine.KindHotspot {
		t.Fatalf("refusals spread over more than the window banned: %+v", refs[1])
	}
}

func TestCPURule(t *testing.T) {
	cpu := &fakeCPU{usage: 0.97}
	e := newEngine(t, "system: {cpu_usage: 0.9}\n", engine.Options{CPU: cpu})
	_, refs := burst(t, e, 1, engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"})
	if len(refs) != 1 || refs[0].Kind != engine.KindCPU || refs[0].Threshold != 0.9 || !refs[0].Overload() {
		t.Fatalf("at 97%% CPU: %+v, want a cpu refusal", refs)
	}
	cpu.set(0.5)
	e.SampleCPU()
	toks, _ := burst(t, e, 1, engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"})
	defer exitAll(toks)
	if len(toks) != 1 {
		t.Fatal("at 50% CPU the call was refused")
	}
}

func TestConcurrencyAndExit(t *testing.T) {
	e := newEngine(t, "resource: zimage_generate\nconcurrency: 2\n", engine.Options{})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	toks, refs := burst(t, e, 3, call)
	if len(toks) != 2 || refs[0].Kind != engine.KindConcurrency || !refs[0].Overload() {
		t.Fatalf("admitted %d, refusal %+v", len(toks), refs)
	}
	toks[0].Exit(errors.New("comfyui: out of memory"))
	toks[0].Exit(nil) // a second Exit does nothing
	more, _ := burst(t, e, 1, call)
	if len(more) != 1 {
		t.Fatal("a slot freed by Exit was not reused")
	}
	toks[1].Exit(nil)
	more[0].Exit(nil)
	s := e.Stats()[2]
	if s.Resource != "zimage_generate" || s.Passed != 3 || s.Completed != 3 || s.Failed != 1 || s.Refused[engine.KindConcurrency] != 1 || s.InFlight != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if s.RefusedPerSec[engine.KindConcurrency] != 1 || s.FailedPerSec != 1 {
		t.Errorf("per-second figures: refused %v, failed %v", s.RefusedPerSec, s.FailedPerSec)
	}
}

func TestApplyChangesEnforcement(t *testing.T) {
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1}]\n", engine.Options{})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	toks, _ := burst(t, e, 3, call)
	if len(toks) != 1 {
		t.Fatalf("admitted %d, want 1", len(toks))
	}
	if err := e.Apply(mustSet(t, "resource: ddcolor_person\nflow: [{threshold: 5}]\n")); err != nil {
		t.Fatal(err)
	}
	more, _ := burst(t, e, 10, call)
	defer exitAll(append(toks, more...))
	if len(more) != 4 {
		t.Fatalf("after raising the threshold to 5, admitted %d more, want 4", len(more))
	}
	if got := e.Rules().Resources["ddcolor_person"].Flow[0].Threshold; got != 5 {
		t.Errorf("Rules() threshold %v", got)
	}
}

func TestUnknownResource(t *testing.T) {
	e := newEngine(t, "system: {load: 100}\n", engine.Options{})
	if _, err := e.Guard(context.Background(), engine.Call{Resource: "nope"}); !errors.Is(err, engine.ErrUnknownResource) {
		t.Fatalf("err = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Guard(ctx, engine.Call{Resource: "ddcolor_person"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestCapacityRefusalsEarnNoBan(t *testing.T) {
	e := newEngine(t, "resource: zimage_generate\nconcurrency: 1\nban: {blocks: 2, within: 10s, for: 1m}\n", engine.Options{})
	call := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.9"}
	held, refs := burst(t, e, 4, call)
	if len(held) != 1 || len(refs) != 3 || refs[2].Kind != engine.KindConcurrency {
		t.Fatalf("admitted %d, refusals %+v; want 1 and 3 concurrency refusals", len(held), refs)
	}
	exitAll(held)
	if toks, refs := burst(t, e, 1, call); len(toks) != 1 {
		t.Fatalf("refusals for capacity banned the client: %+v", refs)
	} else {
		exitAll(toks)
	}
}

// engineSeq gives every engine of the test binary its own sentinel-golang
// namespace, so windows of earlier tests (or earlier -count runs) do not
// leak into later ones.
var engineSeq atomic.Int64

func TestPrecheckRefusesBannedOrigins(t *testing.T) {
	clock := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
ban: {blocks: 2, within: 10s, for: 1m}
`, engine.Options{Clock: clock})
	call := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.66"}
	if r := e.Precheck(call); r != nil {
		t.Fatalf("not banned yet: %+v", r)
	}
	toks, _ := burst(t, e, 3, call) // 1 admitted, 2 refusals: banned
	exitAll(toks)
	r := e.Precheck(call)
	if r == nil || r.Kind != engine.KindBan || r.RetryAfter != time.Minute || r.Value != "192.0.2.66" {
		t.Fatalf("banned origin: %+v", r)
	}
	if e.Precheck(engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.67"}) != nil {
		t.Fatal("another origin refused")
	}
	if got := e.Stats()[0].Refused[engine.KindBan]; got != 1 {
		t.Fatalf("ban refusals counted %d, want 1", got)
	}
}
