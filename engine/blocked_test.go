package engine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
)

const blockedRules = `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
ban: {blocks: 2, within: 10s, for: 1m}
`

func TestBlockedRecordsRefusals(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	clock := clock.NewFake(t0)
	e := newEngine(t, blockedRules, engine.Options{Clock: clock})
	if got := e.Blocked(10); got == nil || len(got) != 0 {
		t.Fatalf("before any refusal: %#v, want an empty slice", got)
	}

	a := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1", Size: 512}
	b := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.2", Size: 1280}
	toks, _ := burst(t, e, 1, a) // admitted
	defer exitAll(toks)
	clock.Advance(time.Second)
	burst(t, e, 1, a) // refused by the hotspot rule
	clock.Advance(time.Second)
	toks, _ = burst(t, e, 1, b) // admitted
	defer exitAll(toks)
	burst(t, e, 1, b) // refused by the hotspot rule
	clock.Advance(time.Second)
	burst(t, e, 1, a) // refused by the hotspot rule: a's second, which bans it
	clock.Advance(time.Second)
	burst(t, e, 1, a) // refused by the ban

	want := []engine.Blocked{
		{Time: t0.Add(4 * time.Second), Origin: "192.0.2.1", Tier: "anonymous", Resource: "ddcolor_person", Size: 512, Rule: "ddcolor_person/ban", Kind: engine.KindBan, Value: "192.0.2.1"},
		{Time: t0.Add(3 * time.Second), Origin: "192.0.2.1", Tier: "anonymous", Resource: "ddcolor_person", Size: 512, Rule: "ddcolor_person/hotspot[0]", Kind: engine.KindHotspot, Value: "192.0.2.1"},
		{Time: t0.Add(2 * time.Second), Origin: "192.0.2.2", Tier: "anonymous", Resource: "ddcolor_person", Size: 1280, Rule: "ddcolor_person/hotspot[0]", Kind: engine.KindHotspot, Value: "192.0.2.2"},
		{Time: t0.Add(1 * time.Second), Origin: "192.0.2.1", Tier: "anonymous", Resource: "ddcolor_person", Size: 512, Rule: "ddcolor_person/hotspot[0]", Kind: engine.KindHotspot, Value: "192.0.2.1"},
	}
	for _, tc := range []struct {
		name  string
		limit int
		want  []engine.Blocked
	}{
		{"all held", 0, want},
		{"negative is all", -1, want},
		{"newest two", 2, want[:2]},
		{"newest one", 1, want[:1]},
		{"more than held", 100, want},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := e.Blocked(tc.limit)
			if len(got) != len(tc.want) {
				t.Fatalf("Blocked(%d) has %d entries, want %d: %+v", tc.limit, len(got), len(tc.want), got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("Blocked(%d)[%d] = %+v\nwant %+v", tc.limit, i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestBlockedWrapsAround(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int // Options.BlockedLog
		refusals int
		wantHeld int
	}{
		{"below capacity", 4, 3, 3},
		{"exactly capacity", 4, 4, 4},
		{"wrapped once", 4, 6, 4},
		{"wrapped many times", 4, 23, 4},
		{"default capacity", 0, engine.DefaultBlockedLog + 10, engine.DefaultBlockedLog},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
			clock := clock.NewFake(t0)
			e := newEngine(t, "resource: zimage_generate\nflow: [{threshold: 1, window: 10s}]\n", engine.Options{Clock: clock, BlockedLog: tc.capacity})
			toks, _ := burst(t, e, 1, engine.Call{Resource: "zimage_generate"})
			defer exitAll(toks)
			for i := range tc.refusals {
				clock.Advance(time.Millisecond) // all within the flow window
				if _, refs := burst(t, e, 1, engine.Call{Resource: "zimage_generate", Origin: fmt.Sprint("192.0.2.", i%250), Size: i}); len(refs) != 1 {
					t.Fatalf("call %d admitted", i)
				}
			}
			got := e.Blocked(0)
			if len(got) != tc.wantHeld {
				t.Fatalf("held %d, want %d", len(got), tc.wantHeld)
			}
			for j, b := range got {
				i := tc.refusals - 1 - j // the refusal this entry must be
				if b.Size != i || b.Time != t0.Add(time.Duration(i+1)*time.Millisecond) || b.Kind != engine.KindFlow || b.Rule != "zimage_generate/flow[0]" {
					t.Fatalf("entry %d = %+v, want refusal %d", j, b, i)
				}
			}
		})
	}
}

// TestBlockedConcurrent is for the race detector: refusals recorded while
// the log is read.
func TestBlockedConcurrent(t *testing.T) {
	e := newEngine(t, "resource: ddcolor_person\nflow: [{threshold: 1, window: 10s}]\n", engine.Options{BlockedLog: 16})
	toks, _ := burst(t, e, 1, engine.Call{Resource: "ddcolor_person"})
	defer exitAll(toks)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for range 200 {
				e.Guard(context.Background(), engine.Call{Resource: "ddcolor_person", Origin: fmt.Sprint("192.0.2.", w)})
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			if n := len(e.Blocked(8)); n > 8 {
				t.Errorf("Blocked(8) returned %d", n)
			}
		}
	})
	wg.Wait()
	if n := len(e.Blocked(0)); n != 16 {
		t.Fatalf("held %d after 800 refusals, want 16", n)
	}
}
