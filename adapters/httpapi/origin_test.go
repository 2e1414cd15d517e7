package httpapi_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine/clock"
)

func TestOriginGroupsIPv6ByPrefix(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		bits int
		want string
	}{
		{"203.0.113.7", 64, "203.0.113.7"},
		{"::ffff:203.0.113.7", 64, "203.0.113.7"},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"},
		{"2001:DB8:1:2::1", 64, "2001:db8:1:2::/64"},
		{"fe80::1%eth0", 64, "fe80::/64"},
		{"2001:db8:1:2:aaaa::1", 56, "2001:db8:1::/56"},
		{"2001:db8:1:2::1", 128, "2001:db8:1:2::1/128"},
		{"not an address", 64, "not an address"},
	} {
		if got := httpapi.Origin(tc.ip, tc.bits); got != tc.want {
			t.Errorf("Origin(%q, %d) = %q, want %q", tc.ip, tc.bits, got, tc.want)
		}
	}
}

// One host rotating through the addresses of its /64 is one client to the
// per-origin rules; a VIP item names the prefix; another /64 is another
// client.
func TestIPv6ClientsCountedByPrefix(t *testing.T) {
	s := newStack(t, `resource: ddcolor_person
hotspot:
  - {param: origin, threshold: 1, window: 60s, items: {"2001:db8:7:7::/64": 3}}
`, stackOptions{clock: clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))})
	img := pngBytes(t, 32, 32)
	send := func(peer string) int {
		return s.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), peer).Code
	}
	if code := send("[2001:db8:1:2::1]:4000"); code != 200 {
		t.Fatalf("first address of the /64: %d", code)
	}
	rec := s.do(colorizeRequest(t, "/api/ddcolorize/person", img, nil), "[2001:db8:1:2:dead:beef:0:1]:4000")
	if p := problemOf(t, rec.Body.Bytes()); rec.Code != 429 || p.Value != "2001:db8:1:2::/64" {
		t.Fatalf("another address of the same /64: %d %+v", rec.Code, p)
	}
	if code := send("[2001:db8:1:3::1]:4000"); code != 200 {
		t.Fatalf("the next /64: %d", code)
	}
	vip := 0
	for i := range 5 {
		if send("[2001:db8:7:7::"+string(rune('1'+i))+"]:4000") == 200 {
			vip++
		}
	}
	if vip != 3 {
		t.Fatalf("the VIP prefix was admitted %d times, want 3", vip)
	}
}
