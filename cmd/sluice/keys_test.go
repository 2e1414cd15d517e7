package main

import (
	"context"
	"encoding/json"
	"errors"
	flag "github.com/spf13/pflag"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/identity"
	"github.com/sluicehq/sluice/engine/tenant"
)

func TestKeysCLI(t *testing.T) {
	ep := startEtcd(t)

	if _, errOut, code := sluice(t, "keys", "create", "--tenant", "10.0.0.7", "--tier", "vip", "--endpoints", ep); code != 1 || !strings.Contains(errOut, "looks like an IP address") {
		t.Fatalf("create with an IP tenant: %d %q", code, errOut)
	}
	out, errOut, code := sluice(t, "keys", "create", "--tier", "vip", "--name", "ci runner", "--tenant", "acme", "--endpoints", ep)
	if code != 0 {
		t.Fatalf("create: %d %q", code, errOut)
	}
	m := regexp.MustCompile(`(?m)^key +(sk_([0-9a-f]{16})_\S+)$`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "not shown again") || !strings.Contains(out, "id      "+m[2]) {
		t.Fatalf("create printed %q", out)
	}
	key, id := m[1], m[2]

	// The key works against a resolver on the same etcd.
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := identity.New(identity.Config{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-r.Ready()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-API-Key", key)
	if got, err := r.Identify(req, "192.0.2.1"); err != nil || got.Tenant != "acme" || got.Tier != "vip" {
		t.Fatalf("identify with the printed key: %+v, %v", got, err)
	}

	out, errOut, code = sluice(t, "keys", "list", "--endpoints", ep)
	if code != 0 || !regexp.MustCompile(`(?m)^`+id+` +acme +vip +ci runner +\d{4}-`).MatchString(out) {
		t.Fatalf("list: %d %q %q", code, out, errOut)
	}
	jsonOut, _, code := sluice(t, "keys", "list", "-o", "json", "--endpoints", ep)
	var listed struct{ Keys []map[string]any }
	if code != 0 || json.Unmarshal([]byte(jsonOut), &listed) != nil || len(listed.Keys) != 1 || listed.Keys[0]["id"] != id {
		t.Fatalf("list -o json: %d %q", code, jsonOut)
	}
	for _, o := range []string{out, jsonOut} {
		if strings.Contains(o, key[len("sk_"+id+"_"):]) || strings.Contains(o, "hash") || strings.Contains(strings.ToLower(o), "sk_") {
			t.Fatalf("list shows the key or its hash: %q", o)
		}
	}

	if out, errOut, code := sluice(t, "keys", "revoke", id, "--endpoints", ep); code != 0 || !strings.Contains(out, id+" revoked") {
		t.Fatalf("revoke: %d %q %q", code, out, errOut)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	resp, err := c.Get(wctx, "/none")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WaitRevision(wctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	var ae *tenant.AuthError
	if _, err := r.Identify(req, "192.0.2.1"); !errors.As(err, &ae) || !strings.Contains(ae.Reason, "revoked") {
		t.Fatalf("revoked key: %v", err)
	}
	if _, errOut, code := sluice(t, "keys", "revoke", id, "--endpoints", ep); code != 1 || !strings.Contains(errOut, "no key with ID "+id) {
		t.Fatalf("revoke twice: %d %q", code, errOut)
	}
	if _, errOut, code := sluice(t, "keys", "frobnicate"); code != exitUsage || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
	if _, errOut, code := sluice(t, "keys", "list", "--endpoints", "127.0.0.1:1", "--dial-timeout", "200ms", "--command-timeout", "500ms"); code != 2 {
		t.Fatalf("etcd unreachable: %d %q", code, errOut)
	}
}

func TestJWTFlags(t *testing.T) {
	parse := func(args ...string) *identity.JWTConfig {
		t.Helper()
		var f jwtFlags
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.config()
	}
	if cfg := parse(); cfg != nil {
		t.Fatalf("JWT on without a JWKS URL or key file: %+v", cfg)
	}
	cfg := parse("--jwt-jwks-url", "https://idp.example/jwks.json", "--jwt-alg", "RS256, ES384", "--jwt-audience", "sluice", "--jwt-leeway", "0s")
	if cfg == nil || cfg.JWKSURL != "https://idp.example/jwks.json" || len(cfg.Algorithms) != 2 || cfg.Algorithms[1] != "ES384" ||
		cfg.Audience != "sluice" || cfg.Leeway >= 0 || cfg.TenantClaim != "sub" || cfg.TierClaim != "tier" {
		t.Fatalf("config: %+v", cfg)
	}
	if _, err := identity.New(identity.Config{JWT: cfg}); err != nil {
		t.Fatal(err)
	}
	cfg = parse("--jwt-jwks-url", "https://idp.example/jwks.json", "--jwt-alg", "HS256")
	if _, err := identity.New(identity.Config{JWT: cfg}); err == nil || !strings.Contains(err.Error(), "HMAC") {
		t.Fatalf("HS256 allowed: %v", err)
	}
}
