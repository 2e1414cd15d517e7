package rules_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sluicehq/sluice/rules"
)

func TestDefaultMatchesTestdata(t *testing.T) {
	want, err := os.ReadFile("../testdata/rules/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rules.DefaultSource(), want) {
		t.Fatal("rules/default.yaml and testdata/rules/default.yaml differ: keep them identical")
	}
	set, err := rules.Default()
	if err != nil {
		t.Fatalf("built-in rules do not build: %v", err)
	}
	for _, r := range rules.Resources {
		if set.Resources[r] == nil {
			t.Errorf("built-in rules have no document for %s", r)
		}
	}
}

func TestParseFSFolder(t *testing.T) {
	fsys := fstest.MapFS{
		"r/a.yaml":       {Data: []byte("resource: ddcolor_person\nflow: [{threshold: 2}]\n")},
		"r/b.json":       {Data: []byte(`{"system": {"load": 4}}`)},
		"r/notes.md":     {Data: []byte("ignored")},
		"r/sub/c.yaml":   {Data: []byte("not: read")},
		"bad/ok.yaml":    {Data: []byte("resource: ddcolor_person\nflow: [{threshold: 2}]\n")},
		"bad/wrong.yaml": {Data: []byte("resource: ddcolor_building\nflow: [{threshold: -3}]\n")},
	}
	docs, err := rules.ParseFS(fsys, "r")
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Build(docs)
	if err != nil {
		t.Fatal(err)
	}
	if set.Resources["ddcolor_person"].Flow[0].Threshold != 2 || set.System.Load != 4 {
		t.Fatalf("folder not loaded whole: %+v %+v", set.Resources, set.System)
	}

	// A folder with one bad rule builds nothing, and the error names the file.
	docs, err = rules.ParseFS(fsys, "bad")
	if err != nil {
		t.Fatal(err)
	}
	set, err = rules.Build(docs)
	var list rules.Errors
	if set != nil || !errors.As(err, &list) || len(list) != 1 {
		t.Fatalf("want one error and no set, got %v, %v", set, err)
	}
	if got, want := list[0].Error(), "bad/wrong.yaml: document 1 (ddcolor_building): flow[0].threshold: must be > 0, got -3"; got != want {
		t.Fatalf("error\n got %s\nwant %s", got, want)
	}
	if _, err := rules.ParseFS(fsys, "missing"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing path: %v", err)
	}
}

// FuzzParse checks that no input crashes decoding or validation, and that
// every failure is reported as rules.Errors naming the source.
func FuzzParse(f *testing.F) {
	f.Add([]byte(rules.DefaultSource()))
	f.Add([]byte("resource: ddcolor_person\nflow: [{threshold: 2, window: 1s}]\n"))
	f.Add([]byte(`{"system": {"cpu_usage": 0.5}}`))
	f.Add([]byte("resource: ddcolor_person\nhotspot: [{param: origin, threshold: 1, items: {\"::1\": 2}}]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("resource: ddcolor_person\nflow: &x [*x]\n"))
	f.Add([]byte("resource: ddcolor_person\nconcurrency: {limit: 2, mode: shadow}\nban: {blocks: 1, within: 1s, for: 1s, mode: shadow}\n"))
	f.Add([]byte("resource: ddcolor_person\nconcurrency: {limit: &x 2, mode: *x}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := rules.Parse("fuzz.yaml", data)
		if err == nil {
			_, err = rules.Build(docs)
		}
		if err == nil {
			return
		}
		var list rules.Errors
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("error is not rules.Errors: %T %v", err, err)
		}
		for _, e := range list {
			if e.File != "fuzz.yaml" {
				t.Fatalf("error does not name the file: %v", e)
			}
		}
	})
}

// TestEncodeRoundTrip checks that encoding a document and parsing it again
// gives the same document, for every document of the built-in rules.
func TestEncodeRoundTrip(t *testing.T) {
	docs, err := rules.Parse("default.yaml", rules.DefaultSource())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		b, err := rules.Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		back, err := rules.Parse("encoded", b)
		if err != nil {
			t.Fatalf("%s: encoded form does not parse: %v\n%s", d.Name(), err, b)
		}
		if len(back) != 1 || !reflect.DeepEqual(back[0].Resource, d.Resource) || !reflect.DeepEqual(back[0].System, d.System) {
			t.Fatalf("%s: round trip changed the document:\n%s", d.Name(), b)
		}
	}
}

// TestShadowModeRoundTrip checks that every rule's mode survives Encode,
// and JSON, and parses back to the same document: concurrency with a mode
// is written in its mapping form, without one as a plain number.
func TestShadowModeRoundTrip(t *testing.T) {
	src := `resource: ddcolor_person
flow: [{threshold: 4, mode: shadow}, {threshold: 9}]
hotspot: [{param: origin, threshold: 2, mode: shadow}]
concurrency: {limit: 3, mode: shadow}
ban: {blocks: 2, within: 10s, for: 1m, mode: shadow}
---
resource: ddcolor_building
concurrency: 5
---
system: {mode: shadow, inbound_qps: 3}
gpu: {mode: shadow, memory_used_ratio: 0.9}
`
	docs, err := rules.Parse("shadow.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	r := docs[0].Resource
	if r.Concurrency != 3 || r.ConcurrencyMode != rules.Shadow || !r.Flow[0].Mode.IsShadow() || r.Flow[1].Mode.IsShadow() ||
		!r.Hotspot[0].Mode.IsShadow() || !r.Ban.Mode.IsShadow() || !docs[2].System.Mode.IsShadow() || !docs[2].GPU.Mode.IsShadow() {
		t.Fatalf("modes not decoded: %+v system %+v gpu %+v", r, docs[2].System, docs[2].GPU)
	}
	if docs[1].Resource.Concurrency != 5 || docs[1].Resource.ConcurrencyMode != "" {
		t.Fatalf("plain concurrency: %+v", docs[1].Resource)
	}
	for _, d := range docs {
		b, err := rules.Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		if d.Name() == "ddcolor_person" && !strings.Contains(string(b), "concurrency:\n  limit: 3\n  mode: shadow\n") {
			t.Errorf("concurrency not in its mapping form:\n%s", b)
		}
		if d.Name() == "ddcolor_building" && !strings.Contains(string(b), "concurrency: 5\n") {
			t.Errorf("plain concurrency not a number:\n%s", b)
		}
		back, err := rules.Parse("encoded", b)
		if err != nil {
			t.Fatalf("%s: encoded form does not parse: %v\n%s", d.Name(), err, b)
		}
		if !reflect.DeepEqual(back[0].Resource, d.Resource) || !reflect.DeepEqual(back[0].System, d.System) || !reflect.DeepEqual(back[0].GPU, d.GPU) {
			t.Fatalf("%s: round trip changed the document:\n%s", d.Name(), b)
		}
		if d.Resource == nil {
			continue
		}
		j, err := json.Marshal(d.Resource)
		if err != nil {
			t.Fatal(err)
		}
		back, err = rules.Parse("encoded.json", j)
		if err != nil {
			t.Fatalf("%s: JSON form does not parse: %v\n%s", d.Name(), err, j)
		}
		if !reflect.DeepEqual(back[0].Resource, d.Resource) {
			t.Fatalf("%s: JSON round trip changed the document:\n%s", d.Name(), j)
		}
	}
	if _, err := rules.Build(docs); err != nil {
		t.Fatal(err)
	}
}

// A shadow flow threshold below a cost is an error, as its enforcing
// version is: enforced, it would refuse those requests always.
func TestShadowThresholdBelowCostIsAnError(t *testing.T) {
	docs, err := rules.Parse("rules.yaml", []byte("resource: ddcolor_person\nflow: [{threshold: 10}, {threshold: 2, mode: shadow}]\ncost: {param: size, values: {\"1024\": 3}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = rules.Build(docs)
	if err == nil || !strings.Contains(err.Error(), `cost.values["1024"]: costs 3 but flow[1].threshold is 2`) {
		t.Fatalf("Build: %v, want the cost refused against the shadow flow[1]", err)
	}
}
