package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/adapters/console/web"
	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/rules"
)

// The web console's end-to-end tests drive a headless Chromium (Debian's
// chromium package; SLUICE_CHROMIUM names another binary) against a real
// `sluice serve`. With SLUICE_SCREENSHOTS=1 (make screenshots) they write
// docs/screenshots/<page>.png.

const (
	browserTimeout = 3 * time.Minute  // the whole browser session
	domTimeout     = 20 * time.Second // one DOM condition
)

// chromiumPath finds the browser, or fails saying how to install it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SLUICE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the console's browser tests need Chromium: install it (Debian/Ubuntu: apt-get install -y chromium; .ci/run does so), or set SLUICE_CHROMIUM to a Chrome binary")
	return ""
}

// browser is a headless Chromium tab with what its page reported.
type browser struct {
	ctx    context.Context
	mu     sync.Mutex
	errors []string // uncaught exceptions and console.error calls (CSP violations among them)
}

// newBrowser starts Chromium headless with a user-data-dir of its own; it
// ends with the test.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.WindowSize(1360, 900))
	ctx, cancelTimeout := context.WithTimeout(context.Background(), browserTimeout)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	b := &browser{}
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
		cancelTimeout()
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	b.ctx = bctx
	return b
}

func (b *browser) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		msg = "exception: " + ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			msg += " " + ev.ExceptionDetails.Exception.Description
		}
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError {
			return
		}
		parts := []string{"console.error:"}
		for _, a := range ev.Args {
			if a.Description != "" {
				parts = append(parts, a.Description)
			} else {
				parts = append(parts, string(a.Value))
			}
		}
		msg = strings.Join(parts, " ")
	default:
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errors = append(b.errors, msg)
}

// pageErrors are the exceptions and console errors seen so far.
func (b *browser) pageErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// do runs steps, failing the test with what for context.
func (b *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		t.Fatalf("%s: %v (page errors: %q)", what, err, b.pageErrors())
	}
}

// wait polls a JavaScript condition until it holds (bounded by domTimeout).
func (b *browser) wait(t *testing.T, what, expr string) {
	t.Helper()
	b.waitUpTo(t, domTimeout, what, expr)
}

// waitUpTo is wait with a bound of its own.
func (b *browser) waitUpTo(t *testing.T, limit time.Duration, what, expr string) {
	t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(limit)))
	if err != nil {
		text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.querySelector('main').innerText.slice(0, 1500)`))
		t.Fatalf("waiting for %s (%s): %v\npage errors: %q\npage: %s", what, expr, err, b.pageErrors(), text)
	}
}

// eval evaluates a JavaScript expression; a promise is awaited.
func eval[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// setEditor replaces the rule editor's text as typing would (an input event).
func (b *browser) setEditor(t *testing.T, text string) {
	t.Helper()
	js, _ := json.Marshal(text)
	b.do(t, "editing the rule document", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(
		`(() => { const e = document.getElementById('rules-editor'); e.value = %s; e.dispatchEvent(new Event('input')); })()`, js)))
}

// choose picks a value in a select as a person would (a change event).
func (b *browser) choose(t *testing.T, id, value string) {
	t.Helper()
	b.do(t, "choosing "+value+" in #"+id, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(
		`(() => { const s = document.getElementById(%q); s.value = %q; s.dispatchEvent(new Event('change')); })()`, id, value)))
}

// screenshot writes docs/screenshots/<page>.png when SLUICE_SCREENSHOTS=1.
func (b *browser) screenshot(t *testing.T, page string) {
	t.Helper()
	if os.Getenv("SLUICE_SCREENSHOTS") != "1" {
		return
	}
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot of %s: %v", page, err)
	}
	dir := filepath.Join("..", "..", "docs", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, page+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", filepath.Join(dir, page+".png"))
}

// refusal is a gateway's answer to one colourisation request.
type refusal struct {
	status int
	rule   string // the problem's "rule", for a refusal
}

// postPerson posts the test portrait to /api/ddcolorize/person.
func postPerson(base string) (refusal, error) {
	img, err := os.ReadFile("../../testdata/images/person.png")
	if err != nil {
		return refusal{}, err
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("image", "person.png")
	fw.Write(img)
	mw.Close()
	resp, err := http.Post(base+"/api/ddcolorize/person", mw.FormDataContentType(), &body)
	if err != nil {
		return refusal{}, fmt.Errorf("POST /api/ddcolorize/person: %w", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return refusal{}, fmt.Errorf("reading the answer: %w", err)
	}
	var p struct {
		Rule string `json:"rule"`
	}
	if resp.StatusCode != http.StatusOK {
		json.Unmarshal(out, &p)
	}
	return refusal{status: resp.StatusCode, rule: p.Rule}, nil
}

// colorizePerson is postPerson failing the test on an error.
func colorizePerson(t *testing.T, base string) refusal {
	t.Helper()
	a, err := postPerson(base)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestConsoleBrowser walks an operator through the console in Chromium: log
// in, watch the live chart move under load, edit a rule with an error and
// see it at its field, fix and apply it and see the next request refused,
// switch the rule to shadow, and lift a ban.
func TestConsoleBrowser(t *testing.T) {
	b := newBrowser(t)
	// The anonymous tier's daily quota of make run (50) would end the load
	// before the rules do: this gateway's anonymous clients have none.
	tiers := filepath.Join(t.TempDir(), "tiers.yaml")
	if err := os.WriteFile(tiers, []byte("tiers:\n  - name: anonymous\n    daily_quota: unlimited\n    in_flight: 2\n    priority: low\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := startServe(t, "--admin-token", "s3cret", "--tiers", tiers)
	base := g.base

	// The page opens read-only for a visitor, with the login form.
	b.do(t, "opening the console", chromedp.Navigate(base+"/dashboard#/live"))
	// Room for every request of the session (the default keeps 250), for
	// the check at the end that none went elsewhere.
	if !eval[bool](t, b, `(performance.setResourceTimingBufferSize(10000), performance.getEntriesByType('resource').length < 250)`) {
		t.Fatal("the page made 250 requests before the test could widen the buffer")
	}
	b.wait(t, "the page to start", `document.body.dataset.ready === 'true' && document.body.dataset.session === 'viewer'`)
	if !eval[bool](t, b, `document.getElementById('rules-apply').disabled && !document.getElementById('login-form').hidden`) {
		t.Fatal("a visitor who has not logged in can apply rules, or sees no login form")
	}

	// A wrong token is refused, the right one logs in.
	b.do(t, "a wrong token", chromedp.SendKeys(chromedp.CSS("#login-token"), "nope"), chromedp.Click(chromedp.CSS("#login-submit")))
	b.wait(t, "the wrong token's message", `document.getElementById('login-error').textContent.includes('Wrong token')`)
	b.do(t, "logging in", chromedp.SendKeys(chromedp.CSS("#login-token"), "s3cret"), chromedp.Click(chromedp.CSS("#login-submit")))
	b.wait(t, "the session", `document.body.dataset.session === 'admin' && !document.getElementById('rules-apply').disabled`)

	// Live: under load the chart of ddcolor_person takes a point a second
	// and its admissions rise.
	stop := make(chan struct{})
	var load sync.WaitGroup
	stopLoad := sync.OnceFunc(func() { close(stop); load.Wait() })
	t.Cleanup(stopLoad) // on a failure too, before the gateway stops
	load.Add(1)
	go func() {
		defer load.Done()
		tick := time.NewTicker(400 * time.Millisecond) // 2.5/s: under the origin's 3/s
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				burst := 1
				if n%10 == 9 {
					burst = 4 // now and then over the origin's limit: a few refusals to draw, far from its ban
				}
				for range burst {
					postPerson(base) // what it answers does not matter: the chart shows it
				}
			}
		}
	}()
	chart := `document.getElementById('live-chart-ddcolor_person')`
	b.wait(t, "the chart of ddcolor_person", chart+` && Number(`+chart+`.dataset.points) >= 1`)
	points := eval[int](t, b, `Number(`+chart+`.dataset.points)`)
	more, limit := 2, domTimeout
	if os.Getenv("SLUICE_SCREENSHOTS") == "1" {
		more, limit = 20, 2*domTimeout // a chart worth a picture: 20 s of it
	}
	b.waitUpTo(t, limit, "the chart to move under load", fmt.Sprintf(`Number(%[1]s.dataset.points) >= %[2]d && Number(%[1]s.dataset.maxPassed) > 0 && Number(%[1]s.dataset.passedTotal) > 0`, chart, points+more))
	b.wait(t, "its canvas", chart+`.querySelector('canvas') !== null`)
	b.screenshot(t, "live")
	stopLoad()

	// Rules: an invalid threshold is shown at its field and line.
	b.do(t, "the Rules page", chromedp.Click(chromedp.CSS("#nav-rules")))
	b.wait(t, "the documents", `document.querySelector('#rules-resource option[value="ddcolor_person"]') !== null`)
	// Every document in force, as the editor writes it in YAML, checks
	// valid and loses no rule ("Valid." says both; the diff may show the
	// defaults spelled out).
	for _, doc := range eval[[]string](t, b, `[...document.querySelectorAll('#rules-resource option')].map(o => o.value)`) {
		b.choose(t, "rules-resource", doc)
		mark := "resource: " + doc
		if doc == "system" { // the system document holds system and gpu, no resource
			mark = "gpu:"
		}
		b.wait(t, doc+"'s document", fmt.Sprintf(`document.getElementById('rules-editor').value.includes(%q)`, mark))
		b.do(t, "Check "+doc, chromedp.Click(chromedp.CSS("#rules-check")))
		b.wait(t, doc+" valid, losing nothing", `document.getElementById('rules-status').textContent === 'Valid.' && document.getElementById('rules-lost').textContent === ''`)
		sameRules(t, base, doc, eval[string](t, b, `document.getElementById('rules-editor').value`))
	}
	b.choose(t, "rules-resource", "ddcolor_person")
	b.wait(t, "ddcolor_person's document", `document.getElementById('rules-editor').value.includes('resource: ddcolor_person')`)
	b.setEditor(t, "resource: ddcolor_person\nhotspot:\n  - param: origin\n    threshold: -1\n    window: 10s\n")
	b.do(t, "Check", chromedp.Click(chromedp.CSS("#rules-check")))
	b.wait(t, "the check", `document.querySelector('#rules-errors .field-error') !== null || document.getElementById('rules-status').textContent.includes('not available')`)
	if eval[bool](t, b, `document.getElementById('rules-status').textContent.includes('not available')`) {
		// A gateway without the dry run: Apply validates, and writes nothing invalid.
		b.do(t, "Apply", chromedp.Click(chromedp.CSS("#rules-apply")))
	}
	fieldErr := `document.querySelector('#rules-errors .field-error[data-path="hotspot[0].threshold"]')`
	b.wait(t, "the error at hotspot[0].threshold", fieldErr+` !== null && `+fieldErr+`.textContent.includes('must be > 0')`)
	b.wait(t, "line 4 marked", `document.querySelector('#rules-gutter [data-line="4"]').classList.contains('err')`)
	b.screenshot(t, "rules")

	// Fixed and applied, it is in force: the next request is refused.
	b.setEditor(t, "resource: ddcolor_person\nhotspot:\n  - param: origin\n    threshold: 1\n    window: 10s\nban: {blocks: 2, within: 10s, for: 1m}\n")
	b.do(t, "Check", chromedp.Click(chromedp.CSS("#rules-check")))
	b.wait(t, "the valid check", `document.getElementById('rules-errors').children.length === 0 && /Valid|not available/.test(document.getElementById('rules-status').textContent)`)
	if eval[bool](t, b, `document.getElementById('rules-status').textContent.startsWith('Valid')`) {
		// The dry run shows what changes: the flow rule in force goes.
		b.wait(t, "the diff", `document.querySelector('#rules-diff .add') !== null && document.getElementById('rules-diff').textContent.includes('threshold: 1')`)
		b.wait(t, "the lost rules", `document.getElementById('rules-lost').textContent.includes('flow[0]')`)
		b.screenshot(t, "rules-diff")
		// It removes rules: the first click asks, and writes nothing.
		b.do(t, "Apply", chromedp.Click(chromedp.CSS("#rules-apply")))
		b.wait(t, "the question", `document.getElementById('rules-status').textContent.includes('click Apply again') && document.getElementById('rules-apply').textContent.startsWith('Confirm')`)
		var inForce struct {
			Rules struct {
				Flow []any `json:"flow"`
			} `json:"rules"`
		}
		getJSON(t, base+"/api/rules/ddcolor_person", &inForce)
		if len(inForce.Rules.Flow) == 0 {
			t.Fatal("the first click of Apply on a document that removes rules wrote it")
		}
	}
	b.do(t, "Apply", chromedp.Click(chromedp.CSS("#rules-apply")))
	b.wait(t, "the apply", `document.getElementById('rules-status').textContent.startsWith('Applied')`)
	var doc struct {
		Rules struct {
			Flow    []any `json:"flow"`
			Hotspot []struct {
				Param     string  `json:"param"`
				Threshold float64 `json:"threshold"`
				Window    string  `json:"window"`
			} `json:"hotspot"`
		} `json:"rules"`
	}
	getJSON(t, base+"/api/rules/ddcolor_person", &doc)
	if h := doc.Rules.Hotspot; len(h) != 1 || h[0].Param != "origin" || h[0].Threshold != 1 || h[0].Window != "10s" || len(doc.Rules.Flow) != 0 {
		t.Fatalf("the applied document is not in force: %+v", doc)
	}
	// 1 per 10 s per client: of two requests, the second at the latest is refused.
	first := colorizePerson(t, base)
	next := first
	if first.status == http.StatusOK {
		next = colorizePerson(t, base)
	}
	if next.status != http.StatusTooManyRequests || next.rule != "ddcolor_person/hotspot[0]" {
		t.Fatalf("the requests after the apply: %+v then %+v, want 429 by ddcolor_person/hotspot[0]", first, next)
	}

	// A second refusal bans the client (blocks: 2); the Refusals page lists
	// the ban, and Unban lifts it.
	if a := colorizePerson(t, base); a.status != http.StatusTooManyRequests {
		t.Fatalf("a request over 1 per 10s: %+v, want 429", a)
	}
	if a := colorizePerson(t, base); a.status != http.StatusTooManyRequests || a.rule != "ddcolor_person/ban" {
		t.Fatalf("after 2 refusals within 10s: %+v, want 429 by ddcolor_person/ban", a)
	}
	b.do(t, "the Refusals page", chromedp.Click(chromedp.CSS("#nav-refusals")))
	b.wait(t, "the refusals of hotspot[0]", `[...document.querySelectorAll('#refusals-table tbody tr')].some(r => r.textContent.includes('ddcolor_person/hotspot[0]'))`)
	unban := `document.querySelector('#bans-table button.unban[data-who="127.0.0.1"]')`
	b.wait(t, "the ban of 127.0.0.1", unban+` !== null && !`+unban+`.disabled`)
	b.screenshot(t, "refusals")
	b.do(t, "Unban", chromedp.Click(chromedp.CSS(`#bans-table button.unban[data-who="127.0.0.1"]`)))
	b.wait(t, "the ban lifted", unban+` === null && document.getElementById('bans-status').textContent.startsWith('Lifted')`)
	var bans struct {
		Bans []struct {
			Who string `json:"who"`
		} `json:"bans"`
	}
	getJSON(t, base+"/api/bans", &bans)
	if len(bans.Bans) != 0 {
		t.Fatalf("/api/bans after Unban: %+v", bans)
	}
	if a := colorizePerson(t, base); strings.Contains(a.rule, "ban") {
		t.Fatalf("after Unban the client is still banned: %+v", a)
	}

	// Shadow: the same hotspot rule in shadow refuses nothing and is counted
	// as would-refuse, marked shadow in the refusals.
	b.do(t, "the Rules page", chromedp.Click(chromedp.CSS("#nav-rules")))
	b.wait(t, "the editor", `document.getElementById('rules-editor').value.includes('threshold: 1')`)
	b.setEditor(t, "resource: ddcolor_person\nhotspot:\n  - param: origin\n    threshold: 1\n    window: 10s\n    mode: shadow\n")
	b.do(t, "Apply in shadow", chromedp.Click(chromedp.CSS("#rules-apply")))
	// It drops the ban: where the check that follows typing answered before
	// the click, Apply asks for a second one.
	b.wait(t, "the apply or its question", `/^Applied|click Apply again/.test(document.getElementById('rules-status').textContent)`)
	if eval[bool](t, b, `document.getElementById('rules-status').textContent.includes('click Apply again')`) {
		b.do(t, "Apply in shadow, confirmed", chromedp.Click(chromedp.CSS("#rules-apply")))
	}
	b.wait(t, "the apply", `document.getElementById('rules-status').textContent.startsWith('Applied')`)
	// The editor, reloaded from the gateway, writes the shadow rule back as it is.
	b.wait(t, "the editor reloaded", `document.getElementById('rules-editor').value.includes('mode: shadow')`)
	sameRules(t, base, "ddcolor_person", eval[string](t, b, `document.getElementById('rules-editor').value`))
	for i := range 3 {
		if a := colorizePerson(t, base); a.status != http.StatusOK {
			t.Fatalf("request %d under a shadow rule: %+v, want 200", i, a)
		}
	}
	b.do(t, "the Live page", chromedp.Click(chromedp.CSS("#nav-live")))
	b.wait(t, "the would-refuse count", chart+`.dataset.shadowTotal > 0`)
	b.do(t, "the Refusals page", chromedp.Click(chromedp.CSS("#nav-refusals")))
	b.choose(t, "f-shadow", "only")
	// The table held enforced refusals too (hotspot, ban): only shadow ones remain.
	b.wait(t, "the shadow refusals alone", `(rows => rows.length > 0 && rows.every(r => r.classList.contains('shadow')) && rows.some(r => r.textContent.includes('hotspot[0]')))([...document.querySelectorAll('#refusals-table tbody tr')])`)
	// Another client has none.
	b.do(t, "the client filter", chromedp.SendKeys(chromedp.CSS("#f-client"), "192.0.2.99"), chromedp.Click(chromedp.CSS(`#refusals-filters button[type="submit"]`)))
	b.wait(t, "no refusals of 192.0.2.99", `document.querySelector('#refusals-table tbody tr.empty') !== null`)

	// GPUs and backends, and the planner, draw what the gateway reports.
	b.do(t, "the GPUs page", chromedp.Click(chromedp.CSS("#nav-gpus")))
	b.wait(t, "the backend", `document.querySelector('#backends-table tbody code') !== null && document.querySelector('#gpus-list meter') !== null && document.querySelectorAll('#queue-table tbody tr').length === 3`)
	b.screenshot(t, "gpus")
	b.do(t, "the Planner page", chromedp.Click(chromedp.CSS("#nav-planner")))
	b.wait(t, "the plan", `document.querySelectorAll('#plan-table tbody tr:not(.empty)').length >= 3 && document.getElementById('plan-yaml').textContent.includes('resource:')`)
	b.screenshot(t, "planner")

	// Apply in shadow puts the plan's documents in force with mode: shadow,
	// after a second click where they remove rules in force.
	b.do(t, "Apply in shadow", chromedp.Click(chromedp.CSS("#plan-apply-shadow")))
	b.wait(t, "the apply or its confirmation", `/^Applied in shadow|Click again to confirm/.test(document.getElementById('plan-status').textContent)`)
	if eval[bool](t, b, `document.getElementById('plan-status').textContent.includes('Click again')`) {
		b.do(t, "Confirm", chromedp.Click(chromedp.CSS("#plan-apply-shadow")))
	}
	b.wait(t, "the plan in shadow", `document.getElementById('plan-status').textContent.startsWith('Applied in shadow')`)
	var planned struct {
		Rules struct {
			Flow []struct {
				Mode string `json:"mode"`
			} `json:"flow"`
		} `json:"rules"`
	}
	getJSON(t, base+"/api/rules/zimage_generate", &planned)
	shadowed := false
	for _, f := range planned.Rules.Flow {
		shadowed = shadowed || f.Mode == "shadow"
	}
	if !shadowed {
		t.Fatalf("zimage_generate after Apply in shadow: %+v, want the proposed flow rule in shadow", planned)
	}

	// A bad document written straight into etcd (as with etcdctl) is
	// refused by the watcher; the Rules page shows that push and why.
	raw, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{g.etcdEndpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Put(context.Background(), "/sluice/rules/resources/zimage_generate", "resource: zimage_generate\nflow: [{threshold: 2, window: 7s}]\n"); err != nil {
		t.Fatal(err)
	}
	b.do(t, "the Rules page", chromedp.Click(chromedp.CSS("#nav-rules")))
	b.wait(t, "the rejected push", `(document.getElementById('rules-reload').click(), document.getElementById('rules-rejection').textContent.includes('flow[0].window: must be one of'))`)

	if errs := b.pageErrors(); len(errs) > 0 {
		t.Fatalf("the page reported errors: %q", errs)
	}
	// Everything the page loaded came from the gateway itself.
	if n := eval[int](t, b, `performance.getEntriesByType('resource').length`); n >= 10000 {
		t.Fatalf("the resource timing buffer is full (%d entries): requests may be missing from the check", n)
	}
	if ext := eval[[]string](t, b, `performance.getEntriesByType('resource').map(e => e.name).filter(u => !u.startsWith(location.origin))`); len(ext) > 0 {
		t.Fatalf("the page made requests elsewhere: %q", ext)
	}
}

// TestConsoleBrowserAccess shows the console without an admin token (read
// only: a banner, no login form, nothing to apply) and with --protect-reads
// (nothing but the login form until the login).
func TestConsoleBrowserAccess(t *testing.T) {
	b := newBrowser(t)
	t.Run("read-only", func(t *testing.T) {
		g := startServe(t)
		b.do(t, "opening the console", chromedp.Navigate(g.base+"/dashboard#/rules"))
		b.wait(t, "the page to start", `document.body.dataset.ready === 'true'`)
		b.wait(t, "the read-only banner", `document.body.dataset.session === 'read-only' && !document.getElementById('readonly-banner').hidden`)
		b.wait(t, "the rules", `document.getElementById('rules-editor').value.includes('resource:')`)
		if !eval[bool](t, b, `document.getElementById('login-form').hidden && document.getElementById('rules-apply').disabled && document.getElementById('plan-apply-shadow').disabled`) {
			t.Fatal("a gateway without an admin token offers a login or a write")
		}
		if err := g.stop(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("protect-reads", func(t *testing.T) {
		g := startServe(t, "--admin-token", "s3cret", "--protect-reads")
		b.do(t, "opening the console", chromedp.Navigate(g.base+"/dashboard#/live"))
		b.wait(t, "the page to start", `document.body.dataset.ready === 'true'`)
		b.wait(t, "the login alone", `!document.getElementById('protect-banner').hidden && document.getElementById('nav').hidden && document.getElementById('page-live').hidden && !document.getElementById('login-form').hidden`)
		b.do(t, "logging in", chromedp.SendKeys(chromedp.CSS("#login-token"), "s3cret"), chromedp.Click(chromedp.CSS("#login-submit")))
		b.wait(t, "the live page", `document.body.dataset.session === 'admin' && !document.getElementById('page-live').hidden && document.getElementById('protect-banner').hidden`)
		b.wait(t, "the live feed", `document.getElementById('live-chart-ddcolor_person') !== null`)
		if err := g.stop(); err != nil {
			t.Fatal(err)
		}
	})
	if errs := b.pageErrors(); len(errs) > 0 {
		t.Fatalf("the page reported errors: %q", errs)
	}
}

// TestConsoleScripts runs the page's own modules in Chromium: the YAML the
// editor writes reads back as the same data (go.yaml.in/yaml/v3), locate
// finds the line of a field path, and fieldsOf reads the errors of a
// gateway that gives no locations. The page's files come from the binary's
// embedded copy, served as the console serves them.
func TestConsoleScripts(t *testing.T) {
	b := newBrowser(t)
	mux := http.NewServeMux()
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard/", http.FileServerFS(web.Files)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	b.do(t, "opening the page's files", chromedp.Navigate(srv.URL+"/dashboard/assets/vendor/uplot/LICENSE"))

	docs := []string{
		`{"resource":"ddcolor_person","flow":[{"threshold":6,"window":"1s","behavior":"reject"}],"hotspot":[{"param":"origin","threshold":3,"window":"1s","burst":1,"items":{"203.0.113.7":10}},{"param":"size","threshold":30,"items":{"1280":9}}],"concurrency":8,"cost":{"param":"size","default":1,"values":{"1024":2,"1280":3}},"ban":{"blocks":20,"within":"10s","for":"1m0s"}}`,
		`{"system":{"avg_rt":"2m0s","concurrency":64},"gpu":{"memory_used_ratio":0.875,"action":"reject","mode":"shadow"}}`,
		`{"odd":{"yes":"no","":"","a: b":"#x","1e3":"0x1F","list":["- a","[b]","{c}","d, e","true","null","~"," lead","trail ","multi\nline",7,-1.5,true,null],"nested":[[1,2],{"k":[]},{}],"deep":{"x":{"y":{"z":"w"}}}}}`,
		// Strings a YAML reader would cut, fold or take for numbers and dates.
		`{"quoted":{"hash":"a #b","hash2":"a\t#b","cr":"x\ry","crlf":"x\r\ny","nel":"x\u0085y","ls":"x\u2028y","ps":"x\u2029y","del":"x\u007fy","bom":"\ufeffz",
			"octal":"0o17","octal1":"017","binary":"0b101","hex":"0x_1F","hexu":"0X1f","under":"1_000","date":"2024-01-01","stamp":"2024-01-01T10:00:00Z","time":"12:30:00",
			"ip":"203.0.113.7","v6":"2001:db8::1","dur":"1m30s","two":"a  b","inf":".inf","merge":"<<","star":"a*","amp":"&x","bang":"!x","colon":"a:b","dash":"-","q":"'",
			"0o17":1,"2024-01-01":2,"a #b":3,"x\u2028y":4,"list":["a #b","0b101","2024-01-01","x\ry"]}}`,
	}
	for i, doc := range docs {
		out := eval[string](t, b, fmt.Sprintf(`import('/dashboard/assets/yaml.js').then(m => m.toYAML(%s))`, doc))
		var want, got any
		if err := json.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("doc %d: the YAML the editor writes does not parse: %v\n%s", i, err, out)
		}
		if !reflect.DeepEqual(normalise(got), normalise(want)) {
			t.Errorf("doc %d: the YAML reads back as\n%#v\nwant\n%#v\nYAML:\n%s", i, normalise(got), normalise(want), out)
		}
	}

	text := "resource: ddcolor_person\nflow:\n  - threshold: 6\n    window: 1s\nhotspot:\n  - param: origin\n    threshold: 3\n  - param: size\n    threshold: 30\n    items: {\"1280\": 9}\nconcurrency: 8\ncost:\n  param: size\n  values: {\"1024\": 2}\nban: {blocks: 20, within: 10s}\n"
	for path, line := range map[string]int{"flow[0].threshold": 3, "flow[0].window": 4, "hotspot[1].threshold": 9, "hotspot[1].items": 10,
		"hotspot[0].param": 6, "concurrency": 11, "cost.values": 14, "ban.within": 15, "flow[1]": 2, "nope": 0} {
		js, _ := json.Marshal(text)
		if got := eval[int](t, b, fmt.Sprintf(`import('/dashboard/assets/rules.js').then(m => m.locate(%s, %q))`, js, path)); got != line {
			t.Errorf("locate(%s) = line %d, want %d", path, got, line)
		}
	}

	// A live frame the gateway could not fill ({"time", "error"}, or no
	// resources) reaches no subscriber: the charts and filters keep the last
	// good snapshot.
	seen := eval[[]int](t, b, `import('/dashboard/assets/live.js').then(m => {
		const got = [];
		m.subscribe((s) => got.push(s.resources.length));
		m.publish({time: '2026-01-01T00:00:00Z', resources: [{resource: 'a'}, {resource: 'b'}]});
		m.publish({time: '2026-01-01T00:00:01Z', error: 'encoding the snapshot failed'});
		m.publish({time: '2026-01-01T00:00:02Z'});
		m.publish({time: '2026-01-01T00:00:03Z', resources: null});
		m.publish({time: '2026-01-01T00:00:04Z', resources: []});
		return [...got, m.latestSnapshot().resources.length];
	})`)
	if want := []int{2, 0, 0}; !reflect.DeepEqual(seen, want) {
		t.Errorf("subscribers saw snapshots of %v resources (then the latest), want %v", seen, want)
	}

	fields := eval[[]map[string]string](t, b, `import('/dashboard/assets/rules.js').then(m => m.fieldsOf({errors: [
		"/sluice/rules/resources/zimage_generate: document 1 (zimage_generate): flow[0].threshold: must be > 0, got -1",
		"something else went wrong"]}))`)
	want := []map[string]string{{"path": "flow[0].threshold", "message": "must be > 0, got -1"}, {"path": "", "message": "something else went wrong"}}
	if !reflect.DeepEqual(fields, want) {
		t.Errorf("fieldsOf = %q, want %q", fields, want)
	}
	if errs := b.pageErrors(); len(errs) > 0 {
		t.Fatalf("the page reported errors: %q", errs)
	}
}

// sameRules decodes the editor's text as the gateway would (rules.Parse,
// rules.Build) and compares it with the document in force (GET
// /api/rules): a rule the editor drops or changes fails here.
func sameRules(t *testing.T, base, name, text string) {
	t.Helper()
	docs, err := rules.Parse("editor", []byte(text))
	if err != nil {
		t.Fatalf("%s: the editor's text does not decode: %v\n%s", name, err, text)
	}
	set, err := rules.Build(docs)
	if err != nil {
		t.Fatalf("%s: the editor's text does not build: %v\n%s", name, err, text)
	}
	var body struct {
		Documents []struct {
			Resource string          `json:"resource"`
			Rules    json.RawMessage `json:"rules"`
			System   json.RawMessage `json:"system"`
			GPU      json.RawMessage `json:"gpu"`
		} `json:"documents"`
	}
	getJSON(t, base+"/api/rules", &body)
	for _, d := range body.Documents {
		if d.Resource != name {
			continue
		}
		pairs := map[string][2]any{}
		if name == "system" {
			pairs["system"] = [2]any{d.System, set.System}
			pairs["gpu"] = [2]any{d.GPU, set.GPU}
		} else {
			pairs["rules"] = [2]any{d.Rules, set.Resources[name]}
		}
		for what, p := range pairs {
			var inForce, edited any
			mine, err := json.Marshal(p[1])
			if err != nil {
				t.Fatal(err)
			}
			if len(p[0].(json.RawMessage)) == 0 {
				continue // nothing of this kind in force
			}
			if err := json.Unmarshal(p[0].(json.RawMessage), &inForce); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(mine, &edited); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(inForce, edited) {
				t.Fatalf("%s: the editor's %s differ from the rules in force:\nin force %s\nedited   %s\ntext:\n%s", name, what, p[0], mine, text)
			}
		}
		return
	}
	t.Fatalf("%s: not in GET /api/rules", name)
}

// normalise makes decoded YAML and JSON comparable: numbers as float64,
// maps keyed by strings.
func normalise(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, x := range v {
			out[k] = normalise(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = normalise(x)
		}
		return out
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case uint64:
		return float64(v)
	}
	return v
}
