package dashboardapi_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

const personInForce = `resource: ddcolor_person
flow: [{threshold: 4}]
hotspot: [{param: origin, threshold: 2}]
ban: {blocks: 3, within: 10s, for: 1m}
`

func fieldsOf(t *testing.T, p map[string]any) []map[string]any {
	t.Helper()
	raw, ok := p["fields"].([]any)
	if !ok {
		t.Fatalf("no fields in %v", p)
	}
	out := make([]map[string]any, len(raw))
	for i, f := range raw {
		out[i] = f.(map[string]any)
	}
	return out
}

func TestDryRun(t *testing.T) {
	eng := newEngine(t, personInForce, engine.Options{})
	w := &fakeWriter{}
	r := newRouter(t, dashboardapi.Config{Engine: eng, Writer: w, AdminToken: testToken})
	post := func(resource, body string) map[string]any {
		t.Helper()
		rec := request(r, http.MethodPost, "/api/rules/"+resource+"/dry-run", "", strings.NewReader(body))
		if rec.Code != http.StatusOK {
			t.Fatalf("dry run of %s: %d %s", resource, rec.Code, rec.Body)
		}
		return decode(t, rec)
	}

	// Narrower than the rules in force: the diff, and what it would drop.
	got := post("ddcolor_person", "resource: ddcolor_person\nflow: [{threshold: 6}]\n")
	diff, _ := got["diff"].(string)
	for _, want := range []string{"--- ddcolor_person (in force)\n", "+++ ddcolor_person (candidate)\n", "-  - threshold: 4\n", "+  - threshold: 6\n", "-ban:\n", "-hotspot:\n"} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}
	if got["resource"] != "ddcolor_person" || got["valid"] != true || !slices.Equal(toStrings(got["lost"]), []string{"hotspot[0] (param origin)", "ban"}) {
		t.Fatalf("answer %v", got)
	}
	// A document for a resource without one: all new, nothing lost; JSON too.
	got = post("zimage_generate", `{"resource": "zimage_generate", "concurrency": 2}`)
	if d := got["diff"].(string); !strings.Contains(d, "+resource: zimage_generate\n+concurrency: 2\n") || len(toStrings(got["lost"])) != 0 {
		t.Fatalf("new document: %v", got)
	}
	// The same document: no diff.
	if got = post("ddcolor_person", personInForce); got["diff"] != "" || len(toStrings(got["lost"])) != 0 {
		t.Fatalf("same document: %v", got)
	}
	// The document as GET /api/rules shows it, defaults filled in
	// (behavior, capacity, …): sent back unchanged, no diff either.
	shown, err := json.Marshal(eng.Rules().Resources["ddcolor_person"])
	if err != nil {
		t.Fatal(err)
	}
	if got = post("ddcolor_person", string(shown)); got["diff"] != "" || len(toStrings(got["lost"])) != 0 {
		t.Fatalf("the document as shown, sent back: %v", got)
	}
	if calls := w.Calls(); len(calls) != 0 {
		t.Fatalf("a dry run wrote: %q", calls)
	}
	if rules := eng.Rules().Resources["ddcolor_person"]; rules.Ban == nil || rules.Flow[0].Threshold != 4 {
		t.Fatalf("a dry run changed the rules in force: %+v", rules)
	}
}

func TestDryRunProblemsCarryFields(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{Engine: newEngine(t, personInForce, engine.Options{})})
	for _, tc := range []struct {
		name, resource, body string
		want                 []dashboardapi.FieldError
	}{
		{"validation", "ddcolor_person", "resource: ddcolor_person\nflow:\n  - threshold: -1\n",
			[]dashboardapi.FieldError{{Path: "flow[0].threshold", Line: 3, Column: 16, Message: "must be > 0, got -1"}}},
		{"two problems", "zimage_generate", "resource: zimage_generate\nconcurrency: -2\nban: {blocks: 0, within: 10s, for: 1m}\n",
			[]dashboardapi.FieldError{{Path: "concurrency", Line: 2, Column: 14, Message: "must be >= 0 (0 is off), got -2"}, {Path: "ban.blocks", Line: 3, Column: 15, Message: "must be > 0, got 0"}}},
		{"unknown field in JSON", "ddcolor_person", "{\"resource\": \"ddcolor_person\",\n \"flow\": [{\"thresold\": 2}]}",
			[]dashboardapi.FieldError{{Path: "flow[0].thresold", Line: 2, Column: 24, Message: "unknown field; known fields are behavior, max_queue, mode, threshold, warm_up, window"}}},
		{"another resource's document", "ddcolor_person", "resource: zimage_generate\n",
			[]dashboardapi.FieldError{{Message: "send exactly one document, the one of ddcolor_person; got the document of zimage_generate"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := request(r, http.MethodPost, "/api/rules/"+tc.resource+"/dry-run", "", strings.NewReader(tc.body))
			p := checkProblem(t, rec, http.StatusUnprocessableEntity)
			fields := fieldsOf(t, p)
			if len(fields) != len(tc.want) || len(toStrings(p["errors"])) != len(tc.want) {
				t.Fatalf("fields %v, errors %v; want %d", fields, p["errors"], len(tc.want))
			}
			for i, w := range tc.want {
				f := fields[i]
				if f["path"] != w.Path || f["line"] != float64(w.Line) || f["column"] != float64(w.Column) || f["message"] != w.Message {
					t.Errorf("field %d = %v, want %+v", i, f, w)
				}
			}
		})
	}
	if rec := request(r, http.MethodPost, "/api/rules/cat/dry-run", "", strings.NewReader("resource: cat\n")); rec.Code != http.StatusNotFound {
		t.Fatalf("unknown resource: %d", rec.Code)
	}
	if rec := request(r, http.MethodPost, "/api/rules/ddcolor_person/dry-run", "", strings.NewReader("\n")); rec.Code != http.StatusBadRequest {
		t.Fatalf("empty body: %d", rec.Code)
	}
}

// TestDryRunIsARead: open without --protect-reads, needs the token with it.
func TestDryRunIsARead(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{AdminToken: testToken, ProtectReads: true})
	doc := "resource: ddcolor_person\nflow: [{threshold: 2}]\n"
	if rec := request(r, http.MethodPost, "/api/rules/ddcolor_person/dry-run", "", strings.NewReader(doc)); rec.Code != http.StatusUnauthorized {
		t.Fatalf("protected, no token: %d", rec.Code)
	}
	if rec := request(r, http.MethodPost, "/api/rules/ddcolor_person/dry-run", "Bearer "+testToken, strings.NewReader(doc)); rec.Code != http.StatusOK {
		t.Fatalf("protected, token: %d %s", rec.Code, rec.Body)
	}
}

// TestPutProblemsCarryFields: PUT's 422 lists the writer's problems located.
func TestPutProblemsCarryFields(t *testing.T) {
	invalid := rules.Errors{{File: "/sluice/rules/resources/ddcolor_person", Doc: 1, Resource: "ddcolor_person", Path: "flow[0].threshold", Msg: "must be > 0, got 0", Line: 3, Column: 16}}
	for _, err := range []error{invalid, invalid[0]} {
		r := newRouter(t, dashboardapi.Config{Writer: &fakeWriter{err: err}, AdminToken: testToken})
		rec := request(r, http.MethodPut, "/api/rules/ddcolor_person", "Bearer "+testToken, strings.NewReader(flowDoc))
		p := checkProblem(t, rec, http.StatusUnprocessableEntity)
		f := fieldsOf(t, p)
		if len(f) != 1 || f[0]["path"] != "flow[0].threshold" || f[0]["line"] != 3.0 || f[0]["column"] != 16.0 || f[0]["message"] != "must be > 0, got 0" {
			t.Fatalf("fields %v", f)
		}
		if e := toStrings(p["errors"]); len(e) != 1 || e[0] != invalid[0].Error() {
			t.Fatalf("errors %v", e)
		}
	}
}

func toStrings(v any) []string {
	raw, _ := v.([]any)
	out := make([]string, 0, len(raw))
	for _, s := range raw {
		str, _ := s.(string)
		out = append(out, str)
	}
	return out
}

// The simulator's GPU memory is a read like the others: behind the token
// under --protect-reads.
func TestSimulatorReadIsProtected(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{AdminToken: testToken, ProtectReads: true, Simulator: &fakeSim{used: 0.3}})
	if rec := request(r, http.MethodGet, "/api/simulator/vram", "", nil); rec.Code != http.StatusUnauthorized {
		t.Fatalf("protected, no token: %d %s", rec.Code, rec.Body)
	}
	if rec := request(r, http.MethodGet, "/api/simulator/vram", "Bearer "+testToken, nil); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "0.3") {
		t.Fatalf("protected, token: %d %s", rec.Code, rec.Body)
	}
}
