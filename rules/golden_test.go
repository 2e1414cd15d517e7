package rules_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/hotspot"
	"github.com/alibaba/sentinel-golang/core/system"

	"github.com/sluicehq/sluice/rules"
)

var update = flag.Bool("update", false, "rewrite the golden files' expected output")

// goldenSep separates a golden file's input from its expected output: the
// compiled rules as JSON, or the exact error text.
const goldenSep = "\n=== want ===\n"

// TestGolden runs every testdata/rules/golden/*.txt case: the input is
// parsed as a file named after the case, built and compiled, and the result
// compared with the expected output.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("../testdata/rules/golden/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), goldenSep)
			if !ok && !*update {
				t.Fatalf("%s has no %q separator", file, strings.TrimSpace(goldenSep))
			}
			got := compileForGolden(name+".yaml", []byte(input))
			if *update {
				if err := os.WriteFile(file, []byte(input+goldenSep+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != want {
				t.Errorf("output differs (run go test ./rules -update to accept)\n--- got ---\n%s\n--- want ---\n%s", got, want)
			}
		})
	}
}

type hotspotView struct {
	ID                string           `json:"id"`
	Resource          string           `json:"resource"`
	MetricType        string           `json:"metricType"`
	ControlBehavior   string           `json:"controlBehavior"`
	ParamIndex        int              `json:"paramIndex"`
	ParamKey          string           `json:"paramKey"`
	Threshold         int64            `json:"threshold"`
	MaxQueueingTimeMs int64            `json:"maxQueueingTimeMs"`
	BurstCount        int64            `json:"burstCount"`
	DurationInSec     int64            `json:"durationInSec"`
	ParamsMaxCapacity int64            `json:"paramsMaxCapacity"`
	SpecificItems     map[string]int64 `json:"specificItems"`
}

type goldenView struct {
	Flow     []*flow.Rule        `json:"flow"`
	Hotspot  []hotspotView       `json:"hotspot"`
	System   []*system.Rule      `json:"system"`
	Own      map[string]ownRules `json:"own"`
	CPUUsage float64             `json:"cpu_usage"`
	GPU      *rules.GPU          `json:"gpu"`
	// Shadow holds the rules in mode shadow, apart; absent when none.
	Shadow *shadowView `json:"shadow,omitempty"`
}

type shadowView struct {
	Flow        []*flow.Rule   `json:"flow,omitempty"`
	Hotspot     []hotspotView  `json:"hotspot,omitempty"`
	System      []*system.Rule `json:"system,omitempty"`
	Concurrency map[string]int `json:"concurrency,omitempty"`
}

func hotspotViews(hs []*hotspot.Rule) []hotspotView {
	var out []hotspotView
	for _, h := range hs {
		items := make(map[string]int64, len(h.SpecificItems))
		for k, n := range h.SpecificItems {
			items[k.(string)] = n
		}
		out = append(out, hotspotView{
			ID: h.ID, Resource: h.Resource, MetricType: h.MetricType.String(), ControlBehavior: h.ControlBehavior.String(),
			ParamIndex: h.ParamIndex, ParamKey: h.ParamKey, Threshold: h.Threshold, MaxQueueingTimeMs: h.MaxQueueingTimeMs,
			BurstCount: h.BurstCount, DurationInSec: h.DurationInSec, ParamsMaxCapacity: h.ParamsMaxCapacity, SpecificItems: items,
		})
	}
	return out
}

type ownRules struct {
	Cost *rules.CostRule `json:"cost,omitempty"`
	Ban  *rules.BanRule  `json:"ban,omitempty"`
}

func compileForGolden(name string, input []byte) string {
	docs, err := rules.Parse(name, input)
	if err != nil {
		return err.Error() + "\n"
	}
	set, err := rules.Build(docs)
	if err != nil {
		return err.Error() + "\n"
	}
	s := set.Sentinel(func(r string) string { return r })
	v := goldenView{Flow: s.Flow, System: s.System, Own: map[string]ownRules{}, CPUUsage: set.System.CPUUsage, GPU: set.GPU}
	v.Hotspot = hotspotViews(s.Hotspot)
	sh := set.SentinelOf(rules.Shadow, func(r string) string { return r + "(shadow)" })
	shadow := &shadowView{Flow: sh.Flow, Hotspot: hotspotViews(sh.Hotspot), System: sh.System, Concurrency: map[string]int{}}
	for n, r := range set.Resources {
		if r.ConcurrencyMode.IsShadow() {
			shadow.Concurrency[n] = r.Concurrency
		}
	}
	if len(shadow.Flow)+len(shadow.Hotspot)+len(shadow.System)+len(shadow.Concurrency) > 0 {
		v.Shadow = shadow
	}
	names := make([]string, 0, len(set.Resources))
	for n := range set.Resources {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := set.Resources[n]
		if r.Cost != nil || r.Ban != nil {
			v.Own[n] = ownRules{Cost: r.Cost, Ban: r.Ban}
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return "encode: " + err.Error() + "\n"
	}
	return b.String()
}
