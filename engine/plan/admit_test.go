package plan_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/alibaba/sentinel-golang/util"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/plan"
	"github.com/sluicehq/sluice/rules"
)

// idleCPU reports an idle gateway.
type idleCPU struct{}

func (idleCPU) CPUUsage() (float64, error) { return 0, nil }

// What a real engine admits under the proposed rules, at overload, is the
// planned rate within ±10%: sentinel refuses once the window's count plus
// a call's (whole) cost exceeds the threshold, so 2.66 per 1s would admit
// only 2 per second.
func TestProposedFlowAdmitsThePlannedRate(t *testing.T) {
	t.Setenv("HOME", t.TempDir()) // sentinel-golang's logs, if any
	for _, tc := range []struct {
		backends, slots int
		want            float64
	}{{4, 2, 2.667}, {2, 2, 1.333}} {
		t.Run(fmt.Sprintf("%d slots per 3s", tc.backends*tc.slots), func(t *testing.T) {
			var bs []plan.Backend
			for i := range tc.backends {
				bs = append(bs, plan.Backend{Name: fmt.Sprintf("gpu-%d", i), Slots: tc.slots})
			}
			c := clock.NewFake(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC))
			times := plan.Recorder{Clock: c}
			for range 20 {
				times.Record(rules.ResourceDDColorPerson, 512, 3*time.Second)
			}
			p := plan.Compute(plan.Input{Backends: bs, Times: times.Snapshot()})
			r := p.Resources[0]
			if r.Resource != rules.ResourceDDColorPerson || math.Abs(r.SustainablePerSec-tc.want) > 0.001 {
				t.Fatalf("planned %s at %v/s, want %v", r.Resource, r.SustainablePerSec, tc.want)
			}
			set, err := rules.ParseSet("plan.yaml", []byte(p.YAML))
			if err != nil {
				t.Fatal(err)
			}
			util.SetClock(clock.Sentinel(c))
			t.Cleanup(func() { util.SetClock(util.NewRealClock()) })
			e, err := engine.New(engine.Options{Clock: c, CPU: idleCPU{}, Namespace: t.Name() + "/"}, set)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			const seconds = 60
			admitted := 0
			for step := range seconds * 10 {
				if step > 0 {
					c.Advance(100 * time.Millisecond)
				}
				for range 5 { // 50 calls a second: overload
					tok, err := e.Guard(context.Background(), engine.Call{Resource: rules.ResourceDDColorPerson, Origin: "203.0.113.9", Size: 512})
					var ref *engine.Refusal
					switch {
					case err == nil:
						admitted++
						tok.Exit(nil)
					case errors.As(err, &ref):
					default:
						t.Fatalf("Guard: %v", err)
					}
				}
			}
			got := float64(admitted) / seconds
			if got < 0.9*r.SustainablePerSec-1e-9 || got > 1.1*r.SustainablePerSec+1e-9 {
				t.Errorf("the engine admitted %.3f/s (%d in %ds) under %g per %s, planned %.3f/s", got, admitted, seconds,
					r.Proposed.FlowThreshold, r.Proposed.Window, r.SustainablePerSec)
			}
			t.Logf("%g per %s: admitted %.3f/s, planned %.3f/s", r.Proposed.FlowThreshold, r.Proposed.Window, got, r.SustainablePerSec)
		})
	}
}
