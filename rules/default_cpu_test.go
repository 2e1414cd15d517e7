package rules_test

import (
	"testing"

	"github.com/sluicehq/sluice/rules"
)

// TestDefaultRulesLeaveHostMeasuresOff: the built-in rules turn on no rule
// that a busy neighbour can trip. cpu_usage measures the gateway's own
// cgroup, which is its alone only in a container or service of its own, so
// it stays off by default; load is the whole machine's.
func TestDefaultRulesLeaveHostMeasuresOff(t *testing.T) {
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	if set.System.CPUUsage != 0 {
		t.Errorf("the built-in rules turn cpu_usage on (%v)", set.System.CPUUsage)
	}
	if set.System.Load != 0 {
		t.Errorf("the built-in rules turn load on (%v)", set.System.Load)
	}
}
