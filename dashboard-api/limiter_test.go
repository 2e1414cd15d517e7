package dashboardapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine/clock"
)

var limiterStart = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// Attempts being checked count: five reserved and not yet reported leave
// none for a sixth, and a success frees the origin at once.
func TestTokenLimiterCountsAttemptsInProgress(t *testing.T) {
	l := dashboardapi.NewTokenLimiter(clock.NewFake(limiterStart), 64)
	for i := range dashboardapi.TokenFailures {
		if _, ok := l.Allow("192.0.2.1"); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if wait, ok := l.Allow("192.0.2.1"); ok || wait != time.Minute {
		t.Fatalf("a sixth attempt while five are checked: ok=%v wait %v, want refused for 1m", ok, wait)
	}
	l.Succeeded("192.0.2.1")
	if _, ok := l.Allow("192.0.2.1"); !ok {
		t.Fatal("refused after a success")
	}
}

// An IPv6 client is its /64: rotating addresses within it gains nothing;
// the next /64 is another origin.
func TestTokenLimiterKeysIPv6ByPrefix(t *testing.T) {
	l := dashboardapi.NewTokenLimiter(clock.NewFake(limiterStart), 64)
	for i := range dashboardapi.TokenFailures {
		ip := "2001:db8:1:2::" + string(rune('a'+i))
		if _, ok := l.Allow(ip); !ok {
			t.Fatalf("%s refused", ip)
		}
		l.Failed(ip)
	}
	if _, ok := l.Allow("2001:db8:1:2:ffff::1"); ok {
		t.Fatal("a sixth address of the same /64 was let through")
	}
	if _, ok := l.Allow("2001:db8:1:3::1"); !ok {
		t.Fatal("another /64 was refused")
	}
}

// Without a console's limiter the operator API keeps its own: wrong bearer
// tokens are limited per origin, and over the limit even the right token
// gets 429 with Retry-After, before it is compared.
func TestBearerGuessesAreLimited(t *testing.T) {
	clk := clock.NewFake(limiterStart)
	for _, shared := range []bool{false, true} {
		cfg := dashboardapi.Config{AdminToken: testToken, ProtectReads: true, Writer: &fakeWriter{}, Simulator: &fakeSim{used: 0.3}}
		if shared {
			cfg.Limiter = dashboardapi.NewTokenLimiter(clk, 64)
		}
		r := newRouter(t, cfg)
		send := func(method, path, token, peer string) *httptest.ResponseRecorder {
			req := httptest.NewRequest(method, path, strings.NewReader(`{"used_ratio": 0.5}`))
			req.RemoteAddr = peer
			req.Header.Set("Authorization", "Bearer "+token)
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			return rec
		}
		for i := range dashboardapi.TokenFailures {
			path := "/api/resources" // reads and writes share the count
			if i%2 == 1 {
				path = "/api/simulator/vram"
			}
			method := map[bool]string{true: http.MethodPut, false: http.MethodGet}[i%2 == 1]
			if rec := send(method, path, "wrong", "192.0.2.10:1"); rec.Code != http.StatusForbidden {
				t.Fatalf("shared=%v: wrong token #%d: %d, want 403", shared, i+1, rec.Code)
			}
		}
		rec := send(http.MethodPut, "/api/simulator/vram", testToken, "192.0.2.10:2")
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "60" || !strings.Contains(rec.Body.String(), "too many wrong admin tokens") {
			t.Fatalf("shared=%v: the right token after 5 wrong: %d Retry-After %q %s", shared, rec.Code, rec.Header().Get("Retry-After"), rec.Body)
		}
		if rec := send(http.MethodGet, "/api/resources", testToken, "198.51.100.1:1"); rec.Code != http.StatusOK {
			t.Fatalf("shared=%v: another client: %d", shared, rec.Code)
		}
	}
}

// An attempt reserved on the shared count (the table was full) is given
// back to that count, even when its origin has a count of its own by the
// time it is reported: otherwise five such attempts would leave the shared
// count full for good, and every newcomer during a flood refused for the
// life of the process.
func TestTokenLimiterReleasesWhereItReserved(t *testing.T) {
	const tracked = 10_000 // the origins the limiter tracks (maxLimited)
	clk := clock.NewFake(limiterStart)
	l := dashboardapi.NewTokenLimiter(clk, 64)
	// fill adds n origins with a wrong token each; n fills the table
	// exactly, so that none of them lands on the shared count.
	fill := func(round, n int) {
		for i := range n {
			ip := fmt.Sprintf("10.%d.%d.%d", round, i>>8, i&255)
			if _, ok := l.Allow(ip); !ok {
				t.Fatalf("round %d: %s refused", round, ip)
			}
			l.Failed(ip)
		}
	}
	held := 0 // entries left from the round before: the shared count and that round's x
	for round := range dashboardapi.TokenFailures {
		fill(round, tracked-held)
		x := fmt.Sprintf("192.0.2.%d", round)
		if _, ok := l.Allow(x); !ok { // on the shared count: the table is full
			t.Fatalf("round %d: %s refused", round, x)
		}
		clk.Advance(dashboardapi.TokenWindow + time.Second)
		y := fmt.Sprintf("198.51.100.%d", round)
		if _, ok := l.Allow(y); !ok { // prunes the expired origins
			t.Fatalf("round %d: %s refused", round, y)
		}
		l.Succeeded(y)
		l.Failed(x) // x has room for a count of its own now
		held = 2
	}
	fill(dashboardapi.TokenFailures, tracked-held)
	if _, ok := l.Allow("203.0.113.9"); !ok {
		t.Fatal("a newcomer to a full table is refused: the shared count kept attempts that ended")
	}
}
