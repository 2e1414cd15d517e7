package rules

import (
	"encoding/json"
	"fmt"
	"time"
)

// The resources sluice guards. A document naming any other resource is an
// error.
const (
	ResourceDDColorPerson   = "ddcolor_person"
	ResourceDDColorBuilding = "ddcolor_building"
	ResourceZImageGenerate  = "zimage_generate"
)

// Resources lists the guarded resources in a stable order.
var Resources = []string{ResourceDDColorPerson, ResourceDDColorBuilding, ResourceZImageGenerate}

// The request parameters a hotspot or cost rule can name.
const (
	// ParamOrigin is the client IP address as the gateway resolved it
	// (an IPv6 client's prefix). Hotspot rules on origin apply only to
	// anonymous callers: a tenant identified by an API key or a JWT is
	// not limited by the address it calls from (it may share a NAT with
	// others).
	ParamOrigin = "origin"
	// ParamSize is the image size: DDColor's model input size, or the
	// longer side of a generated image.
	ParamSize = "size"
	// ParamTenant is the tenant of an identified caller (the tenant of its
	// API key, or its JWT's subject). Hotspot rules on tenant apply only
	// to identified callers; items override the threshold per tenant
	// name.
	ParamTenant = "tenant"
)

// Params lists the parameters rules may name.
var Params = []string{ParamOrigin, ParamSize, ParamTenant}

// Behavior says what a flow rule does with a request over its threshold.
type Behavior string

const (
	// BehaviorReject refuses the request at once.
	BehaviorReject Behavior = "reject"
	// BehaviorThrottle paces requests uniformly and holds a request for up
	// to MaxQueue before refusing it.
	BehaviorThrottle Behavior = "throttle"
)

// Mode says whether a rule refuses (enforce) or only counts the calls it
// would refuse (shadow). The empty Mode is enforce.
type Mode string

const (
	// Enforce refuses calls over the rule: the default.
	Enforce Mode = "enforce"
	// Shadow evaluates the rule on the same traffic and counts the calls
	// it would refuse ("would refuse"), never refusing one: a threshold is
	// tried on real traffic before it is switched to enforce.
	Shadow Mode = "shadow"
)

// IsShadow reports whether m is shadow.
func (m Mode) IsShadow() bool { return m == Shadow }

// Duration is a time.Duration written as a Go duration string ("500ms",
// "60s") in YAML and JSON.
type Duration time.Duration

// String returns the Go form of d.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes d as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration such as 500ms or 60s, got %q", b)
	}
	*d = Duration(v)
	return nil
}

// Resource holds every rule of one guarded resource.
type Resource struct {
	Resource string        `json:"resource" yaml:"resource"`
	Flow     []FlowRule    `json:"flow,omitempty" yaml:"flow,omitempty"`
	Hotspot  []HotspotRule `json:"hotspot,omitempty" yaml:"hotspot,omitempty"`
	// Concurrency caps the resource's jobs in flight, whatever their cost
	// (0 is off). It is written concurrency: 8, or with its mode as
	// concurrency: {limit: 8, mode: shadow}.
	Concurrency int `json:"concurrency,omitempty" yaml:"concurrency,omitempty"`
	// ConcurrencyMode is the mode of Concurrency: the mode key of the
	// concurrency mapping form ("" when written as a plain number).
	ConcurrencyMode Mode      `json:"-" yaml:"-"`
	Cost            *CostRule `json:"cost,omitempty" yaml:"cost,omitempty"`
	Ban             *BanRule  `json:"ban,omitempty" yaml:"ban,omitempty"`
}

// HasShadow reports whether any rule of r is in mode shadow; false for a
// nil r.
func (r *Resource) HasShadow() bool {
	if r == nil {
		return false
	}
	for _, f := range r.Flow {
		if f.Mode.IsShadow() {
			return true
		}
	}
	for _, h := range r.Hotspot {
		if h.Mode.IsShadow() {
			return true
		}
	}
	return r.Concurrency > 0 && r.ConcurrencyMode.IsShadow() || r.Ban != nil && r.Ban.Mode.IsShadow()
}

// concurrencyForm is the mapping form of a resource's concurrency.
type concurrencyForm struct {
	Limit int  `json:"limit" yaml:"limit"`
	Mode  Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
}

// resourceForm is a Resource as written: concurrency a number, or a
// mapping when it carries its mode.
type resourceForm struct {
	Resource    string        `json:"resource" yaml:"resource"`
	Flow        []FlowRule    `json:"flow,omitempty" yaml:"flow,omitempty"`
	Hotspot     []HotspotRule `json:"hotspot,omitempty" yaml:"hotspot,omitempty"`
	Concurrency any           `json:"concurrency,omitempty" yaml:"concurrency,omitempty"`
	Cost        *CostRule     `json:"cost,omitempty" yaml:"cost,omitempty"`
	Ban         *BanRule      `json:"ban,omitempty" yaml:"ban,omitempty"`
}

func (r Resource) form() resourceForm {
	f := resourceForm{Resource: r.Resource, Flow: r.Flow, Hotspot: r.Hotspot, Cost: r.Cost, Ban: r.Ban}
	switch {
	case r.ConcurrencyMode != "":
		f.Concurrency = concurrencyForm{Limit: r.Concurrency, Mode: r.ConcurrencyMode}
	case r.Concurrency != 0:
		f.Concurrency = r.Concurrency
	}
	return f
}

// MarshalYAML writes concurrency as a number, or as {limit, mode} when it
// has a mode.
func (r Resource) MarshalYAML() (any, error) { return r.form(), nil }

// MarshalJSON writes concurrency as MarshalYAML does, so that the JSON
// form parses back to the same document.
func (r Resource) MarshalJSON() ([]byte, error) { return json.Marshal(r.form()) }

// FlowRule limits a resource's admissions per sliding window.
type FlowRule struct {
	// Threshold is the number of admissions (weighted by cost) allowed per
	// Window.
	Threshold float64 `json:"threshold" yaml:"threshold"`
	// Window is the sliding window: 500ms, 1s, 2s, 2.5s, 5s or 10s
	// (default 1s), the spans sentinel-golang's 20 × 500 ms window can slide.
	Window Duration `json:"window,omitempty" yaml:"window,omitempty"`
	// Behavior is reject (default) or throttle.
	Behavior Behavior `json:"behavior,omitempty" yaml:"behavior,omitempty"`
	// MaxQueue is how long throttle may hold a request (default 500ms).
	// The engine paces a request only once every other check admitted it.
	MaxQueue Duration `json:"max_queue,omitempty" yaml:"max_queue,omitempty"`
	// WarmUp starts the threshold low after idleness and raises it over a
	// period; behavior reject only.
	WarmUp *WarmUp `json:"warm_up,omitempty" yaml:"warm_up,omitempty"`
	// Mode is enforce (default) or shadow.
	Mode Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
}

// WarmUp ramps a flow threshold from Threshold/ColdFactor to Threshold over
// Period.
type WarmUp struct {
	Period     Duration `json:"period" yaml:"period"`
	ColdFactor int      `json:"cold_factor" yaml:"cold_factor"`
}

// HotspotRule limits admissions per value of one request parameter: per
// size, per anonymous client's IP, or per identified tenant.
type HotspotRule struct {
	// Param is origin (anonymous callers only), tenant (identified callers
	// only) or size (every caller).
	Param string `json:"param" yaml:"param"`
	// Threshold is the admissions allowed per value per Window.
	Threshold int64 `json:"threshold" yaml:"threshold"`
	// Window is a whole number of seconds (default 1s).
	Window Duration `json:"window,omitempty" yaml:"window,omitempty"`
	// Burst is extra admissions a quiet value may spend at once.
	Burst int64 `json:"burst,omitempty" yaml:"burst,omitempty"`
	// Items override Threshold for single values: a bigger limit for a VIP
	// address or tenant, a smaller one for size 1280.
	Items map[string]int64 `json:"items,omitempty" yaml:"items,omitempty"`
	// Capacity bounds how many distinct values are tracked (default 20000).
	Capacity int64 `json:"capacity,omitempty" yaml:"capacity,omitempty"`
	// Mode is enforce (default) or shadow.
	Mode Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
}

// CostRule weighs a request by one parameter's value: with
// {param: size, values: {"1280": 2}} a size-1280 job counts twice against
// flow and hotspot thresholds.
type CostRule struct {
	Param   string         `json:"param" yaml:"param"`
	Default int            `json:"default,omitempty" yaml:"default,omitempty"`
	Values  map[string]int `json:"values" yaml:"values"`
}

// BanRule refuses an origin for For once it has been refused Blocks times
// within Within.
type BanRule struct {
	Blocks int      `json:"blocks" yaml:"blocks"`
	Within Duration `json:"within" yaml:"within"`
	For    Duration `json:"for" yaml:"for"`
	// Mode is enforce (default) or shadow: a shadow ban counts the
	// refusals it would make and records the bans it would impose, and
	// refuses nothing.
	Mode Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
}

// System holds the rules that protect the whole gateway. Zero fields are
// off.
type System struct {
	// Load is the 1-minute load average above which inbound requests are
	// refused.
	Load float64 `json:"load,omitempty" yaml:"load,omitempty"`
	// AvgRT is the average response time above which requests are refused.
	AvgRT Duration `json:"avg_rt,omitempty" yaml:"avg_rt,omitempty"`
	// Concurrency caps the jobs in flight over all resources.
	Concurrency int `json:"concurrency,omitempty" yaml:"concurrency,omitempty"`
	// InboundQPS caps inbound admissions per second over all resources.
	InboundQPS float64 `json:"inbound_qps,omitempty" yaml:"inbound_qps,omitempty"`
	// CPUUsage is the gateway's own CPU busy fraction (0–1] above which
	// requests are refused: its cgroup v2's CPU time over the CPUs the
	// cgroup may use, or the process's over the CPUs it may run on.
	CPUUsage float64 `json:"cpu_usage,omitempty" yaml:"cpu_usage,omitempty"`
	// Mode is enforce (default) or shadow, for every rule above.
	Mode Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
}

// GPU protects the GPUs themselves: it is the gpu section of the system
// document. Each GPU is judged on its own; while any is under pressure the
// action applies to every GPU-bound resource.
type GPU struct {
	// MemoryUsedRatio is the used/total VRAM fraction at or above which a
	// GPU is under pressure (0–1; 0 is off).
	MemoryUsedRatio float64 `json:"memory_used_ratio,omitempty" yaml:"memory_used_ratio,omitempty"`
	// Utilization is the busy fraction at or above which a GPU is under
	// pressure (0–1; 0 is off). Only NVML reports it.
	Utilization float64 `json:"utilization,omitempty" yaml:"utilization,omitempty"`
	// RecoverMemoryRatio and RecoverUtilization are the hysteresis: a GPU
	// leaves pressure only below both (defaults: 0.05 under the thresholds).
	RecoverMemoryRatio float64 `json:"recover_memory_used_ratio,omitempty" yaml:"recover_memory_used_ratio,omitempty"`
	RecoverUtilization float64 `json:"recover_utilization,omitempty" yaml:"recover_utilization,omitempty"`
	// Action is reject (new jobs get 503) or tighten (flow thresholds are
	// scaled by Factor while the pressure lasts). Default reject.
	Action string `json:"action,omitempty" yaml:"action,omitempty"`
	// Factor scales flow thresholds under tighten (0–1, default 0.5).
	Factor float64 `json:"factor,omitempty" yaml:"factor,omitempty"`
	// Devices override the thresholds for single GPUs, by GPU id
	// ("nvml:0") or by backend (a ComfyUI base URL: all its GPUs).
	Devices map[string]GPUThresholds `json:"devices,omitempty" yaml:"devices,omitempty"`
	// Mode is enforce (default) or shadow: a shadow GPU rule shows the
	// pressure and counts the calls it would refuse (or hold to tightened
	// thresholds), refuses none, and keeps the farm sending jobs to every
	// backend.
	Mode Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
}

// GPUThresholds are the thresholds of one GPU or backend.
type GPUThresholds struct {
	MemoryUsedRatio float64 `json:"memory_used_ratio,omitempty" yaml:"memory_used_ratio,omitempty"`
	Utilization     float64 `json:"utilization,omitempty" yaml:"utilization,omitempty"`
}

// The GPU actions.
const (
	GPUReject  = "reject"
	GPUTighten = "tighten"
)

// Document is one decoded document: a resource document (Resource set) or
// the system document (System and/or GPU set).
type Document struct {
	File     string // the file or etcd key it was decoded from
	Index    int    // 1-based position within File
	Resource *Resource
	System   *System
	GPU      *GPU

	pos positions // where each field is in File; nil when not decoded from a source
}

// Name is the document's resource, or "system".
func (d Document) Name() string {
	if d.Resource == nil {
		return "system"
	}
	return d.Resource.Resource
}

// Source says where the document came from: "rules.yaml#2".
func (d Document) Source() string { return fmt.Sprintf("%s#%d", d.File, d.Index) }
