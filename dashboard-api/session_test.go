package dashboardapi_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
)

// fakeSession authorizes a request whose X-Test-Session header is "ok";
// any X-Test-Session header at all is a session it carries.
type fakeSession struct{}

func (fakeSession) Authorized(r *http.Request) bool { return r.Header.Get("X-Test-Session") == "ok" }
func (fakeSession) Carries(r *http.Request) bool    { return r.Header.Get("X-Test-Session") != "" }

func TestSessionAuthorizesWritesAndProtectedReads(t *testing.T) {
	for _, tc := range []struct {
		name, session, auth string
		noSession           bool
		write, read         int
	}{
		{name: "session authorizes", session: "ok", write: 200, read: 200},
		{name: "a refused session is 403", session: "stale", write: 403, read: 403},
		{name: "no session, no token", write: 401, read: 401},
		{name: "the bearer token still works", auth: "Bearer " + testToken, write: 200, read: 200},
		// A bearer header is judged alone: a wrong token is not rescued
		// by a session.
		{name: "a wrong bearer token with a session", session: "ok", auth: "Bearer wrong", write: 403, read: 403},
		{name: "without Config.Session the header means nothing", session: "ok", noSession: true, write: 401, read: 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &fakeWriter{}
			sim := &fakeSim{used: 0.3}
			cfg := dashboardapi.Config{AdminToken: testToken, ProtectReads: true, Writer: w, Simulator: sim, Session: fakeSession{}}
			if tc.noSession {
				cfg.Session = nil
			}
			r := newRouter(t, cfg)
			send := func(method, path, body string) *httptest.ResponseRecorder {
				req := httptest.NewRequest(method, path, strings.NewReader(body))
				if tc.session != "" {
					req.Header.Set("X-Test-Session", tc.session)
				}
				if tc.auth != "" {
					req.Header.Set("Authorization", tc.auth)
				}
				rec := httptest.NewRecorder()
				r.ServeHTTP(rec, req)
				return rec
			}
			if rec := send(http.MethodPut, "/api/rules/ddcolor_person", flowDoc); rec.Code != tc.write {
				t.Errorf("PUT rules: %d, want %d: %s", rec.Code, tc.write, rec.Body)
			}
			if rec := send(http.MethodPut, "/api/simulator/vram", `{"used_ratio": 0.9}`); rec.Code != tc.write {
				t.Errorf("PUT simulator: %d, want %d: %s", rec.Code, tc.write, rec.Body)
			}
			if rec := send(http.MethodGet, "/api/resources", ""); rec.Code != tc.read {
				t.Errorf("GET resources: %d, want %d: %s", rec.Code, tc.read, rec.Body)
			}
			wantCalls, wantUsed := 0, 0.3
			if tc.write == 200 {
				wantCalls, wantUsed = 1, 0.9
			}
			if got := len(w.Calls()); got != wantCalls {
				t.Errorf("%d writes reached the writer, want %d", got, wantCalls)
			}
			if sim.used != wantUsed {
				t.Errorf("simulator memory %v, want %v", sim.used, wantUsed)
			}
		})
	}
}
