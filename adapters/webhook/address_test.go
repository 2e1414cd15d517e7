package webhook

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
)

// TestPublicOnlyAddresses runs the dial-time check on the addresses a
// resolver can hand the dialer: every non-public form is refused,
// including those that embed an internal IPv4 address in IPv6 (NAT64,
// IPv4-compatible, IPv4-mapped); public addresses pass on any port.
func TestPublicOnlyAddresses(t *testing.T) {
	check := publicOnly()
	for _, tc := range []struct {
		network, address string
		public           bool
	}{
		{"tcp6", "[64:ff9b::a9fe:a9fe]:80", false}, // NAT64 of 169.254.169.254, the metadata address
		{"tcp6", "[64:ff9b::7f00:1]:8080", false},  // NAT64 of 127.0.0.1
		{"tcp6", "[::127.0.0.1]:80", false},        // IPv4-compatible loopback
		{"tcp6", "[::a9fe:a9fe]:80", false},        // IPv4-compatible metadata address
		{"tcp6", "[::ffff:127.0.0.1]:80", false},   // IPv4-mapped loopback
		{"tcp6", "[::1]:2379", false},
		{"tcp6", "[fd00::1]:443", false},
		{"tcp6", "[fe80::1]:443", false},
		{"tcp4", "127.0.0.1:2379", false},
		{"tcp4", "10.1.2.3:443", false},
		{"tcp4", "169.254.169.254:80", false},
		{"tcp4", "100.64.0.1:80", false},
		{"tcp4", "0.0.0.0:80", false},
		{"tcp4", "93.184.215.14:8443", true},
		{"tcp6", "[2606:4700:4700::1111]:443", true},
	} {
		err := check(tc.network, tc.address, nil)
		if tc.public && err != nil {
			t.Errorf("%s refused: %v", tc.address, err)
		}
		if !tc.public && (err == nil || !strings.Contains(err.Error(), "not a public address")) {
			t.Errorf("%s allowed (%v)", tc.address, err)
		}
	}
}

// TestSendRefusesNAT64Metadata: a webhook URL naming the metadata address
// in NAT64 form is refused when dialled, before any packet leaves.
func TestSendRefusesNAT64Metadata(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	s, err := New(Config{Secret: secret, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "http://[::127.0.0.1]:2379/"} {
		err := s.Send(context.Background(), target, "job-1.succeeded", Event{Type: "job.succeeded"})
		if err == nil || !strings.Contains(err.Error(), "not a public address") {
			t.Errorf("%s: %v", target, err)
		}
	}
}
