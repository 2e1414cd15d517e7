package prometheus_test

import (
	"testing"

	"github.com/sluicehq/sluice/adapters/prometheus"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

// TestShadowRefusals: the calls a shadow rule would refuse are counted in
// sluice_shadow_refusals_total by resource and kind — and admitted, as
// sluice_requests_total says — with every resource's and kind's series
// there from the start.
func TestShadowRefusals(t *testing.T) {
	eng := newEngine(t, `resource: ddcolor_person
flow: [{threshold: 10}, {threshold: 2, mode: shadow}]
hotspot: [{param: origin, threshold: 1, mode: shadow}]
`)
	exp := prometheus.New(prometheus.Config{Engine: eng})
	toks, refused := guard(t, eng, 4, engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.7", Size: 512})
	defer func() {
		for _, tok := range toks {
			tok.Exit(nil)
		}
	}()
	if len(toks) != 4 || len(refused) != 0 {
		t.Fatalf("admitted %d, refused %v: shadow rules must refuse nothing", len(toks), refused)
	}
	// The hotspot (checked first) would refuse the calls after the first;
	// the first passes both.
	if got := value(t, exp.Registry(), "sluice_shadow_refusals_total", "resource", "ddcolor_person", "kind", "hotspot"); got != 3 {
		t.Errorf("hotspot: %v, want 3", got)
	}
	if got := value(t, exp.Registry(), "sluice_shadow_refusals_total", "resource", "ddcolor_person", "kind", "flow"); got != 0 {
		t.Errorf("flow: %v, want 0", got)
	}
	if got := value(t, exp.Registry(), "sluice_requests_total", "resource", "ddcolor_person", "outcome", "admitted", "tier", "anonymous"); got != 4 {
		t.Errorf("admitted: %v, want 4", got)
	}
	for _, r := range rules.Resources {
		for _, k := range engine.Kinds {
			series(t, exp.Registry(), "sluice_shadow_refusals_total", "resource", r, "kind", string(k))
		}
	}
}
