package identity

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

var created = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func request(headers ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/api/ddcolorize/person", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

// refused checks that err is an AuthError whose reason contains want.
func refused(t *testing.T, id tenant.Identity, err error, want string) {
	t.Helper()
	var ae *tenant.AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("got %+v, %v; want an AuthError (%s)", id, err, want)
	}
	if !strings.Contains(ae.Reason, want) {
		t.Fatalf("reason %q, want it to say %q", ae.Reason, want)
	}
	if id != (tenant.Identity{}) {
		t.Fatalf("a refused credential still gave identity %+v", id)
	}
}

func TestKeyCreateIdentifyRevokeOnTwoReplicas(t *testing.T) {
	ctx := context.Background()
	log, secret := newLogger(t)
	p := prefix(t)

	// A key made before the replicas start is found by their listing.
	early, _, err := CreateKey(ctx, shared.client, p, KeySpec{Tenant: "early", Tier: "registered"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret(early)
	a, err := New(Config{Client: shared.client, Prefix: p, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Client: shared.client, Prefix: p, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	start(t, a)
	start(t, b)
	if id, err := a.Identify(request("Authorization", "Bearer "+early), "192.0.2.1"); err != nil || id.Tenant != "early" {
		t.Fatalf("early key: %+v, %v", id, err)
	}

	key, rec, err := CreateKey(ctx, shared.client, p, KeySpec{Tenant: "acme", Tier: "vip", Name: "ci"}, clock.NewFake(created))
	if err != nil {
		t.Fatal(err)
	}
	secret(key)
	secret(rec.Hash)
	if !strings.HasPrefix(key, "sk_"+rec.ID+"_") || len(key) != maxKeyLen {
		t.Fatalf("key %q does not have the form sk_<id>_<secret>", key)
	}
	if rec.Hash != hashKey(key) || !rec.Created.Equal(created) || rec.Tenant != "acme" || rec.Tier != "vip" || rec.Name != "ci" {
		t.Fatalf("record %+v", rec)
	}
	waitRevision(t, a, b)

	want := tenant.Identity{Tenant: "acme", Tier: "vip", Kind: tenant.APIKey, Credential: "key " + rec.ID}
	for name, r := range map[string]*Resolver{"a": a, "b": b} {
		for _, h := range [][]string{
			{"Authorization", "Bearer " + key},
			{"Authorization", "bearer " + key},
			{"X-API-Key", key},
			{"Authorization", "Bearer " + key, "X-API-Key", key},
		} {
			if id, err := r.Identify(request(h...), "192.0.2.1"); err != nil || id != want {
				t.Fatalf("replica %s, %d headers: %+v, %v; want %+v", name, len(h)/2, id, err, want)
			}
		}
	}

	list, err := ListKeys(ctx, shared.client, p)
	if err != nil || len(list) != 2 || list[0] != rec || list[1].Tenant != "early" {
		t.Fatalf("ListKeys: %+v, %v", list, err)
	}

	began := time.Now()
	if err := RevokeKey(ctx, shared.client, p, rec.ID); err != nil {
		t.Fatal(err)
	}
	waitRevision(t, a, b)
	t.Logf("revocation seen by both replicas %s after the delete", time.Since(began))
	for _, r := range []*Resolver{a, b} {
		id, err := r.Identify(request("Authorization", "Bearer "+key), "192.0.2.1")
		refused(t, id, err, "revoked")
	}
	// The other key still works.
	if id, err := b.Identify(request("X-API-Key", early), "192.0.2.1"); err != nil || id.Tenant != "early" {
		t.Fatalf("early key after another's revocation: %+v, %v", id, err)
	}
	if err := RevokeKey(ctx, shared.client, p, rec.ID); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("revoking twice: %v, want ErrKeyNotFound", err)
	}
}

func TestIdentifyRefusals(t *testing.T) {
	ctx := context.Background()
	log, secret := newLogger(t)
	p := prefix(t)
	r, err := New(Config{Client: shared.client, Prefix: p, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	key, rec, err := CreateKey(ctx, shared.client, p, KeySpec{Tenant: "acme", Tier: "registered"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret(key)
	start(t, r)
	waitRevision(t, r)
	other, _, err := CreateKey(ctx, shared.client, prefix(t)+"-elsewhere", KeySpec{Tenant: "acme", Tier: "registered"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret(other)
	wrongSecret := key[:len(key)-4] + "AAAA"
	if wrongSecret == key {
		wrongSecret = key[:len(key)-4] + "BBBB"
	}

	if id, err := r.Identify(request(), "2001:db8:1:2::/64"); err != nil ||
		id != (tenant.Identity{Tenant: "2001:db8:1:2::/64", Tier: tenant.AnonymousTier, Kind: tenant.Anonymous}) {
		t.Fatalf("no credential: %+v, %v", id, err)
	}
	for _, c := range []struct {
		name    string
		headers []string
		reason  string
	}{
		{"unknown key", []string{"Authorization", "Bearer " + other}, "unknown API key"},
		{"unknown key in X-API-Key", []string{"X-API-Key", other}, "unknown API key"},
		{"wrong secret for a known ID", []string{"Authorization", "Bearer " + wrongSecret}, "unknown API key"},
		{"malformed key", []string{"Authorization", "Bearer sk_nothex_abc"}, "malformed API key"},
		{"headers differ", []string{"Authorization", "Bearer " + key, "X-API-Key", other}, "different credentials"},
		{"two Authorization headers", []string{"Authorization", "Bearer " + key, "Authorization", "Bearer " + key}, "more than one"},
		{"basic scheme", []string{"Authorization", "Basic dXNlcjpwYXNz"}, "must be Bearer"},
		{"empty bearer", []string{"Authorization", "Bearer   "}, "empty"},
		{"X-API-Key not a key", []string{"X-API-Key", "hello"}, "X-API-Key must hold an API key"},
		{"JWT without JWT configured", []string{"Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}, "JWT is not configured"},
	} {
		t.Run(c.name, func(t *testing.T) {
			id, err := r.Identify(request(c.headers...), "192.0.2.1")
			refused(t, id, err, c.reason)
			for _, s := range []string{key, other, wrongSecret} {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("the error holds the credential: %v", err)
				}
			}
		})
	}
	if id, err := r.Identify(request("Authorization", "Bearer "+key), "192.0.2.1"); err != nil || id.Credential != "key "+rec.ID {
		t.Fatalf("good key: %+v, %v", id, err)
	}
}

func TestResolverWithoutEtcdRefusesKeys(t *testing.T) {
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	id, err := r.Identify(request("X-API-Key", "sk_0123456789abcdef_"+strings.Repeat("A", 43)), "192.0.2.1")
	refused(t, id, err, "unknown API key")
}

func TestCreateKeyValidates(t *testing.T) {
	ctx := context.Background()
	p := prefix(t)
	for _, spec := range []KeySpec{
		{Tenant: "10.0.0.1", Tier: "vip"},
		{Tenant: "acme", Tier: "VIP"},
		{Tenant: "", Tier: "vip"},
		{Tenant: "acme", Tier: "vip", Name: "bad\nname"},
	} {
		if _, _, err := CreateKey(ctx, shared.client, p, spec, nil); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("CreateKey(%+v): %v, want ErrInvalidSpec", spec, err)
		}
	}
	if list, err := ListKeys(ctx, shared.client, p); err != nil || len(list) != 0 {
		t.Fatalf("invalid specs stored keys: %+v, %v", list, err)
	}
	for _, id := range []string{"0123456789abcdef", "../rules/system", ""} {
		if err := RevokeKey(ctx, shared.client, p, id); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("RevokeKey(%q): %v, want ErrKeyNotFound", id, err)
		}
	}
}

func TestValidateTenant(t *testing.T) {
	for name, ok := range map[string]bool{
		"acme":                   true,
		"alice@example.com":      true,
		"team-7.prod_eu":         true,
		"123456789":              true, // not an address: ParseAddr wants dots
		"10.0.0.1":               false,
		"192.0.2.0":              false,
		"::1":                    false,
		"2001:db8::/32":          false,
		"10.0.0.0/8":             false,
		"Acme":                   false,
		"-acme":                  false,
		"acme corp":              false,
		"":                       false,
		strings.Repeat("a", 129): false,
		strings.Repeat("a", 128): true,
	} {
		if err := ValidateTenant(name); (err == nil) != ok {
			t.Errorf("ValidateTenant(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func BenchmarkIdentifyKey(b *testing.B) {
	ctx := context.Background()
	p := prefix(b)
	key, _, err := CreateKey(ctx, shared.client, p, KeySpec{Tenant: "acme", Tier: "vip"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	r, err := New(Config{Client: shared.client, Prefix: p})
	if err != nil {
		b.Fatal(err)
	}
	start(b, r)
	req := request("Authorization", "Bearer "+key)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.Identify(req, "192.0.2.1"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRelistAfterCompaction: when the revision after a listing is
// compacted away before the watch starts, the resolver lists again and
// misses neither a new key nor a revocation.
func TestRelistAfterCompaction(t *testing.T) {
	ctx := context.Background()
	log, secret := newLogger(t)
	p := prefix(t)
	gone, goneRec, err := CreateKey(ctx, shared.client, p, KeySpec{Tenant: "gone", Tier: "registered"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret(gone)
	r, err := New(Config{Client: shared.client, Prefix: p, Logger: log, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var (
		fresh    string
		lists    int
		relisted = make(chan struct{})
	)
	r.beforeWatch = func(int64) {
		lists++
		if lists == 2 {
			close(relisted)
		}
		if lists > 1 {
			return
		}
		// Between the first listing and its watch: a key made, another
		// revoked, and the history compacted.
		var err error
		if fresh, _, err = CreateKey(ctx, shared.client, p, KeySpec{Tenant: "fresh", Tier: "vip"}, nil); err != nil {
			t.Error(err)
		}
		secret(fresh)
		if err := RevokeKey(ctx, shared.client, p, goneRec.ID); err != nil {
			t.Error(err)
		}
		if _, err := shared.client.Compact(ctx, revision(t)); err != nil {
			t.Error(err)
		}
	}
	start(t, r)
	select {
	case <-relisted:
	case <-time.After(10 * time.Second):
		t.Fatal("no second listing after the compaction")
	}
	if id, err := r.Identify(request("Authorization", "Bearer "+fresh), "192.0.2.1"); err != nil || id.Tenant != "fresh" {
		t.Fatalf("key made during the lost watch: %+v, %v", id, err)
	}
	id, err := r.Identify(request("Authorization", "Bearer "+gone), "192.0.2.1")
	refused(t, id, err, "revoked")
}

// TestQuietWatchAsksForProgress: with no key changing, the resolver still
// learns etcd's revision from progress requests, so a quiet watch is told
// apart from a dead one.
func TestQuietWatchAsksForProgress(t *testing.T) {
	r, err := New(Config{Client: shared.client, Prefix: prefix(t), ProgressInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	if _, err := shared.client.Put(context.Background(), prefix(t)+"-elsewhere", "x"); err != nil {
		t.Fatal(err)
	}
	// A revision outside the keys: only progress tells it, well before the
	// server's own notification (every 5s).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.WaitRevision(ctx, revision(t)); err != nil {
		t.Fatalf("the quiet watch learnt no progress within 2s: %v", err)
	}
}

// TestQuietEtcdAnswersTheWatch: on an etcd where nothing is written after
// the listing, progress requests are answered, so the key watch is never
// dropped as silent and listed again. etcd answers no progress request of
// a watch whose start revision is in the future: a watch from the
// listing's revision + 1 heard nothing until some write came.
func TestQuietEtcdAnswersTheWatch(t *testing.T) {
	e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := CreateKey(t.Context(), c, "/sluice", KeySpec{Tenant: "acme", Tier: "registered", Name: "ci"}, nil); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Client: c, Prefix: "/sluice", ProgressInterval: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	var watches atomic.Int32
	r.beforeWatch = func(int64) { watches.Add(1) }
	start(t, r)
	deadline := time.Now().Add(10 * time.Second)
	for r.heard.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the quiet watch heard %d answers in 10s, want 5", r.heard.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := watches.Load(); n != 1 {
		t.Errorf("the watch started %d times, want once", n)
	}
}

// TestKeysNotLoadedYetIsNotUnauthorized: before the first listing of the
// keys (etcd slow or down at start) a key cannot be checked; the answer is
// ErrKeysNotLoaded (503, try again), never a 401 a client would take as
// final. Once listed, an unknown key is 401.
func TestKeysNotLoadedYetIsNotUnauthorized(t *testing.T) {
	r, err := New(Config{Client: shared.client, Prefix: prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	key := "sk_0123456789abcdef_" + strings.Repeat("A", 43)
	if _, err := r.Identify(request("X-API-Key", key), "192.0.2.1"); !errors.Is(err, ErrKeysNotLoaded) {
		t.Fatalf("before the listing: %v, want ErrKeysNotLoaded", err)
	}
	start(t, r)
	id, err := r.Identify(request("X-API-Key", key), "192.0.2.1")
	refused(t, id, err, "unknown API key")
}
