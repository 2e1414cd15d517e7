package plan

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/rules"
)

// QueueJobTimes is how many job times a job may wait for a slot under the
// proposed queue settings.
const QueueJobTimes = 3

// Where a resource's job time comes from.
const (
	SourceMeasured = "measured"
	SourceEstimate = "estimate"
)

// windows are the flow windows a plan may propose, shortest first.
var windows = [...]time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second}

// Plan is a capacity plan: GET /api/plan's body.
type Plan struct {
	Backends   []Backend  `json:"backends"`
	SlotsTotal int        `json:"slots_total"`
	Resources  []Resource `json:"resources"`
	// Notes say what the numbers rest on: estimates, shares, the queue's
	// flags, rules that could not be merged.
	Notes []string `json:"notes"`
	// YAML holds the proposed rule documents, one per resource, ready for
	// `sluice rules apply -f -`.
	YAML string `json:"yaml"`
}

// Backend is one backend of the farm and its slots.
type Backend struct {
	Name  string `json:"name"`
	Slots int    `json:"slots"`
}

// Resource is one resource's measurements and proposal.
type Resource struct {
	Resource string `json:"resource"`
	// Measured says whether any of its jobs was measured; when not, the
	// configured estimate stands in for JobTimeMillis.
	Measured      bool    `json:"measured"`
	Samples       int     `json:"samples"`
	JobTimeMillis float64 `json:"job_time_ms"` // mean slot time per job
	P95Millis     float64 `json:"p95_ms"`
	Source        string  `json:"source"` // SourceMeasured or SourceEstimate
	Sizes         []Size  `json:"sizes"`
	// SustainablePerSec is the jobs per second the resource's slots
	// complete: its slots / JobTime.
	SustainablePerSec float64  `json:"sustainable_per_sec"`
	Proposed          Proposal `json:"proposed"`
}

// Size is one size's measurements and cost weight.
type Size struct {
	Size          int     `json:"size"`
	Samples       int     `json:"samples"`
	JobTimeMillis float64 `json:"job_time_ms"`
	Cost          int     `json:"cost"`
}

// Proposal is the rules a plan proposes for one resource.
type Proposal struct {
	// FlowThreshold is the cost admitted per Window.
	FlowThreshold float64 `json:"flow_threshold"`
	Window        string  `json:"window"`
	Concurrency   int     `json:"concurrency"`
	// Cost is the weight of each size, by size.
	Cost map[string]int `json:"cost"`
	// QueueWaitSeconds is how long a job may wait for a slot: about
	// QueueJobTimes job times.
	QueueWaitSeconds float64 `json:"queue_wait_s"`
}

// Input is what Compute plans from.
type Input struct {
	Backends []Backend
	Times    []Times
	// Estimate is the job time assumed for a resource with no measured
	// job; EstimateSource says where it comes from, for the notes.
	Estimate       time.Duration
	EstimateSource string
	// Rules are the rules in force (nil: none); a proposal keeps their
	// hotspot and ban rules.
	Rules *rules.Set
	// Shadow proposes the flow rule in mode: shadow next to every rule in
	// force, kept as it is (see shadowDocument).
	Shadow bool
}

// Compute makes the plan for in. Resources are rules.Resources, in order.
func Compute(in Input) Plan {
	p := Plan{Backends: slices.Clone(in.Backends), Resources: []Resource{}, Notes: []string{}}
	if p.Backends == nil {
		p.Backends = []Backend{}
	}
	for _, b := range in.Backends {
		p.SlotsTotal += b.Slots
	}
	if p.SlotsTotal == 0 {
		p.Notes = append(p.Notes, "the farm has no slots: nothing can be planned")
		return p
	}
	estimate := in.Estimate
	if estimate <= 0 {
		estimate = dispatch.DefaultJobTime
	}
	bySize := map[string][]Times{}
	for _, t := range in.Times {
		if t.n() > 0 && slices.Contains(rules.Resources, t.Resource) {
			bySize[t.Resource] = append(bySize[t.Resource], t)
		}
	}
	// The measured resources share the slots by the slot time they used
	// over the recorder's span.
	work := map[string]time.Duration{}
	var totalWork time.Duration
	for res, sizes := range bySize {
		for _, s := range sizes {
			work[res] += s.total()
		}
		totalWork += work[res]
	}
	if len(bySize) > 1 {
		p.Notes = append(p.Notes, fmt.Sprintf("%d resources share the farm's %d slots in proportion to the slot time their measured jobs used; each one's share is in its concurrency", len(bySize), p.SlotsTotal))
	}
	var docs []string
	queueWait := 0.0
	for _, name := range rules.Resources {
		var current *rules.Resource
		if in.Rules != nil {
			for _, d := range in.Rules.Docs {
				if d.Resource != nil && d.Resource.Resource == name {
					current = d.Resource
				}
			}
		}
		r, merged, note := planResource(name, bySize[name], current, p.SlotsTotal, work[name], totalWork, estimate, in)
		p.Resources = append(p.Resources, r)
		if !r.Measured {
			p.Notes = append(p.Notes, fmt.Sprintf("%s: no job measured yet: planned with the configured estimate of %s per job (%s), as if it had the farm alone",
				name, estimate, cmp.Or(in.EstimateSource, "the dispatcher's default")))
		}
		if note != "" {
			p.Notes = append(p.Notes, note)
		}
		queueWait = max(queueWait, r.Proposed.QueueWaitSeconds)
		if merged != "" {
			docs = append(docs, merged)
		}
	}
	queueMax := QueueJobTimes * p.SlotsTotal
	p.Notes = append(p.Notes, fmt.Sprintf("queue (flags of sluice serve, not rules): --queue-wait %s --queue-max %d: a job waits at most about %d job times",
		time.Duration(queueWait*float64(time.Second)), queueMax, QueueJobTimes))
	var y strings.Builder
	fmt.Fprintf(&y, "# sluice plan: %s, %s in all.\n", plural(len(p.Backends), "backend"), plural(p.SlotsTotal, "slot"))
	fmt.Fprintf(&y, "# Queue (sluice serve flags, not rules): --queue-wait %s --queue-max %d\n",
		time.Duration(queueWait*float64(time.Second)), queueMax)
	for i, d := range docs {
		if i > 0 {
			y.WriteString("---\n")
		}
		y.WriteString(d)
	}
	p.YAML = y.String()
	return p
}

// planResource plans one resource: its figures, its rule document as YAML
// (with a comment line first; empty when no document that validates could
// be made) and a note on what the document could not keep or propose.
func planResource(name string, sizes []Times, current *rules.Resource, slotsTotal int, work, totalWork, estimate time.Duration, in Input) (Resource, string, string) {
	r := Resource{Resource: name, Source: SourceEstimate, Sizes: []Size{}}
	var all []time.Duration
	var n int
	var total time.Duration
	for _, s := range sizes {
		all = append(all, s.Times...)
		n += s.n()
		total += s.total()
	}
	jobTime := estimate
	slots := float64(slotsTotal)
	if n > 0 {
		r.Measured, r.Source, r.Samples = true, SourceMeasured, n
		jobTime = total / time.Duration(n)
		if len(all) > 0 {
			r.P95Millis = millis(p95(all))
		}
		if totalWork > 0 {
			slots = float64(slotsTotal) * float64(work) / float64(totalWork)
		}
	}
	r.JobTimeMillis = millis(jobTime)
	rate := slots / jobTime.Seconds()
	r.SustainablePerSec = round(rate, 3)

	var notes []string
	existing := costInForce(current)
	cost := proposeCost(sizes, existing)
	if in.Shadow {
		// A cost rule has no shadow mode: the one in force stays, and the
		// shadow threshold counts with it.
		if !reflect.DeepEqual(cost, existing) {
			notes = append(notes, fmt.Sprintf("%s: shadow: the cost in force is kept (a cost rule has no shadow mode); the plan without --shadow proposes cost %s", name, costString(cost)))
		}
		cost = existing
	}
	window, threshold, ok := flowFor(sizes, cost, rate)
	capped := 0
	for i := 0; !ok && !in.Shadow && i < 1000; i++ {
		// A cost over the threshold would never pass (and does not
		// validate): cap the costs at what the 10s threshold admits; that
		// lowers the mean cost, so again until it holds.
		capped = max(int(threshold), 1)
		cost = capCost(cost, capped)
		window, threshold, ok = flowFor(sizes, cost, rate)
	}
	if capped > 0 {
		notes = append(notes, fmt.Sprintf("%s: the farm completes too few jobs per 10s for the costs measured or in force: costs capped at %d, so that every size can pass", name, capped))
	}
	for _, s := range sizes {
		r.Sizes = append(r.Sizes, Size{Size: s.Size, Samples: s.n(), JobTimeMillis: millis(s.mean()), Cost: costOf(cost, s.Size)})
	}
	r.Proposed = Proposal{
		FlowThreshold:    threshold,
		Window:           window.String(),
		Concurrency:      concurrencyFor(slots),
		Cost:             map[string]int{},
		QueueWaitSeconds: max(math.Ceil(QueueJobTimes*jobTime.Seconds()), 1),
	}
	if cost != nil {
		maps.Copy(r.Proposed.Cost, cost.Values)
	}
	for _, s := range r.Sizes {
		if s.Size > 0 {
			r.Proposed.Cost[strconv.Itoa(s.Size)] = s.Cost
		}
	}

	var doc, docNote string
	if in.Shadow {
		doc, docNote = shadowDocument(name, current, r.Proposed)
	} else {
		doc, docNote = document(name, current, r.Proposed, cost)
	}
	if docNote != "" {
		notes = append(notes, docNote)
	}
	note := strings.Join(notes, "; ")
	if doc == "" {
		return r, "", note
	}
	what := fmt.Sprintf("measured, %d jobs, mean %s, p95 %s", r.Samples, jobTime.Round(time.Millisecond), time.Duration(r.P95Millis*float64(time.Millisecond)).Round(time.Millisecond))
	if !r.Measured {
		what = fmt.Sprintf("NOT measured: the estimate of %s per job", estimate)
	}
	head := fmt.Sprintf("# %s: %s: %.2f jobs/s on %.3g of %d slots\n", name, what, r.SustainablePerSec, slots, slotsTotal)
	return r, head + doc, note
}

// concurrencyFor is the concurrency of a resource with slots slots (its
// share of the farm's). The engine counts a job from its admission to its
// end, queue wait and output fetch included, so the concurrency is the
// resource's slots plus its share of the proposed queue (--queue-max =
// QueueJobTimes·S): a concurrency of only the slots would hold the
// resource below what its slots complete and leave the queue empty.
func concurrencyFor(slots float64) int {
	return max(int(math.Ceil(slots-1e-9)), 1) + int(math.Ceil(QueueJobTimes*slots-1e-9))
}

// flowFor is the flow rule that admits rate jobs per second of sizes' mix
// under cost: sentinel refuses a call when the window's count plus its cost
// exceeds the threshold, and costs are whole numbers, so a threshold
// admits its whole part only. It is the shortest window (1s, 2s, 5s, 10s)
// whose whole capacity floor(rate·avgCost·w) is more than 90% of
// rate·avgCost·w (so that what the engine admits stays within 10% of the
// plan, exactly 90% being at the edge) and admits the dearest size; else 10s with its whole
// capacity (at least 1). ok is false when even that does not admit the
// dearest size.
func flowFor(sizes []Times, cost *rules.CostRule, rate float64) (time.Duration, float64, bool) {
	avgCost, n := 0.0, 0
	for _, s := range sizes {
		avgCost += float64(s.n() * costOf(cost, s.Size))
		n += s.n()
	}
	if n > 0 {
		avgCost /= float64(n)
	} else {
		avgCost = float64(costOf(cost, 0))
	}
	dearest := 1
	if cost != nil {
		dearest = max(dearest, cost.Default)
		for _, v := range cost.Values {
			dearest = max(dearest, v)
		}
	}
	for _, w := range windows {
		c := rate * avgCost * w.Seconds()
		th := math.Floor(c + 1e-9)
		if th >= float64(dearest) && th > 0.9*c+1e-9 {
			return w, th, true
		}
	}
	w := windows[len(windows)-1]
	th := max(math.Floor(rate*avgCost*w.Seconds()+1e-9), 1)
	return w, th, th >= float64(dearest)
}

// costOf is size's cost under cost (nil: 1).
func costOf(cost *rules.CostRule, size int) int {
	if cost == nil {
		return 1
	}
	if v, ok := cost.Values[strconv.Itoa(size)]; ok {
		return v
	}
	return max(cost.Default, 1)
}

// capCost is cost with every weight at most limit.
func capCost(cost *rules.CostRule, limit int) *rules.CostRule {
	if cost == nil {
		return nil
	}
	out := &rules.CostRule{Param: cost.Param, Default: min(cost.Default, limit), Values: map[string]int{}}
	for k, v := range cost.Values {
		out.Values[k] = min(v, limit)
	}
	return out
}

// costString writes cost for a note.
func costString(cost *rules.CostRule) string {
	if cost == nil {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(cost.Values)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, cost.Values[k]))
	}
	if cost.Default > 0 {
		parts = append(parts, fmt.Sprintf("default: %d", cost.Default))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// costInForce is a copy of current's cost rule on size (nil: none).
func costInForce(current *rules.Resource) *rules.CostRule {
	if current == nil || current.Cost == nil || current.Cost.Param != rules.ParamSize {
		return nil
	}
	return &rules.CostRule{Param: current.Cost.Param, Default: current.Cost.Default, Values: maps.Clone(current.Cost.Values)}
}

// proposeCost is the cost rule a plan proposes: with two sizes or more
// measured, each costs its mean job time over the cheapest's, rounded (the
// cheapest costs 1), on top of the cost rule in force (its default and the
// sizes not measured); otherwise the cost rule in force.
func proposeCost(sizes []Times, existing *rules.CostRule) *rules.CostRule {
	var measured []Times
	for _, s := range sizes {
		if s.Size > 0 && s.n() > 0 {
			measured = append(measured, s)
		}
	}
	if len(measured) < 2 {
		return existing
	}
	cheapest := time.Duration(math.MaxInt64)
	for _, s := range measured {
		cheapest = min(cheapest, s.mean())
	}
	values := map[string]int{}
	def := 0
	if existing != nil {
		maps.Copy(values, existing.Values)
		def = existing.Default
	}
	for _, s := range measured {
		c := int(math.Round(float64(s.mean()) / float64(max(cheapest, 1))))
		values[strconv.Itoa(s.Size)] = min(max(c, 1), 1000)
	}
	// A size costing 1 needs no entry, unless the default is dearer.
	maps.DeleteFunc(values, func(_ string, v int) bool { return v == 1 && def <= 1 })
	if len(values) == 0 && def <= 1 {
		return nil
	}
	return &rules.CostRule{Param: rules.ParamSize, Default: def, Values: values}
}

// document is the resource's proposed rule document as YAML: the document
// in force with the proposed flow rule, concurrency and cost, its hotspot
// and ban rules kept. When that would not validate, it is the proposal
// alone, and the note says why; when that does not validate either, there
// is no document, and the note says why.
func document(name string, current *rules.Resource, p Proposal, cost *rules.CostRule) (string, string) {
	w, _ := time.ParseDuration(p.Window)
	flow := rules.FlowRule{Threshold: p.FlowThreshold, Window: rules.Duration(w)}
	doc := &rules.Resource{Resource: name, Concurrency: p.Concurrency, Cost: cost}
	if current != nil {
		doc.Hotspot, doc.Ban = current.Hotspot, current.Ban
		if len(current.Flow) > 0 && current.Flow[0].Behavior == rules.BehaviorThrottle {
			flow.Behavior, flow.MaxQueue = rules.BehaviorThrottle, current.Flow[0].MaxQueue
		}
	}
	doc.Flow = []rules.FlowRule{flow}
	var note string
	if err := check(doc); err != nil {
		note = fmt.Sprintf("%s: the rules in force could not be kept alongside the proposal (%v): the document holds the proposal alone", name, err)
		doc = &rules.Resource{Resource: name, Flow: []rules.FlowRule{flow}, Concurrency: p.Concurrency, Cost: cost}
		if err := check(doc); err != nil {
			return "", fmt.Sprintf("%s: no document proposed: the proposal does not validate: %v", name, err)
		}
	}
	return encode(name, doc, note)
}

// shadowDocument is the resource's document for a shadow plan: every rule
// in force as it is (a cost rule has no shadow mode, and a resource has
// one concurrency), its shadow flow rules (an earlier shadow plan's)
// replaced by the proposed flow rule in mode shadow, and the proposed
// concurrency in mode shadow where no enforcing concurrency is in force.
// When that does not validate there is no document, and the note says why.
func shadowDocument(name string, current *rules.Resource, p Proposal) (string, string) {
	w, _ := time.ParseDuration(p.Window)
	flow := rules.FlowRule{Threshold: p.FlowThreshold, Window: rules.Duration(w), Mode: rules.Shadow}
	doc := &rules.Resource{Resource: name}
	if current != nil {
		c := *current
		doc = &c
		doc.Flow = nil
		for _, f := range current.Flow {
			if !f.Mode.IsShadow() {
				doc.Flow = append(doc.Flow, f)
			}
		}
		if len(doc.Flow) > 0 && doc.Flow[0].Behavior == rules.BehaviorThrottle {
			flow.Behavior, flow.MaxQueue = rules.BehaviorThrottle, doc.Flow[0].MaxQueue
		}
	}
	doc.Flow = append(doc.Flow, flow)
	var note string
	if doc.Concurrency == 0 || doc.ConcurrencyMode.IsShadow() {
		doc.Concurrency, doc.ConcurrencyMode = p.Concurrency, rules.Shadow
	} else if doc.Concurrency != p.Concurrency {
		note = fmt.Sprintf("%s: shadow: the concurrency in force (%d) is kept; the plan proposes %d (a resource has one concurrency rule: try it with the plan without --shadow)", name, doc.Concurrency, p.Concurrency)
	}
	if err := check(doc); err != nil {
		return "", fmt.Sprintf("%s: no shadow document proposed: the rules in force and the proposal do not validate together: %v", name, err)
	}
	return encode(name, doc, note)
}

// encode writes doc as YAML.
func encode(name string, doc *rules.Resource, note string) (string, string) {
	out, err := rules.Encode(rules.Document{Resource: doc})
	if err != nil {
		return "", fmt.Sprintf("%s: no document proposed: %v", name, err)
	}
	return string(out), note
}

// check validates doc as a rule set of its own.
func check(doc *rules.Resource) error {
	_, err := rules.Build([]rules.Document{{File: "plan", Index: 1, Resource: doc}})
	return err
}

func millis(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}

// plural is "1 slot", "2 slots".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
