package plan

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

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
	// Shadow marks the proposed flow rule and concurrency mode: shadow,
	// appended to the flow rules in force instead of replacing them.
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
		if len(t.Times) > 0 && slices.Contains(rules.Resources, t.Resource) {
			bySize[t.Resource] = append(bySize[t.Resource], t)
		}
	}
	// The measured resources share the slots by the slot time they used.
	work := map[string]time.Duration{}
	var totalWork time.Duration
	for res, sizes := range bySize {
		for _, s := range sizes {
			for _, d := range s.Times {
				work[res] += d
			}
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
		docs = append(docs, merged)
	}
	queueMax := QueueJobTimes * p.SlotsTotal
	p.Notes = append(p.Notes, fmt.Sprintf("queue (flags of sluice serve, not rules): --queue-wait %s --queue-max %d: a job waits at most about %d job times",
		time.Duration(queueWait*float64(time.Second)), queueMax, QueueJobTimes))
	var y strings.Builder
	fmt.Fprintf(&y, "# sluice plan: %d backends, %d slots in all.\n", len(p.Backends), p.SlotsTotal)
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
// (with a comment line first) and a note when the document could not keep
// the rules in force.
func planResource(name string, sizes []Times, current *rules.Resource, slotsTotal int, work, totalWork, estimate time.Duration, in Input) (Resource, string, string) {
	r := Resource{Resource: name, Source: SourceEstimate, Sizes: []Size{}}
	var all []time.Duration
	for _, s := range sizes {
		all = append(all, s.Times...)
	}
	jobTime := estimate
	slots := float64(slotsTotal)
	if len(all) > 0 {
		r.Measured, r.Source, r.Samples = true, SourceMeasured, len(all)
		jobTime = mean(all)
		r.P95Millis = millis(p95(all))
		if totalWork > 0 {
			slots = float64(slotsTotal) * float64(work) / float64(totalWork)
		}
	}
	r.JobTimeMillis = millis(jobTime)
	rate := slots / jobTime.Seconds()
	r.SustainablePerSec = round(rate, 3)

	cost := proposeCost(sizes, current)
	costOf := func(size int) int {
		if cost == nil {
			return 1
		}
		if v, ok := cost.Values[strconv.Itoa(size)]; ok {
			return v
		}
		return max(cost.Default, 1)
	}
	// The mean cost per job, over the measured mix.
	avgCost, n := 0.0, 0
	for _, s := range sizes {
		m := mean(s.Times)
		r.Sizes = append(r.Sizes, Size{Size: s.Size, Samples: len(s.Times), JobTimeMillis: millis(m), Cost: costOf(s.Size)})
		avgCost += float64(len(s.Times) * costOf(s.Size))
		n += len(s.Times)
	}
	if n > 0 {
		avgCost /= float64(n)
	} else if cost != nil {
		avgCost = float64(max(cost.Default, 1))
	} else {
		avgCost = 1
	}
	dearest := 1
	if cost != nil {
		dearest = max(dearest, cost.Default)
		for _, v := range cost.Values {
			dearest = max(dearest, v)
		}
	}
	var note string
	window, threshold := windows[len(windows)-1], 0.0
	for _, w := range windows {
		threshold = math.Floor(rate*avgCost*w.Seconds()*100) / 100
		if window = w; threshold >= float64(dearest) {
			break
		}
	}
	threshold = max(threshold, 0.01)
	if threshold < float64(dearest) {
		note = fmt.Sprintf("%s: the farm sustains only %.2f cost per 10s, less than the dearest size's cost %d: such jobs could never pass", name, threshold, dearest)
	}
	concurrency := max(int(math.Ceil(slots-1e-9)), 1)
	r.Proposed = Proposal{
		FlowThreshold:    threshold,
		Window:           window.String(),
		Concurrency:      concurrency,
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

	doc, docNote := document(name, current, r.Proposed, cost, in.Shadow)
	if docNote != "" {
		note = strings.TrimPrefix(note+"; "+docNote, "; ")
	}
	what := fmt.Sprintf("measured, %d jobs, mean %s, p95 %s", r.Samples, jobTime.Round(time.Millisecond), time.Duration(r.P95Millis*float64(time.Millisecond)).Round(time.Millisecond))
	if !r.Measured {
		what = fmt.Sprintf("NOT measured: the estimate of %s per job", estimate)
	}
	head := fmt.Sprintf("# %s: %s: %.2f jobs/s on %.3g of %d slots\n", name, what, r.SustainablePerSec, slots, slotsTotal)
	return r, head + doc, note
}

// proposeCost is the cost rule a plan proposes: with two sizes or more
// measured, each costs its job time over the cheapest's, rounded (the
// cheapest costs 1), on top of the costs in force for the sizes not
// measured; otherwise the cost rule in force.
func proposeCost(sizes []Times, current *rules.Resource) *rules.CostRule {
	var existing *rules.CostRule
	if current != nil && current.Cost != nil && current.Cost.Param == rules.ParamSize {
		existing = &rules.CostRule{Param: current.Cost.Param, Default: current.Cost.Default, Values: maps.Clone(current.Cost.Values)}
	}
	var measured []Times
	for _, s := range sizes {
		if s.Size > 0 {
			measured = append(measured, s)
		}
	}
	if len(measured) < 2 {
		return existing
	}
	cheapest := time.Duration(math.MaxInt64)
	for _, s := range measured {
		cheapest = min(cheapest, mean(s.Times))
	}
	values := map[string]int{}
	if existing != nil {
		maps.Copy(values, existing.Values)
	}
	for _, s := range measured {
		c := int(math.Round(float64(mean(s.Times)) / float64(cheapest)))
		values[strconv.Itoa(s.Size)] = min(max(c, 1), 1000)
	}
	maps.DeleteFunc(values, func(_ string, v int) bool { return v == 1 })
	if len(values) == 0 {
		return nil
	}
	return &rules.CostRule{Param: rules.ParamSize, Values: values}
}

// document is the resource's proposed rule document as YAML: the document
// in force with the proposed flow rule, concurrency and cost, its hotspot
// and ban rules kept. When that would not validate, it is the proposal
// alone, and the note says why.
func document(name string, current *rules.Resource, p Proposal, cost *rules.CostRule, shadow bool) (string, string) {
	w, _ := time.ParseDuration(p.Window)
	flow := rules.FlowRule{Threshold: p.FlowThreshold, Window: rules.Duration(w)}
	doc := &rules.Resource{Resource: name, Concurrency: p.Concurrency, Cost: cost}
	if current != nil {
		doc.Hotspot, doc.Ban = current.Hotspot, current.Ban
		if len(current.Flow) > 0 && current.Flow[0].Behavior == rules.BehaviorThrottle {
			flow.Behavior, flow.MaxQueue = rules.BehaviorThrottle, current.Flow[0].MaxQueue
		}
		if shadow {
			doc.Flow = slices.Clone(current.Flow)
		}
	}
	doc.Flow = append(doc.Flow, flow)
	var note string
	if err := check(doc); err != nil {
		note = fmt.Sprintf("%s: the rules in force could not be kept alongside the proposal (%v): the document holds the proposal alone", name, err)
		doc = &rules.Resource{Resource: name, Flow: []rules.FlowRule{flow}, Concurrency: p.Concurrency, Cost: cost}
		if err := check(doc); err != nil {
			note = fmt.Sprintf("%s: the proposal does not validate: %v", name, err)
		}
	}
	out, err := rules.Encode(rules.Document{Resource: doc})
	if err == nil && shadow {
		out, err = markShadow(out)
	}
	if err != nil {
		return "", fmt.Sprintf("%s: %v", name, err)
	}
	return string(out), note
}

// check validates doc as a rule set of its own. Only the enforcing form is
// checked: the shadow marks are added to the text afterwards.
func check(doc *rules.Resource) error {
	_, err := rules.Build([]rules.Document{{File: "plan", Index: 1, Resource: doc}})
	return err
}

// markShadow adds mode: shadow to the last flow rule of an encoded
// document and turns its concurrency into {limit: N, mode: shadow}.
func markShadow(src []byte) ([]byte, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(src, &root); err != nil {
		return nil, fmt.Errorf("shadow: %w", err)
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("shadow: not a mapping")
	}
	m := root.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i].Value, m.Content[i+1]
		switch {
		case k == "flow" && v.Kind == yaml.SequenceNode && len(v.Content) > 0:
			setKey(v.Content[len(v.Content)-1], "mode", "shadow")
		case k == "concurrency" && v.Kind == yaml.ScalarNode:
			m.Content[i+1] = &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle, Content: []*yaml.Node{
				{Kind: yaml.ScalarNode, Value: "limit"}, {Kind: yaml.ScalarNode, Tag: "!!int", Value: v.Value},
				{Kind: yaml.ScalarNode, Value: "mode"}, {Kind: yaml.ScalarNode, Value: "shadow"},
			}}
		case k == "concurrency" && v.Kind == yaml.MappingNode:
			setKey(v, "mode", "shadow")
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return nil, fmt.Errorf("shadow: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("shadow: %w", err)
	}
	return buf.Bytes(), nil
}

// setKey sets key to value in mapping m, adding it when absent.
func setKey(m *yaml.Node, key, value string) {
	if m.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = &yaml.Node{Kind: yaml.ScalarNode, Value: value}
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, &yaml.Node{Kind: yaml.ScalarNode, Value: value})
}

func millis(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}
