package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// nat is an address shared by an abuser and paying tenants.
const nat = "198.51.100.20"

func TestIdentifiedTenantIsNotLimitedByItsOrigin(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
`, engine.Options{})
	anon := engine.Call{Resource: "ddcolor_person", Origin: nat}
	toks, refs := burst(t, e, 2, anon)
	defer exitAll(toks)
	if len(refs) != 1 || refs[0].Kind != engine.KindHotspot || refs[0].Param != "origin" {
		t.Fatalf("anonymous caller: %d refused (%+v), want the origin hotspot to refuse the second call", len(refs), refs)
	}
	acme := engine.Call{Resource: "ddcolor_person", Origin: nat, Tenant: "acme", Tier: "registered"}
	toks, refs = burst(t, e, 5, acme)
	defer exitAll(toks)
	if len(refs) != 0 {
		t.Fatalf("a tenant behind the limited address was refused: %+v", refs[0])
	}
}

// An anonymous tenant.Identity names its origin as its tenant: such a call
// is anonymous.
func TestTenantEqualToOriginIsAnonymous(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}, {param: tenant, threshold: 100, window: 60s}]
`, engine.Options{})
	toks, refs := burst(t, e, 2, engine.Call{Resource: "ddcolor_person", Origin: nat, Tenant: nat, Tier: "anonymous"})
	defer exitAll(toks)
	if len(refs) != 1 || refs[0].Param != "origin" || refs[0].Tenant != "" || refs[0].Tier != "anonymous" {
		t.Fatalf("refusals %+v, want the origin rule to refuse the second call", refs)
	}
}

func TestAnonymousCallerIsNotLimitedByTenantRules(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: tenant, threshold: 1, window: 60s}]
`, engine.Options{})
	toks, refs := burst(t, e, 5, engine.Call{Resource: "ddcolor_person", Origin: nat})
	defer exitAll(toks)
	if len(refs) != 0 {
		t.Fatalf("an anonymous caller was refused by the tenant rule: %+v", refs[0])
	}
	toks, refs = burst(t, e, 2, engine.Call{Resource: "ddcolor_person", Origin: nat, Tenant: "acme", Tier: "registered"})
	defer exitAll(toks)
	if len(refs) != 1 {
		t.Fatalf("tenant acme: %d of 2 refused, want 1", len(refs))
	}
	r := refs[0]
	if r.Kind != engine.KindHotspot || r.Param != "tenant" || r.Value != "acme" || r.Rule != "ddcolor_person/hotspot[0]" ||
		r.Threshold != 1 || r.Window != time.Minute || r.Tenant != "acme" || r.Tier != "registered" {
		t.Fatalf("refusal = %+v, want the tenant hotspot naming acme", r)
	}
}

func TestTenantItemsOverride(t *testing.T) {
	e := newEngine(t, `resource: zimage_generate
hotspot: [{param: tenant, threshold: 1, window: 60s, items: {"acme": 3}}]
`, engine.Options{})
	acme, refs := burst(t, e, 5, engine.Call{Resource: "zimage_generate", Origin: nat, Tenant: "acme", Tier: "vip"})
	defer exitAll(acme)
	if len(acme) != 3 || refs[0].Threshold != 3 {
		t.Fatalf("acme admitted %d of 5 (refusal %+v), want its item's 3", len(acme), refs[0])
	}
	globex, _ := burst(t, e, 5, engine.Call{Resource: "zimage_generate", Origin: nat, Tenant: "globex", Tier: "vip"})
	defer exitAll(globex)
	if len(globex) != 1 {
		t.Fatalf("globex admitted %d of 5, want the threshold's 1", len(globex))
	}
}

const banRules = `resource: ddcolor_person
hotspot:
  - {param: origin, threshold: 1, window: 60s}
  - {param: tenant, threshold: 1, window: 60s}
ban: {blocks: 2, within: 10s, for: 1m}
`

func TestBanCountsTheOriginOfAnonymousCalls(t *testing.T) {
	e := newEngine(t, banRules, engine.Options{})
	anon := engine.Call{Resource: "ddcolor_person", Origin: nat}
	toks, _ := burst(t, e, 3, anon) // 1 admitted, 2 refused: banned
	defer exitAll(toks)
	r := e.Precheck(anon)
	if r == nil || r.Kind != engine.KindBan || r.Param != "origin" || r.Value != nat {
		t.Fatalf("after flooding anonymously: %+v, want the origin banned", r)
	}
	acme := engine.Call{Resource: "ddcolor_person", Origin: nat, Tenant: "acme", Tier: "registered"}
	if r := e.Precheck(acme); r != nil {
		t.Fatalf("a tenant behind the banned address is banned: %+v", r)
	}
	toks, refs := burst(t, e, 1, acme)
	defer exitAll(toks)
	if len(refs) != 0 {
		t.Fatalf("a tenant behind the banned address was refused: %+v", refs[0])
	}
	if n := e.Unban("ddcolor_person", nat); n != 1 {
		t.Fatalf("Unban(origin) lifted %d bans, want 1", n)
	}
	if r := e.Precheck(anon); r != nil {
		t.Fatalf("after Unban the origin is still banned: %+v", r)
	}
}

func TestBanCountsTheTenantOfIdentifiedCalls(t *testing.T) {
	e := newEngine(t, banRules, engine.Options{})
	// Each call of the abused key comes from another address: the ban
	// must follow the tenant.
	var toks []*engine.Token
	for i, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		got, _ := burst(t, e, 1, engine.Call{Resource: "ddcolor_person", Origin: ip, Tenant: "globex", Tier: "registered"})
		toks = append(toks, got...)
		if i == 0 && len(got) != 1 {
			t.Fatal("the tenant's first call was refused")
		}
	}
	defer exitAll(toks)
	_, refs := burst(t, e, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.4", Tenant: "globex", Tier: "registered"})
	if len(refs) != 1 || refs[0].Kind != engine.KindBan || refs[0].Param != "tenant" || refs[0].Value != "globex" || refs[0].RetryAfter != time.Minute {
		t.Fatalf("after flooding as tenant globex: %+v, want globex banned for 1m", refs)
	}
	anon, refs := burst(t, e, 1, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"})
	defer exitAll(anon)
	if len(refs) != 0 {
		t.Fatalf("an anonymous call from the tenant's address was refused: %+v", refs[0])
	}
	if r := e.Precheck(engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.9", Tenant: "globex", Tier: "registered"}); r == nil || r.Kind != engine.KindBan {
		t.Fatalf("Precheck of the banned tenant from a new address: %+v, want the ban", r)
	}
	if n := e.Unban("", "globex"); n != 1 {
		t.Fatalf("Unban(tenant) lifted %d bans, want 1", n)
	}
	if r := e.Precheck(engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.9", Tenant: "globex", Tier: "registered"}); r != nil {
		t.Fatalf("after Unban the tenant is still banned: %+v", r)
	}
}

func TestStrikeCountsTheTenant(t *testing.T) {
	e := newEngine(t, "resource: zimage_generate\nban: {blocks: 2, within: 10s, for: 1m}\n", engine.Options{})
	call := engine.Call{Resource: "zimage_generate", Origin: nat, Tenant: "acme", Tier: "registered"}
	e.Strike(call)
	if !e.Strike(call) {
		t.Fatal("two strikes of the tenant did not ban it")
	}
	if r := e.Precheck(engine.Call{Resource: "zimage_generate", Origin: nat}); r != nil {
		t.Fatalf("the tenant's strikes banned its address: %+v", r)
	}
}

func TestTierRateRefusesOverTheThreshold(t *testing.T) {
	clk := clock.NewFake(t0)
	e := newEngine(t, "resource: zimage_generate\nconcurrency: 100\n", engine.Options{Clock: clk})
	if err := e.SetTierRates(map[string]rules.TierRate{
		"registered": {Threshold: 2, Window: rules.Duration(10 * time.Second)},
		"anonymous":  {Threshold: 1, Window: rules.Duration(time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	acme := engine.Call{Resource: "zimage_generate", Origin: nat, Tenant: "acme", Tier: "registered"}
	toks, refs := burst(t, e, 3, acme)
	defer exitAll(toks)
	if len(toks) != 2 || len(refs) != 1 {
		t.Fatalf("acme admitted %d of 3, want the rate's 2", len(toks))
	}
	r := refs[0]
	if r.Kind != engine.KindTierRate || r.Rule != "tiers/registered/rate" || r.Param != "tenant" || r.Value != "acme" ||
		r.Threshold != 2 || r.Window != 10*time.Second || r.Overload() || r.Tier != "registered" {
		t.Fatalf("refusal = %+v, want registered's tier rate naming acme", r)
	}
	// The bucket refills only more than a window after its last refill.
	if r.RetryAfter != 10*time.Second+time.Millisecond {
		t.Fatalf("RetryAfter = %s, want 10.001s", r.RetryAfter)
	}
	if !strings.Contains(r.Error(), "tier_rate rule tiers/registered/rate") {
		t.Fatalf("Error() = %q", r.Error())
	}
	// A rule update keeps the tier rates and their buckets.
	if err := e.Apply(mustSet(t, "resource: zimage_generate\nconcurrency: 99\n")); err != nil {
		t.Fatal(err)
	}
	if _, refs := burst(t, e, 1, acme); len(refs) != 1 || refs[0].Kind != engine.KindTierRate {
		t.Fatalf("after Apply acme's spent tier rate admits again: %+v", refs)
	}
	// Each tenant has its own bucket; a tier without a rate is not limited.
	other, _ := burst(t, e, 3, engine.Call{Resource: "zimage_generate", Origin: nat, Tenant: "globex", Tier: "registered"})
	vip, _ := burst(t, e, 5, engine.Call{Resource: "zimage_generate", Origin: nat, Tenant: "initech", Tier: "vip"})
	defer exitAll(append(other, vip...))
	if len(other) != 2 || len(vip) != 5 {
		t.Fatalf("globex (registered) admitted %d of 3 (want 2), initech (vip, no rate) %d of 5 (want 5)", len(other), len(vip))
	}
	// The anonymous tier's rate counts each origin.
	anon, refs := burst(t, e, 2, engine.Call{Resource: "zimage_generate", Origin: nat})
	defer exitAll(anon)
	if len(anon) != 1 || refs[0].Kind != engine.KindTierRate || refs[0].Param != "origin" || refs[0].Value != nat || refs[0].Tier != "anonymous" {
		t.Fatalf("anonymous: %d admitted, refusals %+v; want 1 and the anonymous tier's rate", len(anon), refs)
	}
	clk.Advance(r.RetryAfter - time.Millisecond)
	if _, refs := burst(t, e, 1, acme); len(refs) != 1 {
		t.Fatal("acme admitted before its Retry-After")
	}
	clk.Advance(time.Millisecond)
	toks, _ = burst(t, e, 1, acme)
	defer exitAll(toks)
	if len(toks) != 1 {
		t.Fatal("acme refused after waiting its Retry-After")
	}
	if err := e.SetTierRates(nil); err != nil {
		t.Fatal(err)
	}
	toks, refs = burst(t, e, 5, acme)
	defer exitAll(toks)
	if len(refs) != 0 {
		t.Fatalf("without tier rates acme was refused: %+v", refs[0])
	}
}

func TestTierRateRefusalRefundsTheHotspot(t *testing.T) {
	e := newEngine(t, "resource: zimage_generate\nhotspot: [{param: tenant, threshold: 2, window: 60s}]\n", engine.Options{})
	if err := e.SetTierRates(map[string]rules.TierRate{"registered": {Threshold: 1, Window: rules.Duration(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	toks, _ := burst(t, e, 3, engine.Call{Resource: "zimage_generate", Tenant: "acme", Tier: "registered"})
	defer exitAll(toks)
	// The tier rate refused acme's later calls: they spent nothing of its
	// hotspot bucket, which still admits one call of another tier.
	more, refs := burst(t, e, 1, engine.Call{Resource: "zimage_generate", Tenant: "acme", Tier: "vip"})
	defer exitAll(more)
	if len(toks) != 1 || len(more) != 1 {
		t.Fatalf("admitted %d then %d (refusal %+v), want 1 then 1", len(toks), len(more), refs)
	}
}

func TestSetTierRatesKeepsTheRulesState(t *testing.T) {
	clk := clock.NewFake(t0)
	e := newEngine(t, `resource: ddcolor_building
flow:
  - threshold: 30
    warm_up: {period: 10s, cold_factor: 3}
---
resource: ddcolor_person
hotspot: [{param: origin, threshold: 1, window: 60s}]
`, engine.Options{Clock: clk})
	building := engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1"}
	perSecond := func() int {
		clk.Advance(time.Second)
		toks, _ := burst(t, e, 30, building)
		exitAll(toks)
		return len(toks)
	}
	if cold := perSecond(); cold > 12 {
		t.Fatalf("cold warm-up rule admitted %d of 30, want about 10", cold)
	}
	for range 40 {
		perSecond()
	}
	if warm := perSecond(); warm < 28 {
		t.Fatalf("after 40 s of traffic the warm-up rule admits %d of 30: not warm (test set-up)", warm)
	}
	person := engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.1"}
	toks, _ := burst(t, e, 1, person) // spends the origin's bucket
	defer exitAll(toks)
	acme := engine.Call{Resource: "zimage_generate", Tenant: "acme", Tier: "registered"}

	if err := e.SetTierRates(map[string]rules.TierRate{"registered": {Threshold: 1000, Window: rules.Duration(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if warm := perSecond(); warm < 28 {
		t.Fatalf("after SetTierRates the warm-up rule admits %d of 30: it started cold again", warm)
	}
	if _, refs := burst(t, e, 1, person); len(refs) != 1 || refs[0].Kind != engine.KindHotspot {
		t.Fatalf("after SetTierRates the origin's spent hotspot bucket admits again: %+v", refs)
	}
	// Changing a rate's threshold keeps its callers' buckets: lowered,
	// a bucket holds no more than the new threshold; raised, a spent one
	// stays spent until its refill.
	toks, _ = burst(t, e, 2, acme)
	defer exitAll(toks)
	setRate := func(n int64) {
		t.Helper()
		if err := e.SetTierRates(map[string]rules.TierRate{"registered": {Threshold: n, Window: rules.Duration(time.Minute)}}); err != nil {
			t.Fatal(err)
		}
	}
	setRate(1)
	more, refs := burst(t, e, 3, acme)
	defer exitAll(more)
	if len(more) != 1 || refs[0].Kind != engine.KindTierRate {
		t.Fatalf("after lowering the rate to 1, acme was admitted %d more of 3, want 1", len(more))
	}
	setRate(5)
	if more, _ := burst(t, e, 1, acme); len(more) != 0 {
		exitAll(more)
		t.Fatal("raising the rate refilled acme's spent bucket")
	}
	if got := e.TierRates()["registered"].Threshold; got != 5 {
		t.Fatalf("TierRates()[registered].Threshold = %d, want 5", got)
	}
}

func TestSetTierRatesRefusesBadRates(t *testing.T) {
	e := newEngine(t, "", engine.Options{})
	good := rules.TierRate{Threshold: 2, Window: rules.Duration(time.Second)}
	if err := e.SetTierRates(map[string]rules.TierRate{"registered": good}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rates map[string]rules.TierRate
		want  string
	}{
		{map[string]rules.TierRate{"vip": {Threshold: 0, Window: rules.Duration(time.Second)}}, `tier rates: tier "vip": rate.threshold: must be > 0, got 0`},
		{map[string]rules.TierRate{"vip": {Threshold: 2, Window: rules.Duration(1500 * time.Millisecond)}}, `tier rates: tier "vip": rate.window: must be whole seconds between 1s and 24h, got 1.5s`},
		{map[string]rules.TierRate{"vip": {Threshold: 2}}, `tier rates: tier "vip": rate.window: must be whole seconds between 1s and 24h, got 0s`},
		{map[string]rules.TierRate{"": good}, `tier rates: a tier without a name`},
	} {
		if err := e.SetTierRates(tc.rates); err == nil || err.Error() != tc.want {
			t.Errorf("SetTierRates(%v) = %v, want %s", tc.rates, err, tc.want)
		}
	}
	if got := e.TierRates(); len(got) != 1 || got["registered"] != good {
		t.Fatalf("after refused updates the rates are %v, want the last good ones", got)
	}
}

func TestBlockedAndStatsCarryTheTier(t *testing.T) {
	e := newEngine(t, `resource: ddcolor_person
hotspot: [{param: tenant, threshold: 1, window: 60s}, {param: origin, threshold: 1, window: 60s}]
`, engine.Options{})
	toks, _ := burst(t, e, 2, engine.Call{Resource: "ddcolor_person", Origin: nat, Tenant: "acme", Tier: "registered", Size: 512})
	defer exitAll(toks)
	anon, _ := burst(t, e, 2, engine.Call{Resource: "ddcolor_person", Origin: nat})
	defer exitAll(anon)
	got := e.Blocked(0)
	if len(got) != 2 {
		t.Fatalf("Blocked = %+v, want 2 refusals", got)
	}
	if b := got[1]; b.Tenant != "acme" || b.Tier != "registered" || b.Origin != nat || b.Value != "acme" {
		t.Fatalf("the tenant's refusal is recorded as %+v", b)
	}
	if b := got[0]; b.Tenant != "" || b.Tier != "anonymous" || b.Origin != nat {
		t.Fatalf("the anonymous refusal is recorded as %+v", b)
	}
	st := e.Stats()[0]
	reg, an := st.Tiers["registered"], st.Tiers["anonymous"]
	if reg.Passed != 1 || reg.Refused[engine.KindHotspot] != 1 || an.Passed != 1 || an.Refused[engine.KindHotspot] != 1 {
		t.Fatalf("tiers = %+v, want 1 admitted and 1 refused in each", st.Tiers)
	}
	if _, ok := e.Stats()[1].Tiers["anonymous"]; !ok {
		t.Fatal("a resource without calls has no anonymous tier's counters")
	}
}

func TestSetTierRatesDuringGuards(t *testing.T) {
	e := newEngine(t, "resource: zimage_generate\nhotspot: [{param: tenant, threshold: 1000000, window: 1s}]\n", engine.Options{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		wg.Go(func() {
			call := engine.Call{Resource: "zimage_generate", Tenant: fmt.Sprint("t", i), Tier: []string{"registered", "vip"}[i%2]}
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := e.Guard(context.Background(), call)
				var ref *engine.Refusal
				if err != nil && !errors.As(err, &ref) {
					t.Errorf("Guard: %v", err)
					return
				}
				tok.Exit(nil)
			}
		})
	}
	for i := range 200 {
		rates := map[string]rules.TierRate{"registered": {Threshold: int64(1 + i%3), Window: rules.Duration(time.Second)}}
		if i%2 == 0 {
			rates["vip"] = rules.TierRate{Threshold: 5, Window: rules.Duration(time.Duration(1+i%2) * time.Second)}
		}
		if err := e.SetTierRates(rates); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}
