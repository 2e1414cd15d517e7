package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/rules"
)

func TestTiersCLI(t *testing.T) {
	ep := startEtcd(t)
	dir := writeFiles(t, map[string]string{
		"good.yaml": "timezone: Europe/Berlin\ntiers:\n  - name: anonymous\n    daily_quota: 5\n  - name: gold\n    daily_quota: unlimited\n    priority: high\n",
		"bad.yaml":  "tiers:\n  - name: anonymous\n    daily_quota: 5\n  - name: gold\n    daily_quota: lots\n",
	})
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")

	if out, _, code := sluice(t, "tiers", "validate", good); code != 0 || !strings.Contains(out, "2 tiers, valid (quota days start at midnight Europe/Berlin)") {
		t.Fatalf("validate good: %d %q", code, out)
	}
	_, errOut, code := sluice(t, "tiers", "validate", "-f", bad)
	if code != 1 || !strings.Contains(errOut, bad+`: tiers[1].daily_quota: want an integer >= 0 or "unlimited", got "lots"`) {
		t.Fatalf("validate bad: %d %q", code, errOut)
	}

	// Nothing in etcd: the built-in tiers apply.
	out, _, code := sluice(t, "tiers", "get", "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "no tiers document at /sluice/tiers; the built-in tiers apply") || !strings.Contains(out, "name: vip") {
		t.Fatalf("get before apply: %d %q", code, out)
	}
	if _, errOut, code := sluice(t, "tiers", "apply", bad, "--endpoints", ep); code != 1 || !strings.Contains(errOut, "got \"lots\"") {
		t.Fatalf("apply bad: %d %q", code, errOut)
	}
	// The file lacks two built-in tiers: without a terminal, refused.
	if _, errOut, code := sluice(t, "tiers", "apply", good, "--endpoints", ep); code != exitAborted || !strings.Contains(errOut, "would lose tier registered, tier vip: not applied") {
		t.Fatalf("apply losing tiers: %d %q", code, errOut)
	}
	if out, _, _ := sluice(t, "tiers", "get", "--endpoints", ep); !strings.Contains(out, "no tiers document") {
		t.Fatalf("a refused apply wrote: %q", out)
	}
	out, errOut, code = sluice(t, "tiers", "apply", good, "--yes", "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "tiers written to /sluice/tiers") {
		t.Fatalf("apply good: %d %q %q", code, out, errOut)
	}
	out, _, code = sluice(t, "tiers", "get", "-o", "json", "--endpoints", ep)
	var got struct {
		Source string       `json:"source"`
		Tiers  *rules.Tiers `json:"tiers"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Source != "etcd" || got.Tiers == nil || got.Tiers.Timezone != "Europe/Berlin" || len(got.Tiers.Tiers) != 2 {
		t.Fatalf("get json: %d %q", code, out)
	}
	if out, _, _ := sluice(t, "tiers", "get", "--endpoints", ep); !strings.Contains(out, "# /sluice/tiers (mod revision") || !strings.Contains(out, "name: gold") {
		t.Fatalf("get yaml: %q", out)
	}

	// Misuse.
	for _, args := range [][]string{{"tiers"}, {"tiers", "frobnicate"}, {"tiers", "validate"}, {"tiers", "get", "-o", "xml", "--endpoints", ep}} {
		if _, _, code := sluice(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if _, _, code := sluice(t, "tiers", "get", "--endpoints", "127.0.0.1:1", "--dial-timeout", "200ms", "--command-timeout", "300ms"); code != 2 {
		t.Errorf("unreachable etcd: exit %d, want 2", code)
	}
}

// TestStartTiersSeedsAndFollows: the gateway's tier source seeds etcd once,
// follows changes, hands them to onChange and writes through PutTiers.
func TestStartTiersSeedsAndFollows(t *testing.T) {
	ep := startEtcd(t)
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	store := etcd.NewStore(c, "")
	seed, source, err := loadTiers("")
	if err != nil || source != "built-in" {
		t.Fatal(source, err)
	}
	var changes atomic.Int32
	log := slog.New(slog.DiscardHandler)
	ts := startTiers(context.Background(), store, seed, source, func(*rules.Tiers) { changes.Add(1) }, 10*time.Second, 5*time.Second, log)
	defer ts.Close()
	if d, err := store.GetTiers(context.Background()); err != nil || string(d.Value) != string(rules.DefaultTiersSource()) {
		t.Fatalf("not seeded: %q %v", d.Value, err)
	}
	if st := ts.TiersStatus(); !strings.HasPrefix(st.Source, "etcd ") || changes.Load() != 1 {
		t.Fatalf("status %+v, %d changes", st, changes.Load())
	}
	if _, err := ts.PutTiers(context.Background(), []byte("tiers: [{name: anonymous, daily_quota: 9}]\n")); err != nil {
		t.Fatal(err)
	}
	if a, _ := ts.Tiers().Tier("anonymous"); a.DailyQuota != 9 || changes.Load() != 2 {
		t.Fatalf("after PutTiers: %+v, %d changes", a, changes.Load())
	}
	// A second start does not seed over the operator's document.
	ts2 := startTiers(context.Background(), store, seed, source, nil, 10*time.Second, 5*time.Second, log)
	defer ts2.Close()
	if a, _ := ts2.Tiers().Tier("anonymous"); a.DailyQuota != 9 {
		t.Fatalf("seeded over the document in etcd: %+v", a)
	}
	if _, _, err := loadTiers(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("a missing --tiers file was accepted")
	}
}
