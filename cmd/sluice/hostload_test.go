package main

import "testing"

// TestServeTestRulesIgnoreTheHostsLoad: the tests' gateways (startServe)
// run on testdata/rules, so no rule there may measure what other processes
// of the machine do. A cpu_usage rule there made
// TestAsyncJobShowsItsQueuePosition fail whenever the host was busy.
func TestServeTestRulesIgnoreTheHostsLoad(t *testing.T) {
	set, source, err := loadRules("../../testdata/rules", true)
	if err != nil {
		t.Fatal(err)
	}
	if set.System.CPUUsage != 0 || set.System.Load != 0 {
		t.Fatalf("%s turns on host-dependent rules: cpu_usage %v, load %v", source, set.System.CPUUsage, set.System.Load)
	}
}
