package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/alibaba/sentinel-golang/api"
	"github.com/alibaba/sentinel-golang/core/base"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// The benchmarks put Guard+Exit beside bare sentinel-golang Entry+Exit on
// the same rules, in the same process, so the engine's overhead is read off
// directly:
//
//	go test ./engine -run '^$' -bench . -benchmem

const (
	passRules   = "resource: ddcolor_person\nflow: [{threshold: 1000000000}]\n"
	refuseRules = "resource: ddcolor_person\nflow: [{threshold: 1}]\n"
	fullRules   = `resource: ddcolor_person
flow: [{threshold: 1000000000}]
hotspot:
  - {param: origin, threshold: 1000000000, window: 1s, items: {"203.0.113.7": 1000000000}}
  - {param: size, threshold: 1000000000, window: 1s}
  - {param: tenant, threshold: 1000000000, window: 1s, items: {"acme": 1000000000}}
concurrency: 1000000
ban: {blocks: 100, within: 10s, for: 1m}
---
system: {concurrency: 1000000, cpu_usage: 1}
`
)

func benchGuard(b *testing.B, src string, wantPass bool) {
	benchGuardCall(b, src, engine.Call{Resource: "ddcolor_person", Origin: "198.51.100.4", Size: 512}, wantPass)
}

func benchGuardCall(b *testing.B, src string, call engine.Call, wantPass bool) {
	e := newEngine(b, src, engine.Options{Namespace: b.Name() + "/", Clock: clock.System{}})
	if call.Tenant != "" {
		if err := e.SetTierRates(map[string]rules.TierRate{call.Tier: {Threshold: 1_000_000_000, Window: rules.Duration(time.Second)}}); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	if tok, err := e.Guard(ctx, call); err == nil {
		tok.Exit(nil) // spend the window's one admission of refuseRules
	}
	passed := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		tok, err := e.Guard(ctx, call)
		if err == nil {
			passed++
		}
		tok.Exit(nil)
	}
	checkOutcome(b, passed, wantPass)
}

// checkOutcome fails a benchmark that measured the wrong path. A refusing
// benchmark admits one call per window, so it may pass a few.
func checkOutcome(b *testing.B, passed int, wantPass bool) {
	if wantPass && passed != b.N {
		b.Fatalf("%d of %d calls refused on the pass path", b.N-passed, b.N)
	}
	if !wantPass && passed > b.N/100+10 {
		b.Fatalf("%d of %d calls passed on the refuse path", passed, b.N)
	}
}

func BenchmarkPass(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchBareNamed(b, passRules, true) })
	b.Run("guard", func(b *testing.B) { benchGuard(b, passRules, true) })
}

func BenchmarkRefuse(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchBareNamed(b, refuseRules, false) })
	b.Run("guard", func(b *testing.B) { benchGuard(b, refuseRules, false) })
}

// BenchmarkPassAllRules has every rule kind on the resource: hotspot on
// origin, size and tenant, concurrency, ban, system and CPU. guard is an
// anonymous call; tenant an identified one whose tier has a rate.
func BenchmarkPassAllRules(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchBareArgs(b, fullRules) })
	b.Run("guard", func(b *testing.B) { benchGuard(b, fullRules, true) })
	b.Run("tenant", func(b *testing.B) {
		benchGuardCall(b, fullRules, engine.Call{Resource: "ddcolor_person", Origin: "198.51.100.4", Tenant: "acme", Tier: "registered", Size: 512}, true)
	})
}

func benchBareNamed(b *testing.B, src string, wantPass bool) {
	newEngine(b, src, engine.Options{Namespace: b.Name() + "/", Clock: clock.System{}})
	name := b.Name() + "/ddcolor_person"
	if entry, blocked := api.Entry(name, api.WithTrafficType(base.Inbound)); blocked == nil {
		entry.Exit()
	}
	passed := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		entry, blocked := api.Entry(name, api.WithTrafficType(base.Inbound))
		if blocked == nil {
			passed++
			entry.Exit()
		}
	}
	checkOutcome(b, passed, wantPass)
}

func benchBareArgs(b *testing.B, src string) {
	newEngine(b, src, engine.Options{Namespace: b.Name() + "/", Clock: clock.System{}})
	name := b.Name() + "/ddcolor_person"
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		entry, blocked := api.Entry(name, api.WithTrafficType(base.Inbound), api.WithArgs("198.51.100.4", "512"))
		if blocked != nil {
			b.Fatalf("blocked: %v", blocked)
		}
		entry.Exit()
	}
}

// shadowRules are fullRules with a shadow twin of each resource rule and
// the system rules in shadow: every call is checked twice, the second time
// only counted.
const shadowRules = `resource: ddcolor_person
flow: [{threshold: 1000000000}, {threshold: 1000000000, mode: shadow}]
hotspot:
  - {param: origin, threshold: 1000000000, window: 1s}
  - {param: origin, threshold: 1000000000, window: 1s, mode: shadow}
  - {param: size, threshold: 1000000000, window: 1s, mode: shadow}
concurrency: {limit: 1000000, mode: shadow}
ban: {blocks: 100, within: 10s, for: 1m, mode: shadow}
---
system: {mode: shadow, concurrency: 1000000, cpu_usage: 1}
`

// shadowRefuseRules is a shadow flow rule that would refuse every call.
const shadowRefuseRules = "resource: ddcolor_person\nflow: [{threshold: 1, mode: shadow}]\n"

// BenchmarkShadow measures a resource with shadow rules: passing them
// (every rule kind), and one that would refuse each call (counted, logged
// to a discarding logger and listed).
func BenchmarkShadow(b *testing.B) {
	b.Run("pass", func(b *testing.B) { benchGuard(b, shadowRules, true) })
	b.Run("would-refuse", func(b *testing.B) { benchGuard(b, shadowRefuseRules, true) })
}
