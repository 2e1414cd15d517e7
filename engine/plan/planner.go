package plan

import (
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/rules"
)

// Config configures a Planner.
type Config struct {
	// Farm reports the backends and their slots (farm.Farm.Stats).
	Farm func() dispatch.Stats
	// Times holds the measured job times.
	Times *Recorder
	// Rules returns the rules in force (engine.Engine.Rules); nil: none.
	Rules func() *rules.Set
	// Estimate is the job time assumed for a resource none of whose jobs
	// has been measured (0: dispatch.DefaultJobTime); EstimateSource names
	// it in the plan's notes ("--job-estimate").
	Estimate       time.Duration
	EstimateSource string
}

// Planner computes plans from the live farm. Make one with New; it is safe
// for concurrent use.
type Planner struct{ cfg Config }

// New checks cfg and returns a Planner.
func New(cfg Config) (*Planner, error) {
	if cfg.Farm == nil || cfg.Times == nil {
		return nil, errors.New("plan: Farm and Times are required")
	}
	if cfg.Estimate < 0 {
		return nil, fmt.Errorf("plan: estimate: must be >= 0, got %s", cfg.Estimate)
	}
	if cfg.Estimate == 0 {
		cfg.Estimate, cfg.EstimateSource = dispatch.DefaultJobTime, "the dispatcher's default"
	}
	return &Planner{cfg: cfg}, nil
}

// Plan computes the plan now; shadow proposes the flow rule in mode:
// shadow next to the rules in force, which stay as they are.
func (p *Planner) Plan(shadow bool) Plan {
	st := p.cfg.Farm()
	in := Input{Times: p.cfg.Times.Snapshot(), Estimate: p.cfg.Estimate, EstimateSource: p.cfg.EstimateSource, Shadow: shadow}
	out := 0
	for _, b := range st.Backends {
		in.Backends = append(in.Backends, Backend{Name: b.Name, Slots: b.Slots})
		if !b.Healthy {
			out++
		}
	}
	if p.cfg.Rules != nil {
		in.Rules = p.cfg.Rules()
	}
	pl := Compute(in)
	if out > 0 {
		pl.Notes = append(pl.Notes, fmt.Sprintf("%d of %d backends are out of the farm now; the plan counts every configured slot", out, len(st.Backends)))
	}
	return pl
}
