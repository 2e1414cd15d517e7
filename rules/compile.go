package rules

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/hotspot"
	"github.com/alibaba/sentinel-golang/core/system"
)

// Sentinel is a Set converted to sentinel-golang rules, every field set
// explicitly. Rules that sentinel-golang cannot carry (concurrency in jobs,
// bans, costs, machine CPU) stay in the Set for the engine's own slots.
type Sentinel struct {
	Flow    []*flow.Rule
	Hotspot []*hotspot.Rule
	System  []*system.Rule
}

// Hotspot rules read their parameter from the entry's arguments at these
// positions: the engine passes args[ArgOrigin] (nil for an identified
// caller), args[ArgSize] and args[ArgTenant] (nil for an anonymous
// caller); position 2 is the engine's own.
const (
	ArgOrigin = 0
	ArgSize   = 1
	ArgTenant = 3
)

// Sentinel converts the set's enforcing rules. name maps a resource to its
// sentinel-golang resource name (identity in production; tests namespace
// them).
func (s *Set) Sentinel(name func(resource string) string) *Sentinel {
	return s.SentinelOf(Enforce, name)
}

// SentinelOf converts the set's rules of mode m: Enforce (rules without a
// mode too) or Shadow. Each rule keeps the ID of its place in its document
// ("ddcolor_person/flow[1]"), whichever rules of the other mode surround
// it.
func (s *Set) SentinelOf(m Mode, name func(resource string) string) *Sentinel {
	out := &Sentinel{}
	shadow := m.IsShadow()
	for _, res := range Resources {
		r, ok := s.Resources[res]
		if !ok {
			continue
		}
		sres := name(res)
		for i, f := range r.Flow {
			if f.Mode.IsShadow() == shadow {
				out.Flow = append(out.Flow, flowRule(fmt.Sprintf("%s/flow[%d]", res, i), sres, f))
			}
		}
		for i, h := range r.Hotspot {
			if h.Mode.IsShadow() == shadow {
				out.Hotspot = append(out.Hotspot, hotspotRule(fmt.Sprintf("%s/hotspot[%d]", res, i), sres, h))
			}
		}
	}
	if s.System.Mode.IsShadow() != shadow {
		return out
	}
	sys := func(id string, m system.MetricType, v float64) {
		out.System = append(out.System, &system.Rule{ID: "system/" + id, MetricType: m, TriggerCount: v, Strategy: system.NoAdaptive})
	}
	if s.System.Load > 0 {
		sys("load", system.Load, s.System.Load)
	}
	if s.System.AvgRT > 0 {
		sys("avg_rt", system.AvgRT, float64(time.Duration(s.System.AvgRT).Milliseconds()))
	}
	if s.System.Concurrency > 0 {
		sys("concurrency", system.Concurrency, float64(s.System.Concurrency))
	}
	if s.System.InboundQPS > 0 {
		sys("inbound_qps", system.InboundQPS, s.System.InboundQPS)
	}
	return out
}

func flowRule(id, res string, f FlowRule) *flow.Rule {
	r := &flow.Rule{
		ID:                     id,
		Resource:               res,
		TokenCalculateStrategy: flow.Direct,
		ControlBehavior:        flow.Reject,
		Threshold:              f.Threshold,
		RelationStrategy:       flow.CurrentResource,
		RefResource:            "",
		MaxQueueingTimeMs:      0,
		WarmUpPeriodSec:        0,
		WarmUpColdFactor:       0,
		StatIntervalInMs:       uint32(time.Duration(f.Window).Milliseconds()),
		LowMemUsageThreshold:   0,
		HighMemUsageThreshold:  0,
		MemLowWaterMarkBytes:   0,
		MemHighWaterMarkBytes:  0,
	}
	if f.Behavior == BehaviorThrottle {
		r.ControlBehavior = flow.Throttling
		r.MaxQueueingTimeMs = uint32(time.Duration(f.MaxQueue).Milliseconds())
	}
	if w := f.WarmUp; w != nil {
		r.TokenCalculateStrategy = flow.WarmUp
		r.WarmUpPeriodSec = uint32(time.Duration(w.Period) / time.Second)
		r.WarmUpColdFactor = uint32(w.ColdFactor)
	}
	return r
}

func hotspotRule(id, res string, h HotspotRule) *hotspot.Rule {
	idx := ArgSize
	switch h.Param {
	case ParamOrigin:
		idx = ArgOrigin
	case ParamTenant:
		idx = ArgTenant
	}
	items := make(map[interface{}]int64, len(h.Items))
	for k, v := range h.Items {
		items[CanonicalValue(h.Param, k)] = v
	}
	return &hotspot.Rule{
		ID:                id,
		Resource:          res,
		MetricType:        hotspot.QPS,
		ControlBehavior:   hotspot.Reject,
		ParamIndex:        idx,
		ParamKey:          "",
		Threshold:         h.Threshold,
		MaxQueueingTimeMs: 0,
		BurstCount:        h.Burst,
		DurationInSec:     int64(time.Duration(h.Window) / time.Second),
		ParamsMaxCapacity: h.Capacity,
		SpecificItems:     items,
	}
}

// CanonicalValue writes a parameter value the way the engine passes it to
// sentinel-golang: IP addresses in their canonical form (IPv4-mapped IPv6
// unmapped), everything else — sizes, tenant names, which are compared
// exactly — as given.
func CanonicalValue(param, v string) string {
	if param == ParamOrigin {
		if a, err := netip.ParseAddr(v); err == nil {
			return a.Unmap().String()
		}
	}
	return v
}
