package engine

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/hotspot"

	"github.com/sluicehq/sluice/rules"
)

// Tier rates are per-caller hotspots the engine checks in its own slot,
// with sentinel-golang's hotspot bucket (the engine's hotspot controller)
// but outside sentinel-golang's process-wide rule manager: loading them
// there would reload every engine's hotspot rules at each change, and
// sentinel-golang hands a changed rule the buckets of any other rule of the
// resource with the same window (IsStatReusable ignores the parameter),
// resetting that rule. Kept apart, SetTierRates touches no rule of the
// rule set: flow windows, warm-up state and hotspot buckets go on.

// tierRateSlotOrder puts the tier rate right after the hotspot rules: the
// caller's own limits before anything shared.
const tierRateSlotOrder = hotspotSlotOrder + 1

// maxTierRateWindow bounds a tier rate's window, as hotspot windows are.
const maxTierRateWindow = 24 * time.Hour

// tierRates is one set of tier rates: per resource (by its index in
// rules.Resources), per tier.
type tierRates struct {
	rates map[string]rules.TierRate
	res   []map[string]*tierRate
}

// tierRate is one tier's rate on one resource.
type tierRate struct {
	ctl  *hotspotController
	rule *ownRule
}

// of returns tier's rate on the resource at idx; nil when it has none.
func (t *tierRates) of(idx int, tier string) *tierRate {
	if t == nil {
		return nil
	}
	return t.res[idx][tier]
}

// SetTierRates installs one per-caller rate per tier: each tenant of the
// tier (each origin, for tenant.AnonymousTier) may make Threshold
// admissions, weighted by cost, per Window on each resource. A call over it
// is refused with KindTierRate and counts toward the caller's ban. The new
// rates replace the old at once; a tier whose rate keeps its window keeps
// its callers' buckets. No rule of the rule set is touched. nil or an
// empty map removes every rate.
func (e *Engine) SetTierRates(rates map[string]rules.TierRate) error {
	for _, tier := range slices.Sorted(maps.Keys(rates)) {
		if err := checkTierRate(tier, rates[tier]); err != nil {
			return fmt.Errorf("tier rates: %w", err)
		}
	}
	e.tierRatesMu.Lock()
	defer e.tierRatesMu.Unlock()
	if len(rates) == 0 {
		e.tierRates.Store(nil)
		return nil
	}
	prev := e.tierRates.Load()
	next := &tierRates{rates: maps.Clone(rates), res: make([]map[string]*tierRate, len(rules.Resources))}
	for i, name := range rules.Resources {
		next.res[i] = make(map[string]*tierRate, len(rates))
		for tier, r := range rates {
			var reuse *hotspot.ParamsMetric
			if old := prev.of(i, tier); old != nil && old.ctl.rule.DurationInSec == int64(time.Duration(r.Window)/time.Second) {
				reuse = old.ctl.metric
			}
			next.res[i][tier] = e.newTierRate(name, tier, r, reuse)
		}
	}
	e.tierRates.Store(next)
	return nil
}

// TierRates returns the tier rates in force (nil when none).
func (e *Engine) TierRates() map[string]rules.TierRate {
	t := e.tierRates.Load()
	if t == nil {
		return nil
	}
	return maps.Clone(t.rates)
}

func checkTierRate(tier string, r rules.TierRate) error {
	switch w := time.Duration(r.Window); {
	case tier == "":
		return fmt.Errorf("a tier without a name")
	case r.Threshold <= 0:
		return fmt.Errorf("tier %q: rate.threshold: must be > 0, got %d", tier, r.Threshold)
	case w < time.Second || w%time.Second != 0 || w > maxTierRateWindow:
		return fmt.Errorf("tier %q: rate.window: must be whole seconds between 1s and 24h, got %s", tier, r.Window)
	}
	return nil
}

func (e *Engine) newTierRate(resource, tier string, r rules.TierRate, reuse *hotspot.ParamsMetric) *tierRate {
	id := "tiers/" + tier + "/rate"
	window := time.Duration(r.Window)
	rule := &hotspot.Rule{
		ID:                id,
		Resource:          e.sentinelName(resource),
		MetricType:        hotspot.QPS,
		ControlBehavior:   hotspotBehavior,
		Threshold:         r.Threshold,
		DurationInSec:     int64(window / time.Second),
		ParamsMaxCapacity: rules.DefaultHotspotCapacity,
	}
	own := &ownRule{id: id, resource: resource, kind: KindTierRate, threshold: float64(r.Threshold), window: window}
	ctl := newHotspotController(rule, reuse).(*hotspotController)
	ctl.cause = own
	return &tierRate{ctl: ctl, rule: own}
}

// tierRateSlot refuses a call over its tier's rate on the resource, per
// tenant (identified calls) or per origin (anonymous calls). Guard runs it
// under the resource's lock; the tokens it takes are given back as the
// hotspot rules' are if a later check refuses the call.
type tierRateSlot struct{}

func (tierRateSlot) Order() uint32 { return tierRateSlotOrder }

func (tierRateSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	tok := tokenOf(ctx)
	if tok == nil || tok.tierRate == nil {
		return nil
	}
	arg := tok.args[rules.ArgOrigin]
	if tok.who.tenant {
		arg = tok.args[rules.ArgTenant]
	}
	if arg == nil {
		return nil
	}
	c := tok.tierRate.ctl
	c.call = tok
	res := c.PerformChecking(arg, int64(ctx.Input.BatchCount))
	c.call = nil
	return res
}
