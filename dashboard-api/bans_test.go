package dashboardapi_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
)

// refusalsEngine is an engine whose log of refusals holds, newest first:
// a shadow flow refusal of 192.0.2.5 on ddcolor_person twice, a tenant
// hotspot refusal of acme, a ban refusal of 192.0.2.1 and two origin
// hotspot refusals of 192.0.2.1 (which earned it a 5-minute ban) on
// ddcolor_building.
func refusalsEngine(t *testing.T) *engine.Engine {
	t.Helper()
	clock := &fixedClock{time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	eng := newEngine(t, `resource: ddcolor_building
hotspot: [{param: origin, threshold: 1, window: 60s}, {param: tenant, threshold: 1, window: 60s}]
ban: {blocks: 2, within: 60s, for: 5m}
---
resource: ddcolor_person
flow: [{threshold: 1, window: 10s, mode: shadow}]
`, engine.Options{Clock: clock})
	calls := []struct {
		call    engine.Call
		n       int
		refused int
	}{
		{engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1", Size: 512}, 4, 3},
		{engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.2", Tenant: "acme", Tier: "registered"}, 2, 1},
		{engine.Call{Resource: "ddcolor_person", Origin: "192.0.2.5"}, 3, 0},
	}
	for _, c := range calls {
		refused := 0
		for range c.n {
			tok, err := eng.Guard(t.Context(), c.call)
			if err != nil {
				refused++
				continue
			}
			tok.Exit(nil)
		}
		if refused != c.refused {
			t.Fatalf("%+v: %d refused, want %d", c.call, refused, c.refused)
		}
	}
	return eng
}

func TestBlockedFilters(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{Engine: refusalsEngine(t)})
	// summary lists the refusals as "resource kind client shadow".
	summary := func(query string) string {
		t.Helper()
		rec := request(r, http.MethodGet, "/api/blocked"+query, "", nil)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", query, rec.Code, rec.Body)
		}
		var lines []string
		for _, b := range decode(t, rec)["blocked"].([]any) {
			m := b.(map[string]any)
			client := m["origin"].(string)
			if tenant, ok := m["tenant"]; ok {
				client = tenant.(string)
			}
			shadow := ""
			if m["shadow"] == true {
				shadow = " shadow"
			}
			lines = append(lines, fmt.Sprintf("%s %s %s%s", m["resource"], m["kind"], client, shadow))
		}
		return strings.Join(lines, "; ")
	}
	for _, tc := range []struct{ query, want string }{
		{"", "ddcolor_person flow 192.0.2.5 shadow; ddcolor_person flow 192.0.2.5 shadow; ddcolor_building hotspot acme; ddcolor_building ban 192.0.2.1; ddcolor_building hotspot 192.0.2.1; ddcolor_building hotspot 192.0.2.1"},
		{"?shadow=include", "ddcolor_person flow 192.0.2.5 shadow; ddcolor_person flow 192.0.2.5 shadow; ddcolor_building hotspot acme; ddcolor_building ban 192.0.2.1; ddcolor_building hotspot 192.0.2.1; ddcolor_building hotspot 192.0.2.1"},
		{"?shadow=only", "ddcolor_person flow 192.0.2.5 shadow; ddcolor_person flow 192.0.2.5 shadow"},
		{"?shadow=exclude", "ddcolor_building hotspot acme; ddcolor_building ban 192.0.2.1; ddcolor_building hotspot 192.0.2.1; ddcolor_building hotspot 192.0.2.1"},
		{"?resource=ddcolor_person", "ddcolor_person flow 192.0.2.5 shadow; ddcolor_person flow 192.0.2.5 shadow"},
		{"?resource=zimage_generate", ""},
		{"?kind=hotspot", "ddcolor_building hotspot acme; ddcolor_building hotspot 192.0.2.1; ddcolor_building hotspot 192.0.2.1"},
		{"?kind=ban", "ddcolor_building ban 192.0.2.1"},
		{"?client=192.0.2.1", "ddcolor_building ban 192.0.2.1; ddcolor_building hotspot 192.0.2.1; ddcolor_building hotspot 192.0.2.1"},
		{"?client=acme", "ddcolor_building hotspot acme"},
		{"?client=192.0.2.2", "ddcolor_building hotspot acme"}, // acme's origin
		{"?resource=ddcolor_building&kind=hotspot&client=192.0.2.1&limit=1", "ddcolor_building hotspot 192.0.2.1"},
		{"?kind=flow&shadow=exclude", ""},
		{"?limit=2&shadow=exclude", "ddcolor_building hotspot acme; ddcolor_building ban 192.0.2.1"},
	} {
		if got := summary(tc.query); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.query, got, tc.want)
		}
	}
	for _, tc := range []struct{ query, detail string }{
		{"?resource=nope", `resource must be one of ddcolor_person, ddcolor_building, zimage_generate; got "nope"`},
		{"?kind=rate", `kind must be one of flow, hotspot, concurrency, system, cpu, ban, gpu, tier_rate; got "rate"`},
		{"?shadow=yes", `shadow must be include, only or exclude; got "yes"`},
		{"?client=", `client must name an origin`},
		{"?limit=0", `limit must be an integer from 1 to 1024; got "0"`},
	} {
		p := checkProblem(t, request(r, http.MethodGet, "/api/blocked"+tc.query, "", nil), http.StatusBadRequest)
		if !strings.Contains(p["detail"].(string), tc.detail) {
			t.Errorf("%s: detail %q, want %q", tc.query, p["detail"], tc.detail)
		}
	}
}

func TestBansListAndLift(t *testing.T) {
	eng := refusalsEngine(t)
	r := newRouter(t, dashboardapi.Config{Engine: eng, AdminToken: testToken})
	rec := request(r, http.MethodGet, "/api/bans", "", nil)
	want := `{"bans":[{"resource":"ddcolor_building","subject":"origin","who":"192.0.2.1","until":"2026-11-24T12:05:00Z","remaining_s":300}]}`
	if rec.Code != http.StatusOK || rec.Body.String() != want {
		t.Fatalf("GET /api/bans: %d %s\nwant %s", rec.Code, rec.Body, want)
	}

	const lift = "/api/bans?resource=ddcolor_building&who=192.0.2.1"
	checkProblem(t, request(r, http.MethodDelete, lift, "", nil), http.StatusUnauthorized)
	checkProblem(t, request(r, http.MethodDelete, lift, "Bearer wrong", nil), http.StatusForbidden)
	for _, tc := range []struct{ query, detail string }{
		{"?resource=ddcolor_building", "who must name the banned origin"},
		{"?resource=nope&who=192.0.2.1", `resource must be one of ddcolor_person, ddcolor_building, zimage_generate, or left out for every resource; got "nope"`},
	} {
		p := checkProblem(t, request(r, http.MethodDelete, "/api/bans"+tc.query, "Bearer "+testToken, nil), http.StatusBadRequest)
		if !strings.Contains(p["detail"].(string), tc.detail) {
			t.Errorf("%s: detail %q, want %q", tc.query, p["detail"], tc.detail)
		}
	}
	if len(eng.Bans()) != 1 {
		t.Fatal("a refused DELETE lifted the ban")
	}
	// Another resource's lift leaves the ban.
	rec = request(r, http.MethodDelete, "/api/bans?resource=ddcolor_person&who=192.0.2.1", "Bearer "+testToken, nil)
	if rec.Code != http.StatusOK || rec.Body.String() != `{"lifted":0}` {
		t.Fatalf("lift on another resource: %d %s", rec.Code, rec.Body)
	}
	rec = request(r, http.MethodDelete, lift, "Bearer "+testToken, nil)
	if rec.Code != http.StatusOK || rec.Body.String() != `{"lifted":1}` {
		t.Fatalf("DELETE %s: %d %s, want {\"lifted\":1}", lift, rec.Code, rec.Body)
	}
	if rec := request(r, http.MethodGet, "/api/bans", "", nil); rec.Body.String() != `{"bans":[]}` {
		t.Errorf("after the lift: %s", rec.Body)
	}
	// Unbanned, the origin meets its hotspot again, not the ban.
	_, err := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_building", Origin: "192.0.2.1", Size: 512})
	if ref, ok := err.(*engine.Refusal); !ok || ref.Kind != engine.KindHotspot {
		t.Errorf("after the lift: %v, want a hotspot refusal", err)
	}
}

func TestBansWritesNeedAToken(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{Engine: refusalsEngine(t)})
	checkProblem(t, request(r, http.MethodDelete, "/api/bans?who=192.0.2.1", "Bearer x", nil), http.StatusForbidden)
	protected := newRouter(t, dashboardapi.Config{Engine: refusalsEngine(t), AdminToken: testToken, ProtectReads: true})
	checkProblem(t, request(protected, http.MethodGet, "/api/bans", "", nil), http.StatusUnauthorized)
	if rec := request(protected, http.MethodGet, "/api/bans", "Bearer "+testToken, nil); rec.Code != http.StatusOK {
		t.Errorf("GET /api/bans with the token: %d", rec.Code)
	}
}

// An origin named by any of its forms — an IPv6 address inside the
// recorded prefix, an IPv4-mapped IPv6 address — finds the refusals and
// bans the engine keeps under the canonical origin, with the prefix length
// of Config.IPv6Prefix.
func TestBansAndBlockedCanonicaliseOrigins(t *testing.T) {
	clock := &fixedClock{time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	eng := newEngine(t, `resource: ddcolor_building
hotspot: [{param: origin, threshold: 1, window: 60s}]
ban: {blocks: 1, within: 60s, for: 5m}
`, engine.Options{Clock: clock})
	// Origins as httpapi records them: IPv6 by /48 prefix here.
	for _, origin := range []string{"2001:db8:1::/48", "192.0.2.7"} {
		for range 2 {
			if tok, err := eng.Guard(t.Context(), engine.Call{Resource: "ddcolor_building", Origin: origin, Size: 512}); err == nil {
				tok.Exit(nil)
			}
		}
	}
	if n := len(eng.Bans()); n != 2 {
		t.Fatalf("%d bans, want 2", n)
	}
	r := newRouter(t, dashboardapi.Config{Engine: eng, AdminToken: testToken, IPv6Prefix: 48})
	for _, tc := range []struct{ client, want string }{
		{"2001:db8:1:5::9", "2001:db8:1::/48"},
		{"2001:0db8:0001:0000::/48", "2001:db8:1::/48"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:2::1", ""},
	} {
		rec := request(r, http.MethodGet, "/api/blocked?client="+url.QueryEscape(tc.client), "", nil)
		var got []string
		for _, b := range decode(t, rec)["blocked"].([]any) {
			got = append(got, b.(map[string]any)["origin"].(string))
		}
		if len(got) != 1 || got[0] != tc.want {
			if !(tc.want == "" && len(got) == 0) {
				t.Errorf("client=%s: origins %v, want one refusal of %q", tc.client, got, tc.want)
			}
		}
	}
	for _, who := range []string{"2001:db8:1:ffff::abcd", "::ffff:192.0.2.7"} {
		rec := request(r, http.MethodDelete, "/api/bans?who="+url.QueryEscape(who), "Bearer "+testToken, nil)
		if rec.Code != http.StatusOK || rec.Body.String() != `{"lifted":1}` {
			t.Errorf("DELETE who=%s: %d %s, want {\"lifted\":1}", who, rec.Code, rec.Body)
		}
	}
	if b := eng.Bans(); len(b) != 0 {
		t.Errorf("bans left: %+v", b)
	}
}
