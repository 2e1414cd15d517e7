package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestServeDashboard: serve mounts the web console, says where it is, the
// page's login writes rules through the operator API, and a graceful stop
// does not wait for an open live feed.
func TestServeDashboard(t *testing.T) {
	g := startServe(t, "--admin-token", "s3cret", "--shutdown-grace", "5s")
	if !strings.Contains(g.log.String(), "dashboard="+g.base+"/dashboard") {
		t.Errorf("the start-up log does not name the dashboard:\n%s", g.log.String())
	}
	resp, err := http.Get(g.base + "/dashboard")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("GET /dashboard: %d, CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}

	resp, err = http.Post(g.base+"/dashboard/login", "application/json", strings.NewReader(`{"token": "s3cret"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "sluice_session" {
			cookie = c
		}
	}
	if resp.StatusCode != http.StatusNoContent || cookie == nil {
		t.Fatalf("login: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	send := func(method, path, csrf, body string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, g.base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.AddCookie(cookie)
		if csrf != "" {
			req.Header.Set("X-CSRF-Token", csrf)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp = send(http.MethodGet, "/dashboard/session", "", "")
	var session struct {
		CSRF string `json:"csrf_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&session)
	resp.Body.Close()
	if err != nil || session.CSRF == "" {
		t.Fatalf("session: %v %+v", err, session)
	}
	const doc = "resource: ddcolor_person\nflow: [{threshold: 7}]\n"
	if resp := send(http.MethodPut, "/api/rules/ddcolor_person", "", doc); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("PUT without the CSRF token: %d, want 403", resp.StatusCode)
	}
	if resp := send(http.MethodPut, "/api/rules/ddcolor_person", session.CSRF, doc); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT with the CSRF token: %d, want 200", resp.StatusCode)
	}

	// A dashboard stays open while the gateway stops.
	live, err := http.Get(g.base + "/api/live")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Body.Close()
	r := bufio.NewReader(live.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading /api/live: %v", err)
		}
		if strings.HasPrefix(line, "data: ") {
			break
		}
	}
	// Were the feed not ended when shutdown begins, the stop would wait
	// out the 5 s grace and fail.
	if err := g.stop(); err != nil {
		t.Fatalf("stop with a dashboard open: %v", err)
	}
}
