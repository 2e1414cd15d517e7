package rules

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func mustParseOne(t *testing.T, src string) *Document {
	t.Helper()
	docs, err := Parse("t.yaml", []byte(src))
	if err != nil || len(docs) != 1 {
		t.Fatalf("parse: %v (%d documents)", err, len(docs))
	}
	return &docs[0]
}

// TestErrorLineColumn: validation and decoding errors carry the line and
// column of the field they name, in YAML and in JSON.
func TestErrorLineColumn(t *testing.T) {
	for _, tc := range []struct {
		name, src, path string
		line, column    int
	}{
		{"validation", "resource: ddcolor_person\nflow:\n  - threshold: -1\n", "flow[0].threshold", 3, 16},
		{"second document", "resource: ddcolor_person\n---\nresource: zimage_generate\nhotspot:\n  - {param: origin, threshold: 2, burst: -3}\n", "hotspot[0].burst", 5, 42},
		{"unknown field", "resource: ddcolor_person\nflow:\n  - threshold: 1\n    speed: 9\n", "flow[0].speed", 4, 12},
		{"wrong type", "resource: ddcolor_person\nconcurrency: lots\n", "concurrency", 2, 14},
		{"map value", "resource: zimage_generate\ncost:\n  param: size\n  values:\n    \"1024\": 0\n", `cost.values["1024"]`, 5, 13},
		{"system", "system:\n  cpu_usage: 1.5\n", "system.cpu_usage", 2, 14},
		{"missing field: its mapping", "resource: ddcolor_person\nban: {blocks: 3}\n", "ban.within", 2, 6},
		{"json", "{\"resource\": \"ddcolor_person\",\n \"flow\": [{\"threshold\": -1}]}\n", "flow[0].threshold", 2, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := Parse("t.yaml", []byte(tc.src))
			if err == nil {
				_, err = Build(docs)
			}
			var list Errors
			if !errors.As(err, &list) {
				t.Fatalf("err = %v, want Errors", err)
			}
			for _, e := range list {
				if e.Path == tc.path {
					if e.Line != tc.line || e.Column != tc.column {
						t.Fatalf("%s at %d:%d, want %d:%d (%v)", e.Path, e.Line, e.Column, tc.line, tc.column, e)
					}
					return
				}
			}
			t.Fatalf("no error at %s: %v", tc.path, err)
		})
	}
}

func TestLost(t *testing.T) {
	inForce := mustParseOne(t, `resource: zimage_generate
flow: [{threshold: 4}, {threshold: 20, window: 10s}]
hotspot:
  - {param: size, threshold: 3}
  - {param: origin, threshold: 2}
concurrency: 8
cost: {param: size, values: {"1024": 2, "1280": 3}}
ban: {blocks: 3, within: 10s, for: 1m}
`)
	candidate := mustParseOne(t, "resource: zimage_generate\nflow: [{threshold: 5}]\nhotspot: [{param: size, threshold: 3}]\ncost: {param: size, values: {\"1024\": 2}}\n")
	want := []string{"flow[1] (threshold 20 per 10s)", "hotspot[1] (param origin)", "concurrency", `cost.values["1280"]`, "ban"}
	if got := Lost(inForce.Resource, candidate.Resource); !slices.Equal(got, want) {
		t.Fatalf("Lost = %q, want %q", got, want)
	}
	if got := Lost(inForce.Resource, inForce.Resource); len(got) != 0 {
		t.Fatalf("the same document loses %q", got)
	}
	if got := Lost(candidate.Resource, inForce.Resource); len(got) != 0 {
		t.Fatalf("a document that adds rules loses %q", got)
	}
	if got := LostDocument(inForce, nil); len(got) != 7 || got[5] != "cost" {
		t.Fatalf("a delete loses %q", got)
	}
	sys := mustParseOne(t, "system: {load: 8, cpu_usage: 0.9}\ngpu: {memory_used_ratio: 0.9, devices: {\"nvml:0\": {memory_used_ratio: 0.8}}}\n")
	sys2 := mustParseOne(t, "system: {cpu_usage: 0.8}\ngpu: {memory_used_ratio: 0.9}\n")
	if got := LostDocument(sys, sys2); !slices.Equal(got, []string{"system.load", `gpu.devices["nvml:0"]`}) {
		t.Fatalf("system: %q", got)
	}
	if got := LostDocument(sys, mustParseOne(t, "system: {load: 8, cpu_usage: 0.9}\n")); !slices.Equal(got, []string{"gpu"}) {
		t.Fatalf("system without gpu: %q", got)
	}
}

func TestDiff(t *testing.T) {
	a := mustParseOne(t, "resource: ddcolor_person\nflow: [{threshold: 4}]\nban: {blocks: 3, within: 10s, for: 1m}\n")
	b := mustParseOne(t, "resource: ddcolor_person\nflow: [{threshold: 6}]\n")
	d, err := Diff("ddcolor_person", a, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--- ddcolor_person (in force)\n", "+++ ddcolor_person (candidate)\n", "-  - threshold: 4\n", "+  - threshold: 6\n", "-ban:\n", "-  blocks: 3\n"} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
	if d, err := Diff("ddcolor_person", a, a); err != nil || d != "" {
		t.Fatalf("equal documents: %q %v", d, err)
	}
	if d, _ := Diff("ddcolor_person", nil, b); !strings.Contains(d, "+resource: ddcolor_person\n") {
		t.Fatalf("create: %q", d)
	}
	if d, _ := DiffText("a", "b", []byte("x"), []byte("y")); !strings.Contains(d, "-x\n+y\n") {
		t.Fatalf("no final newline: %q", d)
	}
}

// A rule that stays but goes from enforce to shadow stops refusing: it is
// lost as far as enforcement goes, and named so; shadow to enforce loses
// nothing.
func TestLostCountsASwitchToShadow(t *testing.T) {
	inForce := mustParseOne(t, `resource: zimage_generate
flow: [{threshold: 4}, {threshold: 9, mode: shadow}]
hotspot: [{param: origin, threshold: 2}]
concurrency: 8
ban: {blocks: 3, within: 10s, for: 1m}
`)
	candidate := mustParseOne(t, `resource: zimage_generate
flow: [{threshold: 4, mode: shadow}, {threshold: 9}]
hotspot: [{param: origin, threshold: 2, mode: shadow}]
concurrency: {limit: 8, mode: shadow}
ban: {blocks: 3, within: 10s, for: 1m, mode: shadow}
`)
	want := []string{"flow[0] (threshold 4 per 1s) now shadow", "hotspot[0] (param origin) now shadow", "concurrency now shadow", "ban now shadow"}
	if got := Lost(inForce.Resource, candidate.Resource); !slices.Equal(got, want) {
		t.Errorf("Lost = %q, want %q", got, want)
	}
	// Back: flow[1] goes to shadow (flow rules match by position); the
	// rest goes back to enforce, which loses nothing.
	if got, want := Lost(candidate.Resource, inForce.Resource), []string{"flow[1] (threshold 9 per 1s) now shadow"}; !slices.Equal(got, want) {
		t.Errorf("back: Lost = %q, want %q", got, want)
	}
	sys := mustParseOne(t, "system: {inbound_qps: 20}\ngpu: {memory_used_ratio: 0.9}\n")
	shadow := mustParseOne(t, "system: {inbound_qps: 20, mode: shadow}\ngpu: {memory_used_ratio: 0.9, mode: shadow}\n")
	if got, want := LostDocument(sys, shadow), []string{"system.inbound_qps now shadow", "gpu now shadow"}; !slices.Equal(got, want) {
		t.Errorf("LostDocument = %q, want %q", got, want)
	}
}
