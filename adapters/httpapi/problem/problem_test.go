package problem_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/problem"
)

// FuzzAppendJSON checks the hand-written problem encoding against
// encoding/json: whatever the strings, the body decodes to the same values.
func FuzzAppendJSON(f *testing.F) {
	f.Add("ddcolor_person refused", "203.0.113.7", "", "")
	f.Add("quote \" backslash \\ newline \n tab \t", "\x00\x1f", "é ✓ \u2028", "a <b> & c")
	f.Add("bad utf8 \xff\xfe", "", "x", "\xff")
	f.Fuzz(func(t *testing.T, detail, value, rule, listed string) {
		p := problem.Problem{Type: "t", Title: "Too Many Requests", Status: 429, Detail: detail, Value: value, Rule: rule, RetryAfter: 3}
		if listed != "" {
			p.Errors = []string{listed, detail}
		}
		got := p.AppendJSON(nil)
		var back problem.Problem
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("invalid JSON %q: %v", got, err)
		}
		want, _ := json.Marshal(p)
		var ref problem.Problem
		json.Unmarshal(want, &ref)
		if !reflect.DeepEqual(back, ref) {
			t.Fatalf("decoded %+v, encoding/json gives %+v", back, ref)
		}
	})
}

func TestWriteSetsTypeAndRetryAfter(t *testing.T) {
	gin.SetMode(gin.TestMode)
	rec := httptest.NewRecorder()
	c, _ := gin.CreateTestContext(rec)
	problem.Write(c, problem.Problem{Type: problem.TypeQuota, Title: "Too Many Requests", Status: 429, Detail: "slow down", RetryAfter: 7,
		Errors: []string{"a: must be > 0"}})
	if rec.Code != 429 || rec.Header().Get("Content-Type") != "application/problem+json" || rec.Header().Get("Retry-After") != "7" || !c.IsAborted() {
		t.Fatalf("%d %v aborted=%v", rec.Code, rec.Header(), c.IsAborted())
	}
	var p problem.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Detail != "slow down" || len(p.Errors) != 1 {
		t.Fatalf("%v %s", err, rec.Body)
	}
}

type generate struct {
	Prompt string
	Width  *int
	Seed   *int64
	Ratio  *float64
}

func decode(body string) (generate, error) {
	var g generate
	err := problem.DecodeObject(strings.NewReader(body),
		problem.Field{Name: "prompt", Into: &g.Prompt},
		problem.Field{Name: "width", Into: &g.Width},
		problem.Field{Name: "seed", Into: &g.Seed},
		problem.Field{Name: "used_ratio", Into: &g.Ratio})
	return g, err
}

func TestDecodeObjectIsExact(t *testing.T) {
	for _, tc := range []struct{ name, body, err string }{
		{"upper-case key", `{"PROMPT": "x"}`, `unknown field "PROMPT"; the fields are prompt, width, seed, used_ratio`},
		{"mixed-case key", `{"Prompt": "x"}`, `unknown field "Prompt"`},
		{"unknown key", `{"prompt": "x", "cfg": 7}`, `unknown field "cfg"`},
		{"repeated key", `{"prompt": "x", "prompt": "y"}`, `field "prompt" appears twice`},
		{"string wanted", `{"prompt": 5}`, "prompt must be a JSON string; got the number 5"},
		{"integer wanted, fraction", `{"width": 5.5}`, "width must be a JSON integer; got the number 5.5"},
		{"integer wanted, string", `{"width": "512"}`, "width must be a JSON integer; got a string"},
		{"integer wanted, object", `{"seed": {}}`, "seed must be a JSON integer; got an object"},
		{"number wanted", `{"used_ratio": true}`, "used_ratio must be a JSON number; got a boolean"},
		{"not an object", `["prompt"]`, "the body must be a JSON object"},
		{"two values", `{"prompt": "x"} {}`, "more than one JSON value"},
		{"truncated", `{"prompt": "x"`, "not valid JSON"},
		{"bad syntax", `{"prompt" "x"}`, "not valid JSON"},
		{"empty", ``, "not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(tc.body)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
			if strings.Contains(err.Error(), "generate") || strings.Contains(err.Error(), "Go ") {
				t.Fatalf("the message names a Go type: %v", err)
			}
		})
	}
	g, err := decode(`{"prompt": "a kite", "width": 512, "seed": null}`)
	if err != nil || g.Prompt != "a kite" || g.Width == nil || *g.Width != 512 || g.Seed != nil {
		t.Fatalf("%+v %v", g, err)
	}
}

func TestDecodeObjectPassesTheBodyCapOn(t *testing.T) {
	rec := httptest.NewRecorder()
	body := http.MaxBytesReader(rec, readCloser{strings.NewReader(`{"prompt": "` + strings.Repeat("a", 100) + `"}`)}, 10)
	err := problem.DecodeObject(body, problem.Field{Name: "prompt", Into: new(string)})
	var mbe *http.MaxBytesError
	if !errors.As(err, &mbe) {
		t.Fatalf("error %v, want an *http.MaxBytesError", err)
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// FuzzDecodeObject checks DecodeObject against encoding/json: what it
// accepts is one valid JSON object whose keys are exactly the fields'.
func FuzzDecodeObject(f *testing.F) {
	f.Add(`{"prompt": "a kite", "width": 512}`)
	f.Add(`{"PROMPT": "x"}`)
	f.Add(`{"prompt": "x", "prompt": "y"}`)
	f.Add(`{"width": 5.5} {}`)
	f.Add(`{"seed": null, "used_ratio": 0.5}`)
	f.Fuzz(func(t *testing.T, body string) {
		if _, err := decode(body); err != nil {
			return
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(body), &obj); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
		}
		for k := range obj {
			switch k {
			case "prompt", "width", "seed", "used_ratio":
			default:
				t.Fatalf("accepted %q with the key %q", body, k)
			}
		}
	})
}
