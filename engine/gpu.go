package engine

import (
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/system_metric"

	"github.com/sluicehq/sluice/rules"
)

// GPU is one GPU as a source last saw it.
type GPU struct {
	// ID names the GPU: "nvml:0", or "<backend>#<index>" for a GPU behind a
	// ComfyUI server.
	ID string `json:"id"`
	// Source is "nvml" (this host, through NVML) or "comfyui" (a backend's
	// /system_stats).
	Source string `json:"source"`
	// Backend is the ComfyUI base URL of a remote GPU.
	Backend string `json:"backend,omitempty"`
	// Type is the device type a ComfyUI backend reports ("cuda", "cpu",
	// ...); "" from NVML. A "cpu" device (a CPU-only ComfyUI, its memory
	// the host's RAM) is shown apart, in SystemStatus.CPUDevices, and never
	// counts as a GPU.
	Type string `json:"type,omitempty"`
	// Index is the device's index on its host; -1 when it has none (a CPU).
	Index       int    `json:"index"`
	Name        string `json:"name"`
	MemoryUsed  uint64 `json:"memory_used_bytes"`
	MemoryTotal uint64 `json:"memory_total_bytes"`
	// Utilization is the busy fraction, 0–1; -1 when the source does not
	// report it (ComfyUI does not).
	Utilization float64   `json:"utilization"`
	SampledAt   time.Time `json:"sampled_at"`
}

// GPUStatus is a GPU with what the engine makes of it.
type GPUStatus struct {
	GPU
	MemoryUsedRatio float64 `json:"memory_used_ratio"`
	// Pressure says whether this GPU is over its thresholds (with
	// hysteresis).
	Pressure bool `json:"pressure"`
}

// GPUSource is one source of GPU samples.
type GPUSource struct {
	Name      string    `json:"name"`
	Available bool      `json:"available"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// GPUPressure is the GPU rule's state.
type GPUPressure struct {
	Active bool      `json:"active"`
	Since  time.Time `json:"since,omitzero"`
	// Action is reject or tighten ("" without a gpu rule).
	Action string `json:"action,omitempty"`
	// Factor scales flow thresholds while a tighten pressure is active; 1
	// otherwise.
	Factor float64 `json:"factor"`
	// Shadow says the GPU rule is in mode shadow: an active pressure only
	// counts what it would refuse.
	Shadow bool `json:"shadow,omitempty"`
	// Devices lists the GPUs under pressure, whether or not the pressure
	// is active.
	Devices []string `json:"devices"`
	// Backends lists the ComfyUI backends with a GPU under pressure: the
	// farm sends them no new job. The pressure is active, and refuses or
	// tightens admission, only when a GPU of this host (NVML) is under
	// pressure or every backend with a fresh sample is.
	Backends []string `json:"backends"`
}

// SystemStatus is the machine and the GPUs as the engine sees them.
type SystemStatus struct {
	CPUUsage float64 `json:"cpu_usage"`
	// Load1 is the 1-minute load average; -1 before the first sample.
	Load1 float64     `json:"load1"`
	GPUs  []GPUStatus `json:"gpus"`
	// CPUDevices are the devices backends report that are CPUs: shown,
	// never counted as GPUs.
	CPUDevices []GPU       `json:"cpu_devices"`
	Sources    []GPUSource `json:"gpu_sources"`
	Pressure   GPUPressure `json:"gpu_pressure"`
}

// gpuStaleAfter is how old a GPU sample may be and still count: a source
// that stops reporting stops holding the pressure on.
const gpuStaleAfter = 30 * time.Second

// gpus holds the latest samples, the per-GPU hysteresis and the pressure.
type gpus struct {
	mu       sync.Mutex
	sources  map[string]*gpuSourceState
	inPress  map[string]bool // GPU id → under pressure
	since    time.Time
	pressure atomic.Pointer[gpuPressure] // read by the GPU slot on every call
}

type gpuSourceState struct {
	gpus    []GPU
	cpus    []GPU // devices of type "cpu"
	err     error
	updated time.Time
}

// gpuPressure is what the GPU slot needs, swapped whole.
type gpuPressure struct {
	active  bool
	tighten bool
	factor  float64
	rule    *ownRule
	// shadow says the GPU rule is in mode shadow: its pressure refuses
	// nothing and keeps no backend from the farm; only the shadow rules'
	// slot counts what it would refuse.
	shadow  bool
	devices []string
	// backends are the ComfyUI backends with a GPU under pressure.
	backends map[string]bool
}

// ReportGPUs records a source's latest sample and re-evaluates the GPU
// rule. source names the source ("nvml", "comfyui http://gpu-1:8188"); a
// non-nil err means it could not be read: its GPUs are dropped and it shows
// as unavailable.
func (e *Engine) ReportGPUs(source string, sample []GPU, err error) {
	e.gpu.mu.Lock()
	defer e.gpu.mu.Unlock()
	st := &gpuSourceState{err: err, updated: e.clock.Now()}
	if err != nil {
		// A failed sample (a loaded GPU answers late) keeps the last one
		// until it is stale: the backend is still counted, with the
		// pressure it had, in "every backend under pressure".
		if prev := e.gpu.sources[source]; prev != nil {
			st.gpus, st.cpus = prev.gpus, prev.cpus
		}
	} else {
		for _, g := range sample {
			if g.Type == "cpu" {
				st.cpus = append(st.cpus, g)
			} else {
				st.gpus = append(st.gpus, g)
			}
		}
	}
	e.gpu.sources[source] = st
	e.evaluateGPUsLocked(e.state.Load())
}

// evaluateGPUs re-evaluates the GPU rule, for rule changes and stale
// samples.
func (e *Engine) evaluateGPUs() {
	e.gpu.mu.Lock()
	defer e.gpu.mu.Unlock()
	e.evaluateGPUsLocked(e.state.Load())
}

// thresholds are one GPU's limits: enter at or above, leave below recover.
type thresholds struct{ mem, memRecover, util, utilRecover float64 }

// gpuThresholds are the rule's thresholds for g: a device override (by GPU
// id, else by backend) replaces the thresholds it sets, keeping the rule's
// margin between threshold and recovery; what it leaves out comes from the
// rule.
func gpuThresholds(rule *rules.GPU, g GPU) thresholds {
	t := thresholds{rule.MemoryUsedRatio, rule.RecoverMemoryRatio, rule.Utilization, rule.RecoverUtilization}
	for _, key := range []string{g.ID, g.Backend} {
		d, ok := rule.Devices[key]
		if !ok || key == "" {
			continue
		}
		if d.MemoryUsedRatio > 0 {
			margin := 0.05
			if rule.MemoryUsedRatio > 0 {
				margin = rule.MemoryUsedRatio - rule.RecoverMemoryRatio
			}
			t.mem, t.memRecover = d.MemoryUsedRatio, max(d.MemoryUsedRatio-margin, 0)
		}
		if d.Utilization > 0 {
			margin := 0.05
			if rule.Utilization > 0 {
				margin = rule.Utilization - rule.RecoverUtilization
			}
			t.util, t.utilRecover = d.Utilization, max(d.Utilization-margin, 0)
		}
		break
	}
	return t
}

func memRatio(g GPU) float64 {
	if g.MemoryTotal == 0 {
		return 0
	}
	return float64(g.MemoryUsed) / float64(g.MemoryTotal)
}

// underPressure applies the hysteresis: a GPU enters pressure at a
// threshold and leaves it only below the recover levels.
func underPressure(t thresholds, g GPU, was bool) bool {
	ratio, util := memRatio(g), g.Utilization
	memHigh := t.mem > 0 && g.MemoryTotal > 0 && ratio >= t.mem
	utilHigh := t.util > 0 && util >= 0 && util >= t.util
	if !was {
		return memHigh || utilHigh
	}
	memStill := t.mem > 0 && g.MemoryTotal > 0 && ratio >= t.memRecover
	utilStill := t.util > 0 && util >= 0 && util >= t.utilRecover
	return memStill || utilStill
}

func (e *Engine) evaluateGPUsLocked(st *state) {
	rule := st.set.GPU
	now := e.clock.Now()
	var pressed []string
	hostPressed := false
	seen := make(map[string]bool)     // backends with a fresh sample
	backends := make(map[string]bool) // backends with a GPU under pressure
	if rule != nil {
		for _, name := range sortedSources(e.gpu.sources) {
			for _, g := range e.gpu.sources[name].gpus {
				if now.Sub(g.SampledAt) > gpuStaleAfter {
					continue
				}
				in := underPressure(gpuThresholds(rule, g), g, e.gpu.inPress[g.ID])
				e.gpu.inPress[g.ID] = in
				if g.Backend != "" {
					seen[g.Backend] = true
				}
				if !in {
					continue
				}
				pressed = append(pressed, g.ID)
				if g.Backend != "" {
					backends[g.Backend] = true
				} else {
					hostPressed = true
				}
			}
		}
	}
	for id := range e.gpu.inPress {
		if !slices.Contains(pressed, id) {
			delete(e.gpu.inPress, id)
		}
	}
	prev := e.gpu.pressure.Load()
	// A backend under pressure only stops getting jobs (see the farm); the
	// gateway as a whole protects the GPUs when this host's GPUs are under
	// pressure or every backend is.
	active := hostPressed || len(seen) > 0 && len(backends) == len(seen)
	p := &gpuPressure{active: active, factor: 1, devices: pressed, backends: backends, shadow: rule != nil && rule.Mode.IsShadow()}
	if active {
		p.rule = st.gpuRule
		p.tighten = rule.Action == rules.GPUTighten
		if p.tighten {
			p.factor = rule.Factor
		}
	}
	switch wasActive := prev != nil && prev.active; {
	case active && !wasActive:
		e.gpu.since = now
		e.log.Warn("GPU pressure: protecting the GPUs", slog.Any("gpus", pressed), slog.String("action", rule.Action), slog.Float64("factor", p.factor), slog.Bool("shadow", p.shadow))
	case !active && wasActive:
		e.gpu.since = time.Time{}
		e.log.Info("GPU pressure over: normal admission again")
	}
	e.gpu.pressure.Store(p)
}

func sortedSources(m map[string]*gpuSourceState) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// System returns the machine's CPU and load and every GPU with the GPU
// rule's state.
func (e *Engine) System() SystemStatus {
	out := SystemStatus{CPUUsage: e.CPUUsage(), Load1: system_metric.CurrentLoad(), GPUs: []GPUStatus{}, CPUDevices: []GPU{}, Sources: []GPUSource{}}
	e.gpu.mu.Lock()
	defer e.gpu.mu.Unlock()
	for _, name := range sortedSources(e.gpu.sources) {
		src := e.gpu.sources[name]
		s := GPUSource{Name: name, Available: src.err == nil, UpdatedAt: src.updated}
		if src.err != nil {
			s.Error = src.err.Error()
		}
		out.Sources = append(out.Sources, s)
		for _, g := range src.gpus {
			out.GPUs = append(out.GPUs, GPUStatus{GPU: g, MemoryUsedRatio: memRatio(g), Pressure: e.gpu.inPress[g.ID]})
		}
		out.CPUDevices = append(out.CPUDevices, src.cpus...)
	}
	out.Pressure = GPUPressure{Factor: 1, Devices: []string{}, Backends: []string{}}
	if rule := e.state.Load().set.GPU; rule != nil {
		out.Pressure.Action = rule.Action
	}
	if p := e.gpu.pressure.Load(); p != nil {
		out.Pressure.Devices = append(out.Pressure.Devices, p.devices...)
		for b := range p.backends {
			out.Pressure.Backends = append(out.Pressure.Backends, b)
		}
		slices.Sort(out.Pressure.Backends)
		if p.active {
			out.Pressure.Active, out.Pressure.Since, out.Pressure.Factor = true, e.gpu.since, p.factor
			out.Pressure.Shadow = p.shadow
		}
	}
	return out
}

// BackendPressure says whether a GPU of the ComfyUI backend (its base URL,
// as GPU.Backend) is under pressure by the GPU rule, as of the latest
// samples: the farm then sends that backend no new job.
func (e *Engine) BackendPressure(backend string) bool {
	p := e.gpu.pressure.Load()
	return p != nil && !p.shadow && p.backends[backend]
}

// gpuSlot refuses calls, or holds them to tightened flow thresholds, while
// the GPU rule sees pressure.
type gpuSlot struct{ e *Engine }

// gpuSlotOrder puts the GPU check after the CPU's, before flow (2000).
const gpuSlotOrder = 1002

func (s *gpuSlot) Order() uint32 { return gpuSlotOrder }

func (s *gpuSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	p := s.e.gpu.pressure.Load()
	if p == nil || !p.active {
		return nil
	}
	tok := tokenOf(ctx)
	if tok == nil || p.shadow && !tok.res.isShadow {
		// A shadow GPU rule refuses nothing. The shadow state sees the
		// pressure of either mode: an enforcing pressure tightens the
		// shadow flow rules, and under reject the enforcing state has
		// refused the call before.
		return nil
	}
	rs := tok.res
	if !p.tighten {
		return base.NewTokenResultBlockedWithCause(base.BlockTypeSystemFlow, "gpu pressure", p.rule, nil)
	}
	for _, fc := range rs.flowChecks {
		if float64(fc.stat.GetSum(base.MetricEventPass))+float64(ctx.Input.BatchCount) > fc.tightRule.threshold {
			return base.NewTokenResultBlockedWithCause(base.BlockTypeSystemFlow, "gpu pressure: flow tightened", fc.tightRule, nil)
		}
	}
	return nil
}

// flowCheck is one flow rule as the GPU slot checks it under tighten: its
// window's admissions against the scaled threshold.
type flowCheck struct {
	stat      base.ReadStat
	tightRule *ownRule
}
