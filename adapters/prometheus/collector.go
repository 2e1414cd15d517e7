package prometheus

import (
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/engine"
)

// The outcomes of an admission decision.
const (
	outcomeAdmitted = "admitted"
	outcomeRefused  = "refused"
)

// engineCollector turns the engine's statistics and the rules' state into
// const metrics when Prometheus scrapes: the engine keeps the counts, this
// only reads them.
type engineCollector struct {
	eng   *engine.Engine
	rules func() RulesInfo

	requests, inFlight, shadow                  *prom.Desc
	gpuUsed, gpuTotal, gpuUtil, gpuPressure     *prom.Desc
	pressureActive, tightenFactor, sourceUp     *prom.Desc
	shadowPressure                              *prom.Desc
	cpuUsage, load1, rulesRevision, rulesReject *prom.Desc
	rulesLive, rulesHeard                       *prom.Desc
}

func newEngineCollector(eng *engine.Engine, rulesInfo func() RulesInfo) *engineCollector {
	gpu := []string{"gpu", "source", "backend"}
	return &engineCollector{
		eng:   eng,
		rules: rulesInfo,
		requests: desc("requests_total",
			"Requests decided by the engine: admitted, or refused by a rule of kind rule_kind; by the caller's tier (anonymous callers: anonymous).",
			"resource", "outcome", "rule_kind", "tier"),
		inFlight: desc("jobs_in_flight", "Admitted requests whose work has not ended.", "resource"),
		shadow: desc("shadow_refusals_total",
			"Requests a rule in mode shadow would have refused, by the kind of that rule; they were not refused for it.",
			"resource", "kind"),
		gpuUsed:        desc("gpu_memory_used_bytes", "GPU memory in use, as its source last saw it.", gpu...),
		gpuTotal:       desc("gpu_memory_total_bytes", "GPU memory in all.", gpu...),
		gpuUtil:        desc("gpu_utilization_ratio", "GPU busy fraction, 0–1, where the source reports it (NVML).", gpu...),
		gpuPressure:    desc("gpu_pressure", "1 while the GPU is over the GPU rule's thresholds (with hysteresis).", gpu...),
		pressureActive: desc("gpu_pressure_active", "1 while the GPU rule refuses or tightens because a GPU is under pressure (an enforcing GPU rule only)."),
		tightenFactor:  desc("gpu_tighten_factor", "Factor flow thresholds are scaled by; 1 unless a tighten pressure of an enforcing GPU rule is active."),
		shadowPressure: desc("gpu_shadow_pressure_active", "1 while a GPU rule in mode shadow sees pressure: it would refuse or tighten, and does not."),
		sourceUp:       desc("gpu_source_up", "1 when the GPU source's last read succeeded.", "source"),
		cpuUsage:       desc("cpu_usage_ratio", "The gateway's own CPU busy fraction (its cgroup's or its process's), 0–1, as the engine last sampled it."),
		load1:          desc("load1", "The machine's 1-minute load average."),
		rulesRevision:  desc("rules_revision", "The etcd revision of the rules in force."),
		rulesReject:    desc("rule_updates_rejected_total", "Rule updates refused as invalid; the last good rules stayed in force."),
		rulesLive:      desc("rules_watch_live", "1 while the rule watch hears etcd; 0: etcd is unreachable and the rules in force may be stale."),
		rulesHeard:     desc("rules_heard_timestamp_seconds", "When etcd last answered the rule watch, in Unix seconds; 0: never."),
	}
}

func desc(name, help string, labels ...string) *prom.Desc {
	return prom.NewDesc(prom.BuildFQName(namespace, "", name), help, labels, nil)
}

func (c *engineCollector) Describe(ch chan<- *prom.Desc) {
	if c.eng != nil {
		for _, d := range []*prom.Desc{
			c.requests, c.inFlight, c.shadow, c.gpuUsed, c.gpuTotal, c.gpuUtil, c.gpuPressure,
			c.pressureActive, c.tightenFactor, c.shadowPressure, c.sourceUp, c.cpuUsage, c.load1,
		} {
			ch <- d
		}
	}
	if c.rules != nil {
		ch <- c.rulesRevision
		ch <- c.rulesReject
		ch <- c.rulesLive
		ch <- c.rulesHeard
	}
}

func (c *engineCollector) Collect(ch chan<- prom.Metric) {
	if c.eng != nil {
		c.collectStats(ch)
		c.collectSystem(ch)
	}
	if c.rules != nil {
		info := c.rules()
		send(ch, c.rulesRevision, prom.GaugeValue, float64(info.Revision))
		send(ch, c.rulesReject, prom.CounterValue, float64(info.Rejections))
		send(ch, c.rulesLive, prom.GaugeValue, bit(info.Live))
		heard := 0.0
		if !info.HeardAt.IsZero() {
			heard = float64(info.HeardAt.UnixNano()) / 1e9
		}
		send(ch, c.rulesHeard, prom.GaugeValue, heard)
	}
}

func (c *engineCollector) collectStats(ch chan<- prom.Metric) {
	for _, s := range c.eng.Stats() {
		// By tier, never by tenant: the tiers are few (the engine counts
		// at most 32 apart), tenants are not.
		for tier, t := range s.Tiers {
			send(ch, c.requests, prom.CounterValue, float64(t.Passed), s.Resource, outcomeAdmitted, "", tier)
			for _, k := range engine.Kinds {
				send(ch, c.requests, prom.CounterValue, float64(t.Refused[k]), s.Resource, outcomeRefused, string(k), tier)
			}
		}
		send(ch, c.inFlight, prom.GaugeValue, float64(s.InFlight), s.Resource)
		for _, k := range engine.Kinds {
			send(ch, c.shadow, prom.CounterValue, float64(s.Shadow[k]), s.Resource, string(k))
		}
	}
}

func (c *engineCollector) collectSystem(ch chan<- prom.Metric) {
	sys := c.eng.System()
	send(ch, c.cpuUsage, prom.GaugeValue, sys.CPUUsage)
	if sys.Load1 >= 0 {
		send(ch, c.load1, prom.GaugeValue, sys.Load1)
	}
	// Two sources reporting the same GPU would make a duplicate series and
	// fail the scrape: the first report counts.
	seen := make(map[[3]string]bool, len(sys.GPUs))
	for _, g := range sys.GPUs {
		key := [3]string{g.ID, g.Source, g.Backend}
		if seen[key] {
			continue
		}
		seen[key] = true
		labels := key[:]
		send(ch, c.gpuUsed, prom.GaugeValue, float64(g.MemoryUsed), labels...)
		send(ch, c.gpuTotal, prom.GaugeValue, float64(g.MemoryTotal), labels...)
		if g.Utilization >= 0 {
			send(ch, c.gpuUtil, prom.GaugeValue, g.Utilization, labels...)
		}
		send(ch, c.gpuPressure, prom.GaugeValue, bit(g.Pressure), labels...)
	}
	for _, s := range sys.Sources {
		send(ch, c.sourceUp, prom.GaugeValue, bit(s.Available), s.Name)
	}
	// A shadow GPU rule's pressure refuses and tightens nothing: it shows
	// apart, so that an alert on the enforced pressure does not fire on it.
	enforced := sys.Pressure.Active && !sys.Pressure.Shadow
	factor := 1.0
	if enforced {
		factor = sys.Pressure.Factor
	}
	send(ch, c.pressureActive, prom.GaugeValue, bit(enforced))
	send(ch, c.tightenFactor, prom.GaugeValue, factor)
	send(ch, c.shadowPressure, prom.GaugeValue, bit(sys.Pressure.Active && sys.Pressure.Shadow))
}

// send sends a const metric, or an invalid one carrying the error (label
// values that are not UTF-8): the registry reports it and the rest of the
// scrape goes on.
func send(ch chan<- prom.Metric, d *prom.Desc, t prom.ValueType, v float64, labels ...string) {
	m, err := prom.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prom.NewInvalidMetric(d, err)
	}
	ch <- m
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
