package main

import (
	"strings"
	"testing"
)

// TestKeysCreateWarnsOfUnknownTier: a key of a tier the tiers in force
// lack (the built-in ones without a tiers document, the document's
// otherwise) is made with a warning on stderr and exit 0; a tier name
// that is not a name is refused and no key is made.
func TestKeysCreateWarnsOfUnknownTier(t *testing.T) {
	ep := startEtcd(t)
	create := func(tier string) (string, string, int) {
		t.Helper()
		return sluice(t, "keys", "create", "--tenant", "acme", "--tier", tier, "--endpoints", ep)
	}

	if out, errOut, code := create("vip"); code != 0 || strings.Contains(errOut, "warning") || !strings.Contains(out, "tier    vip") {
		t.Fatalf("built-in tier vip: %d %q %q", code, out, errOut)
	}
	out, errOut, code := create("gold")
	if code != 0 || !strings.Contains(out, "tier    gold") {
		t.Fatalf("tier gold: %d %q %q", code, out, errOut)
	}
	if !strings.Contains(errOut, `warning: tier "gold" is not in the tiers in force (anonymous, registered, vip, from the built-in tiers`) {
		t.Errorf("no warning of the unknown tier: %q", errOut)
	}
	if strings.Contains(errOut, "sk_") {
		t.Errorf("the warning shows the key: %q", errOut)
	}

	for _, bad := range []string{"Gold", "gold tier", "-x", ""} {
		if out, errOut, code := create(bad); code != 1 || strings.Contains(out, "sk_") {
			t.Errorf("tier %q: %d %q %q; want refused, exit 1", bad, code, out, errOut)
		}
	}
	if out, _, _ := sluice(t, "keys", "list", "--endpoints", ep); strings.Count(out, "acme") != 2 {
		t.Errorf("want the two keys made, listed %q", out)
	}

	dir := writeFiles(t, map[string]string{"tiers.yaml": `tiers:
  - name: anonymous
    daily_quota: 50
    in_flight: 1
    priority: low
  - name: gold
    daily_quota: unlimited
    in_flight: 3
    priority: high
`})
	if out, errOut, code := sluice(t, "tiers", "apply", dir+"/tiers.yaml", "--yes", "--endpoints", ep); code != 0 {
		t.Fatalf("tiers apply: %d %q %q", code, out, errOut)
	}
	if _, errOut, code := create("gold"); code != 0 || errOut != "" {
		t.Errorf("tier gold of the document: %d %q", code, errOut)
	}
	if _, errOut, code := create("vip"); code != 0 || !strings.Contains(errOut, `tier "vip" is not in the tiers in force (anonymous, gold, from the tiers document at /sluice/tiers)`) {
		t.Errorf("tier vip the document lacks: %d %q", code, errOut)
	}
}
