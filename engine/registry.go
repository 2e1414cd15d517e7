package engine

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/hotspot"

	"github.com/sluicehq/sluice/rules"
)

// sentinelRules is the bridge between engines and sentinel-golang's rule
// managers, which are process-wide: each LoadRules replaces every rule of
// its kind. It loads the union of the rules of every live engine, each
// under its own namespace, so that engines in one process each enforce
// their own. It is a package variable because sentinel-golang's managers
// are.
var sentinelRules = &registry{live: make(map[string]*sentinelSet)}

// registry holds the rules of every live engine by namespace.
type registry struct {
	mu   sync.Mutex
	live map[string]*sentinelSet
}

// sentinelSet is what an engine loads into sentinel-golang: its reject
// flow rules and its hotspot rules. Concurrency, system rules and
// throttling are the engine's own.
type sentinelSet struct {
	flow    []*flow.Rule
	hotspot []*hotspot.Rule
}

// claim reserves ns for a new engine.
func (g *registry) claim(ns string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.live[ns]; ok {
		return fmt.Errorf("engine namespace %q is in use by a live engine: give each engine of a process its own Options.Namespace", ns)
	}
	g.live[ns] = &sentinelSet{}
	return nil
}

// load replaces ns's rules and loads the union into sentinel-golang; if
// sentinel-golang refuses it, ns keeps its previous rules.
func (g *registry) load(ns string, s *rules.Sentinel) error {
	set := &sentinelSet{}
	for _, f := range s.Flow {
		if f.ControlBehavior != flow.Throttling {
			set.flow = append(set.flow, f)
		}
	}
	for _, h := range s.Hotspot {
		h2 := *h
		h2.ControlBehavior = hotspotBehavior
		set.hotspot = append(set.hotspot, &h2)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	prev := g.live[ns]
	g.live[ns] = set
	if err := g.loadLocked(); err != nil {
		g.live[ns] = prev
		if rerr := g.loadLocked(); rerr != nil {
			return fmt.Errorf("%w (and restoring the previous rules: %v)", err, rerr)
		}
		return err
	}
	return nil
}

// release takes ns's rules out and frees the namespace.
func (g *registry) release(ns string, log *slog.Logger) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.live, ns)
	if err := g.loadLocked(); err != nil {
		log.Warn("taking the engine's rules out of sentinel-golang", slog.Any("error", err))
	}
}

func (g *registry) loadLocked() error {
	var fl []*flow.Rule
	var hs []*hotspot.Rule
	names := make([]string, 0, len(g.live))
	for ns := range g.live {
		names = append(names, ns)
	}
	slices.Sort(names)
	for _, ns := range names {
		fl = append(fl, g.live[ns].flow...)
		hs = append(hs, g.live[ns].hotspot...)
	}
	if _, err := flow.LoadRules(fl); err != nil {
		return fmt.Errorf("flow rules: %w", err)
	}
	if _, err := hotspot.LoadRules(hs); err != nil {
		return fmt.Errorf("hotspot rules: %w", err)
	}
	return nil
}
