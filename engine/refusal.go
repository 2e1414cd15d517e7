package engine

import (
	"strconv"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/hotspot"
	"github.com/alibaba/sentinel-golang/core/system"

	"github.com/sluicehq/sluice/rules"
)

// Kind names the kind of rule that refused a call.
type Kind string

// The kinds of rule that refuse.
const (
	KindFlow        Kind = "flow"
	KindHotspot     Kind = "hotspot"
	KindConcurrency Kind = "concurrency"
	KindSystem      Kind = "system"
	KindCPU         Kind = "cpu"
	KindBan         Kind = "ban"
	KindGPU         Kind = "gpu"
	// KindTierRate is the caller's tier's per-caller rate (SetTierRates).
	KindTierRate Kind = "tier_rate"
)

// Kinds lists every kind, in a stable order. It is a copy: changing it
// changes nothing in the engine.
var Kinds = append([]Kind(nil), kindIndex[:]...)

// Refusal is the error Guard returns when a rule refuses a call.
type Refusal struct {
	Resource string
	Kind     Kind
	// Rule identifies the rule: "ddcolor_person/flow[0]", "system/avg_rt".
	Rule string
	// Param and Value name the hot value of a hotspot refusal ("origin",
	// "203.0.113.9"; "tenant", "acme"), or the banned or rate-limited
	// caller: the tenant of an identified call, the origin of an anonymous
	// one.
	Param, Value string
	// Tenant and Tier are the call's (Tenant empty for an anonymous call,
	// whose Tier is tenant.AnonymousTier unless the call named one).
	Tenant, Tier string
	// Threshold is the limit that was reached, in the rule's unit.
	Threshold float64
	// Window is the span Threshold applies to; 0 for limits that are not
	// per window (concurrency, CPU, load).
	Window time.Duration
	// Tightened names the flow rule whose threshold the GPU rule scaled
	// down (a gpu refusal under action tighten).
	Tightened string
	// RetryAfter estimates when a retry could pass.
	RetryAfter time.Duration
}

func (r *Refusal) Error() string {
	// Built without fmt: refusals are the path a flood takes.
	b := make([]byte, 0, 160)
	b = append(b, r.Resource...)
	b = append(b, " refused by "...)
	b = append(b, r.Kind...)
	b = append(b, " rule "...)
	b = append(b, r.Rule...)
	b = append(b, " (threshold "...)
	b = strconv.AppendFloat(b, r.Threshold, 'g', -1, 64)
	if r.Window > 0 {
		b = append(b, " per "...)
		b = append(b, r.Window.String()...)
	}
	b = append(b, ')')
	if r.Tightened != "" {
		b = append(b, " tightening "...)
		b = append(b, r.Tightened...)
	}
	if r.Param != "" {
		b = append(b, " for "...)
		b = append(b, r.Param...)
		b = append(b, ' ')
		b = append(b, r.Value...)
	}
	b = append(b, "; retry after "...)
	b = append(b, r.RetryAfter.String()...)
	return string(b)
}

// Overload reports whether the refusal is about capacity (system, CPU,
// GPU, concurrency: HTTP 503) rather than the caller's own rate (flow,
// hotspot, tier rate, ban: HTTP 429).
func (r *Refusal) Overload() bool {
	switch r.Kind {
	case KindSystem, KindCPU, KindConcurrency, KindGPU:
		return true
	}
	return false
}

// refusal turns sentinel-golang's block error into a Refusal.
func (e *Engine) refusal(rs *resState, c Call, be *base.BlockError) *Refusal {
	ref := &Refusal{Resource: rs.name}
	switch rule := be.TriggeredRule().(type) {
	case *flow.Rule:
		ref.Kind = KindFlow
		ref.Rule = rule.ID
		ref.Threshold = rule.Threshold
		ref.Window = time.Duration(rule.StatIntervalInMs) * time.Millisecond
		ref.RetryAfter = ref.Window // throttle rules are the engine's own: see paceSlot
	case *hotspot.Rule:
		ref.Kind = KindHotspot
		ref.Rule = rule.ID
		// sentinel-golang's hotspot block carries no value: take it from
		// the arguments Guard passed.
		var arg any
		switch rule.ParamIndex {
		case rules.ArgOrigin:
			ref.Param, arg = rules.ParamOrigin, c.Origin
		case rules.ArgTenant:
			ref.Param, arg = rules.ParamTenant, c.tenant()
		default:
			ref.Param, arg = rules.ParamSize, rs.sizeArg(c.Size)
		}
		ref.Value, _ = arg.(string)
		limit := rule.Threshold
		if n, ok := rule.SpecificItems[arg]; ok {
			limit = n
		}
		ref.Threshold = float64(limit)
		ref.Window = time.Duration(rule.DurationInSec) * time.Second
		// The controller says when the bucket refills enough.
		ref.RetryAfter = ref.Window
		if left, ok := be.TriggeredValue().(time.Duration); ok {
			ref.RetryAfter = left
		}
	case *system.Rule:
		ref.Kind = KindSystem
		ref.Rule = rule.ID
		ref.Threshold = rule.TriggerCount
		if rule.MetricType == system.InboundQPS {
			ref.Window = time.Second
		}
		ref.RetryAfter = avgRT(e.inbound.AvgRT())
	case *ownRule:
		ref.Kind = rule.kind
		ref.Rule = rule.id
		ref.Threshold = rule.threshold
		ref.Window = rule.window
		ref.Tightened = rule.tightened
		ref.RetryAfter = time.Second
		switch rule.kind {
		case KindGPU, KindConcurrency:
			// The pressure eases as jobs finish: retry after about one.
			ref.RetryAfter = max(avgRT(rs.jobs.AvgRT()), rule.window)
		case KindBan, KindTierRate:
			who := c.subject()
			ref.Param, ref.Value = who.param(), who.who
		}
		if left, ok := be.TriggeredValue().(time.Duration); ok {
			ref.RetryAfter = left
		}
	default:
		ref.Kind = KindSystem
		ref.Rule = "unknown"
		ref.RetryAfter = time.Second
	}
	return ref
}

// avgRT is a retry estimate from an average response time in
// milliseconds: one average job, at least a second.
func avgRT(ms float64) time.Duration {
	return max(time.Duration(ms*float64(time.Millisecond)), time.Second)
}
