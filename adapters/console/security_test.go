package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/console"
)

// heldBody is a request body that says when it is first read and gives
// its bytes only once release is closed.
type heldBody struct {
	reading chan<- struct{}
	release <-chan struct{}
	once    sync.Once
	r       io.Reader
}

func (b *heldBody) Read(p []byte) (int, error) {
	b.once.Do(func() {
		b.reading <- struct{}{}
		<-b.release
	})
	return b.r.Read(p)
}

// Fifty wrong tokens sent together from one address are checked five at
// most: each attempt is reserved before its token is compared.
func TestLoginParallelGuessesAreLimited(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	const n = 50
	reading, release := make(chan struct{}), make(chan struct{})
	codes := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			body := &heldBody{reading: reading, release: release, r: strings.NewReader(fmt.Sprintf(`{"token": "guess-%d"}`, i))}
			hr := httptest.NewRequest(http.MethodPost, "/dashboard/login", body)
			hr.RemoteAddr = "192.0.2.10:1234"
			hr.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			rg.router.ServeHTTP(rec, hr)
			codes <- rec.Code
		})
	}
	for range n { // every request is in, its body held back
		<-reading
	}
	close(release)
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusUnauthorized] != 5 || got[http.StatusTooManyRequests] != n-5 {
		t.Fatalf("answers %v, want 5 × 401 and %d × 429", got, n-5)
	}
}

func (rg *rig) loginFrom(peer, token string) int {
	return rg.do(req{method: http.MethodPost, path: "/dashboard/login", body: `{"token": "` + token + `"}`, contentType: "application/json", peer: peer}).Code
}

// An IPv6 client is its /64 (Config.IPv6Prefix): rotating addresses within
// it gives no more guesses.
func TestLoginLimitKeysIPv6ByPrefix(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	for i := range 5 {
		if c := rg.loginFrom(fmt.Sprintf("[2001:db8:1:2::%x]:1", i+1), "wrong"); c != http.StatusUnauthorized {
			t.Fatalf("wrong token #%d: %d", i+1, c)
		}
	}
	if c := rg.loginFrom("[2001:db8:1:2:ffff::9]:1", testToken); c != http.StatusTooManyRequests {
		t.Fatalf("a sixth address of the /64: %d, want 429", c)
	}
	if c := rg.loginFrom("[2001:db8:1:3::1]:1", testToken); c != http.StatusNoContent {
		t.Fatalf("another /64: %d, want 204", c)
	}
	wide := newRig(t, console.Config{AdminToken: testToken, IPv6Prefix: 48})
	for i := range 5 {
		wide.loginFrom(fmt.Sprintf("[2001:db8:1:%x::1]:1", i+1), "wrong")
	}
	if c := wide.loginFrom("[2001:db8:1:ff::1]:1", testToken); c != http.StatusTooManyRequests {
		t.Fatalf("IPv6Prefix 48, another /64 of the /48: %d, want 429", c)
	}
}

// A flood of wrong tokens from more origins than the limiter tracks makes
// newcomers share one count, but never locks out an origin the table
// knows: one that logged in lately, or one with its own count.
func TestLoginFloodSparesKnownOrigins(t *testing.T) {
	if testing.Short() {
		t.Skip("10 005 logins")
	}
	rg := newRig(t, console.Config{AdminToken: testToken})
	const admin, known = "203.0.113.5:1", "203.0.113.6:1"
	if c := rg.loginFrom(admin, testToken); c != http.StatusNoContent {
		t.Fatalf("the admin's login: %d", c)
	}
	if c := rg.loginFrom(known, "typo"); c != http.StatusUnauthorized {
		t.Fatalf("a typo: %d", c)
	}
	for i := range 10005 {
		rg.loginFrom(fmt.Sprintf("10.%d.%d.%d:1", i>>16, (i>>8)&255, i&255), "wrong")
	}
	if c := rg.loginFrom("198.51.100.99:1", testToken); c != http.StatusTooManyRequests {
		t.Fatalf("a newcomer during the flood: %d, want 429 (the shared count)", c)
	}
	if c := rg.loginFrom(admin, testToken); c != http.StatusNoContent {
		t.Fatalf("the admin's known address during the flood: %d, want 204", c)
	}
	if c := rg.loginFrom(known, testToken); c != http.StatusNoContent {
		t.Fatalf("an origin with its own count during the flood: %d, want 204", c)
	}
}

// The login, the live feed's bearer token and the operator API's share one
// limit: guesses on any of them spend the others' attempts.
func TestTokenGuessesShareOneLimit(t *testing.T) {
	for _, first := range []string{"login", "live", "api"} {
		t.Run(first, func(t *testing.T) {
			rg := newRig(t, console.Config{AdminToken: testToken, ProtectReads: true})
			guess := func(token string) int {
				switch first {
				case "login":
					return rg.login(t, token).Code
				case "live":
					return rg.do(req{method: http.MethodGet, path: "/api/live", header: map[string]string{"Authorization": "Bearer " + token}}).Code
				}
				return rg.do(req{method: http.MethodPut, path: "/api/simulator/vram", body: `{"used_ratio": 0.9}`,
					header: map[string]string{"Authorization": "Bearer " + token}}).Code
			}
			// A wrong bearer token is 403 on the operator API (it is not the
			// admin token); on the login and the live feed, 401.
			want := http.StatusUnauthorized
			if first == "api" {
				want = http.StatusForbidden
			}
			for i := range 5 {
				if c := guess("wrong"); c != want {
					t.Fatalf("wrong token #%d: %d, want %d", i+1, c, want)
				}
			}
			if rec := rg.login(t, testToken); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "60" {
				t.Fatalf("login after 5 wrong %s tokens: %d Retry-After %q", first, rec.Code, rec.Header().Get("Retry-After"))
			}
			// A stream let through would end at once: its request is cancelled.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			lr := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/live", nil)
			lr.RemoteAddr = "192.0.2.10:1234"
			lr.Header.Set("Authorization", "Bearer "+testToken)
			live := httptest.NewRecorder()
			rg.router.ServeHTTP(live, lr)
			if live.Code != http.StatusTooManyRequests || live.Header().Get("Retry-After") == "" {
				t.Fatalf("/api/live after 5 wrong %s tokens: %d", first, live.Code)
			}
			api := rg.do(req{method: http.MethodPut, path: "/api/simulator/vram", body: `{"used_ratio": 0.9}`,
				header: map[string]string{"Authorization": "Bearer " + testToken}})
			if api.Code != http.StatusTooManyRequests || api.Header().Get("Retry-After") == "" {
				t.Fatalf("operator API after 5 wrong %s tokens: %d", first, api.Code)
			}
			if rg.sim.VRAMUsed()[0] != 0.3 {
				t.Fatal("a limited request changed the simulator")
			}
		})
	}
}

// OPTIONS is not a safe method: with the cookie and no CSRF token it is
// not authorized.
func TestSessionDoesNotAuthorizeOptionsWithoutCSRF(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken})
	ck := rg.sessionCookie(t)
	for method, want := range map[string]bool{http.MethodGet: true, http.MethodHead: true, http.MethodOptions: false, http.MethodPost: false} {
		r := httptest.NewRequest(method, "/api/rules/x", nil)
		r.AddCookie(ck)
		if got := rg.con.Authorized(r); got != want {
			t.Errorf("%s with the cookie, no CSRF token: authorized %v, want %v", method, got, want)
		}
	}
}

// ended fails the test unless v's stream ends (within 10 s).
func ended(t *testing.T, v *viewer, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(v.r)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: the stream did not end cleanly: %v", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the stream is still open", what)
	}
}

// Under --protect-reads a stream a session opened ends when that session
// logs out or expires; another session's stream and a bearer stream go on.
func TestLiveStreamEndsWithItsSession(t *testing.T) {
	rg := newRig(t, console.Config{AdminToken: testToken, ProtectReads: true})
	srv := serveRig(t, rg)
	cookie := func(ck *http.Cookie) map[string]string { return map[string]string{"Cookie": ck.Name + "=" + ck.Value} }
	leaving, staying := rg.sessionCookie(t), rg.sessionCookie(t)
	gone, kept := watch(t, srv, cookie(leaving)), watch(t, srv, cookie(staying))
	gone.next(t)
	kept.next(t)
	if rec := rg.do(req{method: http.MethodPost, path: "/dashboard/logout", cookie: leaving}); rec.Code != http.StatusNoContent {
		t.Fatalf("logout: %d", rec.Code)
	}
	ended(t, gone, "after its logout")

	bearer := watch(t, srv, map[string]string{"Authorization": "Bearer " + testToken})
	bearer.next(t)
	rg.clock.Advance(console.SessionTTL)
	ended(t, kept, "at its expiry")
	bearer.next(t) // the event the advance published: the bearer stream goes on
}
