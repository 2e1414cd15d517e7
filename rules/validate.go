package rules

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Defaults filled in by Build where a field is left out.
const (
	DefaultWindow          = time.Second
	DefaultMaxQueue        = 500 * time.Millisecond
	DefaultHotspotCapacity = 20000
	maxHotspotCapacity     = 1_000_000
	maxCost                = 1000
	maxThreshold           = 1e9
)

// slidingWindows are the flow windows sentinel-golang's 20 × 500 ms resource
// window can slide over; any other span would silently become a fixed
// window.
var slidingWindows = []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second}

// Set is a validated, complete rule set: what the engine enforces.
type Set struct {
	// Resources holds the rules of each resource that has a document, with
	// defaults filled in.
	Resources map[string]*Resource
	// System holds the system rules; the zero value turns them all off.
	System System
	// GPU holds the GPU rule, with defaults filled in; nil when off.
	GPU *GPU
	// Docs are the documents the set was built from, in source order.
	Docs []Document
}

// ParseSet parses a rule source (one file's text, named name in errors)
// and builds it as one rule set: Parse, then Build.
func ParseSet(name string, data []byte) (*Set, error) {
	docs, err := Parse(name, data)
	if err != nil {
		return nil, err
	}
	return Build(docs)
}

// Build validates documents as one rule set. It reports every problem it
// finds as Errors and returns no set if there is any: a set is all good or
// not built.
func Build(docs []Document) (*Set, error) {
	set := &Set{Resources: make(map[string]*Resource), Docs: docs}
	var all Errors
	seen := make(map[string]Document)
	for _, d := range docs {
		c := &errs{file: d.File, doc: d.Index, resource: d.Name(), pos: d.pos}
		if prev, dup := seen[d.Name()]; dup && d.Name() != "" {
			c.add("", "%s is defined twice: here and in %s", d.Name(), prev.Source())
			all = append(all, c.list...)
			continue
		}
		seen[d.Name()] = d
		if d.Resource == nil {
			if d.System != nil {
				sys := *d.System
				validateSystem(c, &sys)
				set.System = sys
			}
			if d.GPU != nil {
				g := cloneGPU(d.GPU)
				validateGPU(c, g)
				set.GPU = g
			}
		} else {
			r := cloneResource(d.Resource)
			validateResource(c, r)
			set.Resources[r.Resource] = r
		}
		all = append(all, c.list...)
	}
	if len(all) > 0 {
		return nil, all
	}
	return set, nil
}

func validateResource(c *errs, r *Resource) {
	if !slices.Contains(Resources, r.Resource) {
		c.add("resource", "unknown resource %q; known resources are %s", r.Resource, strings.Join(Resources, ", "))
		return
	}
	for i := range r.Flow {
		validateFlow(c, fmt.Sprintf("flow[%d]", i), &r.Flow[i])
	}
	for i := range r.Hotspot {
		validateHotspot(c, fmt.Sprintf("hotspot[%d]", i), &r.Hotspot[i])
	}
	if r.Concurrency < 0 {
		c.add("concurrency", "must be >= 0 (0 is off), got %d", r.Concurrency)
	}
	mode(c, "concurrency.mode", r.ConcurrencyMode)
	if r.Cost != nil {
		validateCost(c, r.Cost)
		costWithinThresholds(c, r)
	}
	if b := r.Ban; b != nil {
		if b.Blocks < 1 {
			c.add("ban.blocks", "must be > 0, got %d", b.Blocks)
		}
		positiveDuration(c, "ban.within", b.Within)
		positiveDuration(c, "ban.for", b.For)
		mode(c, "ban.mode", b.Mode)
	}
}

func validateFlow(c *errs, at string, f *FlowRule) {
	threshold(c, at+".threshold", f.Threshold)
	mode(c, at+".mode", f.Mode)
	if f.Window == 0 {
		f.Window = Duration(DefaultWindow)
	}
	if !slices.Contains(slidingWindows, time.Duration(f.Window)) {
		c.add(at+".window", "must be one of 500ms, 1s, 2s, 2.5s, 5s, 10s (the spans sentinel-golang can slide), got %s", f.Window)
	}
	switch f.Behavior {
	case "":
		f.Behavior = BehaviorReject
	case BehaviorReject, BehaviorThrottle:
	default:
		c.add(at+".behavior", "must be reject or throttle, got %q", string(f.Behavior))
	}
	if f.Behavior == BehaviorReject && f.MaxQueue != 0 {
		c.add(at+".max_queue", "applies only to behavior: throttle, got %s with behavior: reject", f.MaxQueue)
	}
	if f.Behavior == BehaviorThrottle {
		if f.MaxQueue == 0 {
			f.MaxQueue = Duration(DefaultMaxQueue)
		}
		if d := time.Duration(f.MaxQueue); d < time.Millisecond || d > time.Minute || d%time.Millisecond != 0 {
			c.add(at+".max_queue", "must be whole milliseconds between 1ms and 1m, got %s", f.MaxQueue)
		}
	}
	if w := f.WarmUp; w != nil {
		if f.Behavior == BehaviorThrottle {
			c.add(at+".warm_up", "applies only to behavior: reject (throttle paces at the threshold)")
		}
		if d := time.Duration(w.Period); d < time.Second || d%time.Second != 0 || d > 24*time.Hour {
			c.add(at+".warm_up.period", "must be whole seconds between 1s and 24h, got %s", w.Period)
		}
		if w.ColdFactor < 2 || w.ColdFactor > 100 {
			c.add(at+".warm_up.cold_factor", "must be between 2 and 100, got %d", w.ColdFactor)
		}
	}
}

func validateHotspot(c *errs, at string, h *HotspotRule) {
	if !slices.Contains(Params, h.Param) {
		c.add(at+".param", "unknown parameter %q; known parameters are %s", h.Param, strings.Join(Params, ", "))
	}
	threshold(c, at+".threshold", float64(h.Threshold))
	mode(c, at+".mode", h.Mode)
	if h.Window == 0 {
		h.Window = Duration(DefaultWindow)
	}
	if d := time.Duration(h.Window); d < time.Second || d%time.Second != 0 || d > 24*time.Hour {
		c.add(at+".window", "must be whole seconds between 1s and 24h, got %s", h.Window)
	}
	if h.Burst < 0 {
		c.add(at+".burst", "must be >= 0, got %d", h.Burst)
	}
	if h.Capacity == 0 {
		h.Capacity = DefaultHotspotCapacity
	}
	if h.Capacity < 0 || h.Capacity > maxHotspotCapacity {
		c.add(at+".capacity", "must be between 1 and %d, got %d", maxHotspotCapacity, h.Capacity)
	}
	for _, k := range sortedKeys(h.Items) {
		p := fmt.Sprintf("%s.items[%q]", at, k)
		paramValue(c, p, h.Param, k)
		threshold(c, p, float64(h.Items[k]))
	}
}

func validateCost(c *errs, r *CostRule) {
	if r.Param != ParamSize {
		c.add("cost.param", "costs are by size: want size, got %q", r.Param)
	}
	if r.Default == 0 {
		r.Default = 1
	}
	if r.Default < 1 || r.Default > maxCost {
		c.add("cost.default", "must be between 1 and %d, got %d", maxCost, r.Default)
	}
	if len(r.Values) == 0 {
		c.add("cost.values", "must name at least one value and its cost")
	}
	for _, k := range sortedKeys(r.Values) {
		p := fmt.Sprintf("cost.values[%q]", k)
		paramValue(c, p, r.Param, k)
		if v := r.Values[k]; v < 1 || v > maxCost {
			c.add(p, "must be between 1 and %d, got %d", maxCost, v)
		}
	}
}

// costWithinThresholds refuses a cost that no flow or hotspot rule could
// ever admit: a request that costs more than a threshold is refused always.
// Shadow rules are checked too: enforced, such a rule would refuse those
// requests always, which is what an operator trying it out wants to hear
// before, not after switching it to enforce.
func costWithinThresholds(c *errs, r *Resource) {
	costs := map[string]int{}
	for k, v := range r.Cost.Values {
		costs[fmt.Sprintf("cost.values[%q]", k)] = v
	}
	costs["cost.default"] = r.Cost.Default
	for _, at := range sortedKeys(costs) {
		cost := float64(costs[at])
		value, listed := strings.CutPrefix(at, "cost.values[")
		if listed {
			value, _ = strconv.Unquote(strings.TrimSuffix(value, "]"))
		}
		for i, f := range r.Flow {
			switch {
			case f.Threshold > 0 && cost > f.Threshold:
				c.add(at, "costs %v but flow[%d].threshold is %v: such requests could never pass", cost, i, f.Threshold)
			case f.WarmUp != nil && f.WarmUp.ColdFactor > 0 && cost > f.Threshold/float64(f.WarmUp.ColdFactor):
				// A cold warm-up admits threshold/cold_factor; if nothing
				// passes it never warms.
				c.add(at, "costs %v but flow[%d] admits only %.3g per window while cold (threshold/cold_factor): such requests could never warm it up",
					cost, i, f.Threshold/float64(f.WarmUp.ColdFactor))
			}
		}
		for i, h := range r.Hotspot {
			limit := h.Threshold
			if listed && h.Param == r.Cost.Param {
				if n, ok := h.Items[value]; ok {
					limit = n
				}
			}
			if limit > 0 && cost > float64(limit+h.Burst) {
				c.add(at, "costs %v but hotspot[%d] admits %d per window: such requests could never pass", cost, i, limit+h.Burst)
			}
		}
	}
}

func validateSystem(c *errs, s *System) {
	nonNegative := func(field string, v float64) {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			c.add("system."+field, "must be >= 0 (0 is off), got %v", v)
		}
	}
	mode(c, "system.mode", s.Mode)
	nonNegative("load", s.Load)
	nonNegative("inbound_qps", s.InboundQPS)
	nonNegative("concurrency", float64(s.Concurrency))
	if d := time.Duration(s.AvgRT); d < 0 || d%time.Millisecond != 0 {
		c.add("system.avg_rt", "must be whole milliseconds >= 0 (0 is off), got %s", s.AvgRT)
	}
	if s.CPUUsage < 0 || s.CPUUsage > 1 || math.IsNaN(s.CPUUsage) {
		hint := ""
		if s.CPUUsage > 1 && s.CPUUsage <= 100 {
			hint = fmt.Sprintf(" (did you mean %v?)", s.CPUUsage/100)
		}
		c.add("system.cpu_usage", "must be a fraction of the gateway's CPUs between 0 and 1 (0 is off), got %v%s", s.CPUUsage, hint)
	}
}

func validateGPU(c *errs, g *GPU) {
	fraction := func(field string, v float64) bool {
		if v < 0 || v > 1 || math.IsNaN(v) {
			c.add("gpu."+field, "must be a fraction between 0 and 1, got %v", v)
			return false
		}
		return true
	}
	mode(c, "gpu.mode", g.Mode)
	memOK, utilOK := fraction("memory_used_ratio", g.MemoryUsedRatio), fraction("utilization", g.Utilization)
	if g.MemoryUsedRatio == 0 && g.Utilization == 0 && len(g.Devices) == 0 {
		c.add("gpu", "sets no threshold: give memory_used_ratio, utilization or devices")
	}
	recover := func(field string, v *float64, limit float64, ok bool) {
		if limit == 0 && *v != 0 {
			c.add("gpu."+field, "needs its threshold (%s) set, got %v", strings.TrimPrefix(field, "recover_"), *v)
			return
		}
		if limit == 0 || !ok {
			return
		}
		if *v == 0 {
			*v = max(math.Round((limit-0.05)*1e4)/1e4, 0)
		}
		if *v < 0 || *v > limit || math.IsNaN(*v) {
			c.add("gpu."+field, "must be between 0 and the threshold %v (the pressure ends below it), got %v", limit, *v)
		}
	}
	recover("recover_memory_used_ratio", &g.RecoverMemoryRatio, g.MemoryUsedRatio, memOK)
	recover("recover_utilization", &g.RecoverUtilization, g.Utilization, utilOK)
	switch g.Action {
	case "":
		g.Action = GPUReject
	case GPUReject, GPUTighten:
	default:
		c.add("gpu.action", "must be reject or tighten, got %q", g.Action)
	}
	if g.Action == GPUTighten && g.Factor == 0 {
		g.Factor = 0.5
	}
	if g.Action == GPUReject && g.Factor != 0 {
		c.add("gpu.factor", "applies only to action: tighten, got %v with action: reject", g.Factor)
	}
	if g.Action == GPUTighten && (g.Factor <= 0 || g.Factor >= 1 || math.IsNaN(g.Factor)) {
		c.add("gpu.factor", "must be between 0 and 1 (exclusive), got %v", g.Factor)
	}
	for _, id := range sortedKeys(g.Devices) {
		d := g.Devices[id]
		at := fmt.Sprintf("gpu.devices[%q]", id)
		if d.MemoryUsedRatio < 0 || d.MemoryUsedRatio > 1 || d.Utilization < 0 || d.Utilization > 1 {
			c.add(at, "thresholds must be fractions between 0 and 1, got memory_used_ratio %v, utilization %v", d.MemoryUsedRatio, d.Utilization)
		}
		if d.MemoryUsedRatio == 0 && d.Utilization == 0 {
			c.add(at, "sets no threshold")
		}
	}
}

func cloneGPU(g *GPU) *GPU {
	c := *g
	c.Devices = maps.Clone(g.Devices)
	return &c
}

// mode checks a rule's mode: empty (enforce), enforce or shadow.
func mode(c *errs, at string, m Mode) {
	switch m {
	case "", Enforce, Shadow:
	default:
		c.add(at, "must be enforce or shadow, got %q", string(m))
	}
}

func threshold(c *errs, at string, v float64) {
	switch {
	case math.IsNaN(v) || v <= 0:
		c.add(at, "must be > 0, got %v", v)
	case v > maxThreshold:
		c.add(at, "must be at most %v, got %v", maxThreshold, v)
	}
}

func positiveDuration(c *errs, at string, d Duration) {
	if d <= 0 || time.Duration(d)%time.Millisecond != 0 {
		c.add(at, "must be whole milliseconds > 0, got %s", d)
	}
}

// paramValue checks that k is a value the parameter can take: a client
// identity for origin (originValue), a positive integer for size, a tenant
// name for tenant (tenantValue).
func paramValue(c *errs, at, param, k string) {
	switch param {
	case ParamOrigin:
		originValue(c, at, k)
	case ParamTenant:
		tenantValue(c, at, k)
	case ParamSize:
		if n, err := strconv.Atoi(k); err != nil || n <= 0 || strconv.Itoa(n) != k {
			c.add(at, "size values must be positive integers, got %q", k)
		}
	}
}

// originValue checks a value of the origin parameter against the client
// identity the gateway counts: an IPv4 address (IPv4-mapped IPv6 too), and
// for IPv6 the client's prefix in canonical CIDR form
// ("2001:db8:1:2::/64"), since IPv6 clients are counted by prefix (of
// sluice serve's --ipv6-prefix length, 64 by default). A bare IPv6 address
// would never match, and is refused with the prefix to write instead.
func originValue(c *errs, at, k string) {
	if a, err := netip.ParseAddr(k); err == nil {
		if a.Unmap().Is4() {
			return
		}
		p, _ := a.WithZone("").Prefix(64)
		c.add(at, "IPv6 clients are counted by prefix: write the prefix in CIDR form, of the length of --ipv6-prefix (such as %q for /64), got the address %q", p.String(), k)
		return
	}
	p, err := netip.ParsePrefix(k)
	switch {
	case err != nil:
		c.add(at, "origin values must be IPv4 addresses or IPv6 prefixes in CIDR form (2001:db8:1:2::/64), got %q", k)
	case !p.Addr().Is6() || p.Addr().Is4In6():
		c.add(at, "IPv4 clients are counted by address: write the address without a prefix length, got %q", k)
	case p.Masked().String() != k:
		c.add(at, "write the IPv6 prefix in canonical form, %q, got %q", p.Masked().String(), k)
	}
}

// maxTenantName bounds a tenant name in the rules.
const maxTenantName = 256

// tenantValue checks a value of the tenant parameter: the name of an
// identified tenant as its API key or JWT gives it, compared exactly. An IP
// address or prefix is never a tenant (anonymous callers are limited by
// param: origin), so one here is a mistake.
func tenantValue(c *errs, at, k string) {
	if _, err := netip.ParseAddr(k); err == nil {
		c.add(at, "tenant values name identified tenants, got the address %q: limit anonymous clients by address with param: origin", k)
		return
	}
	if _, err := netip.ParsePrefix(k); err == nil {
		c.add(at, "tenant values name identified tenants, got the prefix %q: limit anonymous clients by address with param: origin", k)
		return
	}
	switch {
	case k == "":
		c.add(at, "tenant values must not be empty")
	case len(k) > maxTenantName:
		c.add(at, "tenant values are at most %d bytes, got %d", maxTenantName, len(k))
	case !utf8.ValidString(k) || strings.IndexFunc(k, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		c.add(at, "tenant values are printable and without spaces (names are compared exactly), got %q", k)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func cloneResource(r *Resource) *Resource {
	c := *r
	c.Flow = slices.Clone(r.Flow)
	for i := range c.Flow {
		if w := c.Flow[i].WarmUp; w != nil {
			wc := *w
			c.Flow[i].WarmUp = &wc
		}
	}
	c.Hotspot = slices.Clone(r.Hotspot)
	if r.Cost != nil {
		cc := *r.Cost
		c.Cost = &cc
	}
	if r.Ban != nil {
		bc := *r.Ban
		c.Ban = &bc
	}
	return &c
}
