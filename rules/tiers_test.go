package rules_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

func TestDefaultTiersAreTheIssuesTable(t *testing.T) {
	ts := rules.DefaultTiers()
	if ts.Timezone != "UTC" || ts.Location != time.UTC {
		t.Fatalf("time zone %q %v, want UTC", ts.Timezone, ts.Location)
	}
	want := []struct {
		name     string
		quota    int64
		inFlight int
		class    tenant.Class
	}{
		{tenant.AnonymousTier, 50, 1, tenant.Low},
		{"registered", 200, 2, tenant.Medium},
		{"vip", tenant.Unlimited, 3, tenant.High},
	}
	if len(ts.Tiers) != len(want) {
		t.Fatalf("%d tiers, want %d", len(ts.Tiers), len(want))
	}
	for _, w := range want {
		got, ok := ts.Tier(w.name)
		if !ok {
			t.Fatalf("no tier %s", w.name)
		}
		if got.DailyQuota != w.quota || got.InFlight != w.inFlight || got.Priority != w.class || got.QuotaUnit != rules.QuotaJobs {
			t.Errorf("%s = %+v, want quota %d, in flight %d, %s, jobs", w.name, got, w.quota, w.inFlight, w.class)
		}
	}
	if _, ok := ts.Tier("gold"); ok {
		t.Error("an unknown tier was found")
	}
	if DefaultTiersAreFresh := rules.DefaultTiers(); &DefaultTiersAreFresh.Tiers[0] == &ts.Tiers[0] {
		t.Error("DefaultTiers returned shared state")
	}
}

func TestParseTiersFullDocument(t *testing.T) {
	src := `
timezone: Europe/Berlin
tiers:
  - name: anonymous
    daily_quota: 10
  - name: pro_2
    daily_quota: 500
    quota_unit: cost
    in_flight: 4
    priority: high
    rate: {threshold: 3, window: 2s}
    resources: [ddcolor_person, zimage_generate]
    max_size: 1024
`
	ts, err := rules.ParseTiers("tiers.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if ts.Location.String() != "Europe/Berlin" {
		t.Errorf("location %v", ts.Location)
	}
	anon, _ := ts.Tier("anonymous")
	if anon.InFlight != 1 || anon.Priority != tenant.Low || anon.QuotaUnit != rules.QuotaJobs || anon.Rate != nil {
		t.Errorf("defaults not filled in: %+v", anon)
	}
	pro, _ := ts.Tier("pro_2")
	if pro.DailyQuota != 500 || pro.QuotaUnit != rules.QuotaCost || pro.InFlight != 4 || pro.Priority != tenant.High ||
		pro.Rate == nil || pro.Rate.Threshold != 3 || time.Duration(pro.Rate.Window) != 2*time.Second || pro.MaxSize != 1024 {
		t.Errorf("pro_2 = %+v", pro)
	}
	// JSON is the same document.
	js := `{"tiers": [{"name": "anonymous", "daily_quota": "unlimited", "rate": {"threshold": 1}}]}`
	ts, err = rules.ParseTiers("tiers.json", []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := ts.Tier("anonymous"); a.DailyQuota != tenant.Unlimited || time.Duration(a.Rate.Window) != time.Second {
		t.Errorf("JSON tier = %+v", a)
	}
}

func TestParseTiersErrors(t *testing.T) {
	const ok = "  - name: anonymous\n    daily_quota: 5\n"
	cases := []struct {
		name, src string
		want      []string
	}{
		{"quota word", "tiers:\n" + ok + "  - name: reg\n    daily_quota: lots\n",
			[]string{`tiers.yaml: tiers[1].daily_quota: want an integer >= 0 or "unlimited", got "lots"`}},
		{"quota negative", "tiers:\n" + ok + "  - name: reg\n    daily_quota: -3\n",
			[]string{`tiers.yaml: tiers[1].daily_quota: want an integer >= 0 or "unlimited", got -3`}},
		{"quota mapping", "tiers:\n  - name: anonymous\n    daily_quota: {a: 1}\n",
			[]string{`tiers.yaml: tiers[0].daily_quota: want an integer >= 0 or "unlimited", got a mapping`}},
		{"quota missing", "tiers:\n  - name: anonymous\n",
			[]string{`tiers.yaml: tiers[0].daily_quota: missing: want an integer >= 0 or "unlimited"`}},
		{"bad name", "tiers:\n" + ok + "  - name: Gold Tier\n    daily_quota: 1\n",
			[]string{`tiers.yaml: tiers[1].name: want a name matching ^[a-z0-9][a-z0-9_-]*$, got "Gold Tier"`}},
		{"empty name", "tiers:\n" + ok + "  - daily_quota: 1\n",
			[]string{`tiers.yaml: tiers[1].name: want a name matching ^[a-z0-9][a-z0-9_-]*$, got ""`}},
		{"duplicate", "tiers:\n" + ok + ok,
			[]string{`tiers.yaml: tiers[1].name: "anonymous" appears twice (also tiers[0])`}},
		{"no anonymous", "tiers:\n  - name: vip\n    daily_quota: unlimited\n",
			[]string{`tiers.yaml: tiers: no tier named "anonymous": anonymous callers need it`}},
		{"no tiers", "timezone: UTC\n",
			[]string{`tiers.yaml: tiers: missing: the document needs at least the anonymous tier`}},
		{"unit", "tiers:\n" + ok + "    quota_unit: gpu_seconds\n",
			[]string{`tiers.yaml: tiers[0].quota_unit: want jobs or cost, got "gpu_seconds"`}},
		{"in flight", "tiers:\n" + ok + "    in_flight: 0\n",
			[]string{`tiers.yaml: tiers[0].in_flight: must be >= 1, got 0`}},
		{"priority", "tiers:\n" + ok + "    priority: urgent\n",
			[]string{`tiers.yaml: tiers[0].priority: want low, medium or high, got "urgent"`}},
		{"rate threshold", "tiers:\n" + ok + "    rate: {threshold: 0, window: 1s}\n",
			[]string{`tiers.yaml: tiers[0].rate.threshold: must be >= 1, got 0`}},
		{"rate window", "tiers:\n" + ok + "    rate: {threshold: 2, window: 1500ms}\n",
			[]string{`tiers.yaml: tiers[0].rate.window: must be whole seconds between 1s and 24h, got 1.5s`}},
		{"rate window word", "tiers:\n" + ok + "    rate: {threshold: 2, window: soon}\n",
			[]string{`tiers.yaml: tiers[0].rate.window: want a duration such as 500ms or 60s, got "soon"`}},
		{"resource", "tiers:\n" + ok + "    resources: [ddcolor_person, upscale]\n",
			[]string{`tiers.yaml: tiers[0].resources[1]: unknown resource "upscale"; known resources are ddcolor_person, ddcolor_building, zimage_generate`}},
		{"max size", "tiers:\n" + ok + "    max_size: -1\n",
			[]string{`tiers.yaml: tiers[0].max_size: must be >= 0 (0: no limit), got -1`}},
		{"timezone", "timezone: Mars/Olympus\ntiers:\n" + ok,
			[]string{`tiers.yaml: timezone: want an IANA time zone such as UTC or Europe/Berlin, got "Mars/Olympus"`}},
		{"timezone local", "timezone: Local\ntiers:\n" + ok,
			[]string{`tiers.yaml: timezone: want an IANA time zone such as UTC or Europe/Berlin, got "Local"`}},
		{"unknown field", "tiers:\n" + ok + "    colour: blue\n",
			[]string{`tiers.yaml: tiers[0].colour: unknown field; known fields are daily_quota, in_flight, max_size, name, priority, quota_unit, rate, resources`}},
		{"unknown top field", "tier: []\ntiers:\n" + ok,
			[]string{`tiers.yaml: tier: unknown field; known fields are tiers, timezone`}},
		{"wrong type", "tiers:\n" + ok + "    in_flight: many\n",
			[]string{`tiers.yaml: tiers[0].in_flight: want an integer, got "many"`}},
		{"not a mapping", "- a\n- b\n",
			[]string{`tiers.yaml: the tiers document must be a mapping with timezone and tiers, got a list`}},
		{"empty", "",
			[]string{`tiers.yaml: empty: the tiers document needs tiers: with at least the anonymous tier`}},
		{"two documents", "tiers:\n" + ok + "---\ntiers:\n" + ok,
			[]string{`tiers.yaml: holds more than one document; the tiers are one document`}},
		{"bad yaml", "tiers: [\n",
			[]string{`tiers.yaml: not valid YAML or JSON: line 1: did not find expected node content`}},
		{"alias", "q: &q 5\ntiers:\n  - name: anonymous\n    daily_quota: *q\n",
			[]string{`tiers.yaml: q: unknown field; known fields are tiers, timezone`, `tiers.yaml: tiers[0].daily_quota: YAML aliases (*name) are not supported in rules`}},
		{"several at once", "tiers:\n  - name: anonymous\n    daily_quota: 1\n    in_flight: 0\n    priority: top\n",
			[]string{`tiers.yaml: tiers[0].in_flight: must be >= 1, got 0`, `tiers.yaml: tiers[0].priority: want low, medium or high, got "top"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts, err := rules.ParseTiers("tiers.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted: %+v", ts)
			}
			if ts != nil {
				t.Error("an invalid document returned tiers")
			}
			var list rules.Errors
			if !errors.As(err, &list) {
				t.Fatalf("error %T, want rules.Errors", err)
			}
			got := list.Messages()
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("errors\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestParseTiersTooLarge(t *testing.T) {
	_, err := rules.ParseTiers("big", make([]byte, rules.MaxSourceBytes+1))
	if err == nil || !strings.Contains(err.Error(), "the limit is") {
		t.Fatalf("err = %v", err)
	}
}

func TestTiersAllows(t *testing.T) {
	ts, err := rules.ParseTiers("t", []byte("tiers:\n  - name: anonymous\n    daily_quota: 1\n    resources: [ddcolor_person]\n    max_size: 512\n  - name: vip\n    daily_quota: unlimited\n"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		tier, resource string
		size           int
		ok             bool
	}{
		{"anonymous", "ddcolor_person", 512, true},
		{"anonymous", "ddcolor_person", 0, true},
		{"anonymous", "ddcolor_person", 513, false},
		{"anonymous", "zimage_generate", 256, false},
		{"vip", "zimage_generate", 4096, true},
		{"gold", "ddcolor_person", 256, false},
	}
	for _, c := range cases {
		err := ts.Allows(c.tier, c.resource, c.size)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, rules.ErrNotInTier)) {
			t.Errorf("Allows(%s, %s, %d) = %v, want ok %v", c.tier, c.resource, c.size, err, c.ok)
		}
	}
}

func TestTiersJSONRoundTrip(t *testing.T) {
	ts := rules.DefaultTiers()
	b, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"daily_quota":"unlimited"`) || !strings.Contains(string(b), `"priority":"high"`) {
		t.Errorf("JSON %s does not spell the document's words", b)
	}
	back, err := rules.ParseTiers("json", b)
	if err != nil {
		t.Fatalf("the JSON form does not parse back: %v\n%s", err, b)
	}
	b2, _ := json.Marshal(back)
	if string(b) != string(b2) {
		t.Errorf("round trip changed it:\n%s\n%s", b, b2)
	}
}

func FuzzParseTiers(f *testing.F) {
	f.Add(rules.DefaultTiersSource())
	f.Add([]byte("tiers:\n  - name: anonymous\n    daily_quota: lots\n"))
	f.Add([]byte(`{"timezone": "Asia/Tokyo", "tiers": [{"name": "anonymous", "daily_quota": 3, "rate": {"threshold": 2, "window": "2s"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := rules.ParseTiers("fuzz", data)
		if err != nil {
			var list rules.Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %v is not rules.Errors", err)
			}
			return
		}
		anon, ok := ts.Tier(tenant.AnonymousTier)
		if !ok || ts.Location == nil {
			t.Fatalf("accepted without an anonymous tier or location: %+v", ts)
		}
		if anon.InFlight < 1 || (anon.DailyQuota < 0 && anon.DailyQuota != tenant.Unlimited) {
			t.Fatalf("accepted invalid anonymous tier %+v", anon)
		}
		if _, err := json.Marshal(ts); err != nil {
			t.Fatal(err)
		}
	})
}

func TestTiersUnmarshalJSONValidates(t *testing.T) {
	var ts rules.Tiers
	if err := json.Unmarshal([]byte(`{"tiers": [{"name": "anonymous", "daily_quota": "unlimited", "priority": "medium"}]}`), &ts); err != nil {
		t.Fatal(err)
	}
	if a, _ := ts.Tier("anonymous"); a.DailyQuota != tenant.Unlimited || a.Priority != tenant.Medium || ts.Location != time.UTC {
		t.Fatalf("decoded %+v", ts)
	}
	err := json.Unmarshal([]byte(`{"tiers": [{"name": "vip", "daily_quota": 1}]}`), &ts)
	if err == nil || !strings.Contains(err.Error(), `JSON: tiers: no tier named "anonymous"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestTestdataTiersAreValid(t *testing.T) {
	files, err := filepath.Glob("../testdata/tiers/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata tiers: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rules.ParseTiers(f, data); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
