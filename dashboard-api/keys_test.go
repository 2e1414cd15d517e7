package dashboardapi_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/identity"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine/clock"
)

// TestKeysAPI runs /api/keys against the identity package's keys in a
// real embedded etcd.
func TestKeysAPI(t *testing.T) {
	e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var logs bytes.Buffer
	admin := identity.NewAdmin(c, "", clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)))
	r := newRouter(t, dashboardapi.Config{AdminToken: testToken, Keys: admin, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	auth := "Bearer " + testToken

	// Every route needs the admin token, reads too.
	for _, rt := range []struct{ method, path, body string }{
		{http.MethodGet, "/api/keys", ""},
		{http.MethodPost, "/api/keys", `{"tenant":"acme","tier":"vip"}`},
		{http.MethodDelete, "/api/keys/0123456789abcdef", ""},
	} {
		if rec := request(r, rt.method, rt.path, "", strings.NewReader(rt.body)); rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s without a token: %d %s", rt.method, rt.path, rec.Code, rec.Body)
		}
		if rec := request(r, rt.method, rt.path, "Bearer wrong", strings.NewReader(rt.body)); rec.Code != http.StatusForbidden {
			t.Errorf("%s %s with a wrong token: %d %s", rt.method, rt.path, rec.Code, rec.Body)
		}
	}
	if list, err := admin.List(t.Context()); err != nil || len(list) != 0 {
		t.Fatalf("refused requests made keys: %+v, %v", list, err)
	}

	rec := request(r, http.MethodPost, "/api/keys", auth, strings.NewReader(`{"tenant":"acme","tier":"vip","name":"ci"}`))
	if rec.Code != http.StatusCreated || rec.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	var made struct {
		Key, ID, Tenant, Tier, Name, Note string
		Created                           time.Time
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &made); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(made.Key, "sk_"+made.ID+"_") || made.Tenant != "acme" || made.Tier != "vip" || made.Name != "ci" ||
		!strings.Contains(made.Note, "not shown again") || made.Created.IsZero() {
		t.Fatalf("create answered %s", rec.Body)
	}

	for _, bad := range []struct{ body, want string }{
		{`{"tenant":"10.1.2.3","tier":"vip"}`, "looks like an IP address"},
		{`{"tenant":"acme","tier":"vip","hash":"x"}`, "unknown field"},
		{`{"tenant":"acme","tier":"Not A Tier"}`, "tier"},
	} {
		if rec := request(r, http.MethodPost, "/api/keys", auth, strings.NewReader(bad.body)); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), bad.want) {
			t.Errorf("create %s: %d %s", bad.body, rec.Code, rec.Body)
		}
	}

	rec = request(r, http.MethodGet, "/api/keys", auth, nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	secret := made.Key[len("sk_"+made.ID+"_"):]
	if strings.Contains(body, "hash") || strings.Contains(body, secret) || !strings.Contains(body, made.ID) {
		t.Fatalf("the list shows a key or its hash, or misses the key: %s", body)
	}
	var list struct{ Keys []map[string]any }
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || len(list.Keys) != 1 {
		t.Fatalf("list: %s, %v", body, err)
	}
	for field := range list.Keys[0] {
		switch field {
		case "id", "tenant", "tier", "name", "created":
		default:
			t.Errorf("the list shows field %q", field)
		}
	}

	if rec := request(r, http.MethodDelete, "/api/keys/"+made.ID, auth, nil); rec.Code != http.StatusOK {
		t.Fatalf("revoke: %d %s", rec.Code, rec.Body)
	}
	if rec := request(r, http.MethodDelete, "/api/keys/"+made.ID, auth, nil); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "no key with ID") {
		t.Fatalf("revoke twice: %d %s", rec.Code, rec.Body)
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatalf("the logs hold the key: %s", logs.String())
	}
	if !strings.Contains(logs.String(), made.ID) {
		t.Fatalf("the logs do not name the key created and revoked: %s", logs.String())
	}
}

func TestKeysAPIAbsentWithoutKeys(t *testing.T) {
	r := newRouter(t, dashboardapi.Config{AdminToken: testToken})
	if rec := request(r, http.MethodGet, "/api/keys", "Bearer "+testToken, nil); rec.Code != http.StatusNotFound {
		t.Fatalf("GET /api/keys without Keys: %d", rec.Code)
	}
}
