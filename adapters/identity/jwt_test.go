package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// Keys are made once: RSA generation is slow under -race.
var testKeys = sync.OnceValue(func() (k struct {
	rsa1, rsa2, rsaOther *rsa.PrivateKey
	ec1                  *ecdsa.PrivateKey
	ed                   ed25519.PrivateKey
}) {
	var err error
	for _, p := range []**rsa.PrivateKey{&k.rsa1, &k.rsa2, &k.rsaOther} {
		if *p, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	}
	if k.ec1, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		panic(err)
	}
	return k
})

// jwksServer serves a JWKS that the test can change, and counts fetches.
type jwksServer struct {
	*httptest.Server
	body    atomic.Pointer[[]byte]
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T, keys map[string]crypto.PublicKey) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.set(t, keys)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(*s.body.Load())
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(t *testing.T, keys map[string]crypto.PublicKey) {
	t.Helper()
	set := jwk.NewSet()
	for kid, pub := range keys {
		k, err := jwk.Import(pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
		if err := set.AddKey(k); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.body.Store(&b)
}

// sign makes a token; kid "" leaves the header without one.
func sign(t *testing.T, m jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// claims are good claims at t0, changed by kv pairs (a nil value deletes).
func claims(kv ...any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "alice", "iss": "https://idp.example", "aud": "sluice",
		"iat": t0.Add(-time.Minute).Unix(), "exp": t0.Add(time.Hour).Unix()}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

// jwtResolver starts a resolver for the JWKS at srv and waits for its
// first fetch.
func jwtResolver(t *testing.T, srv *jwksServer, clk clock.Clock, edit func(*JWTConfig)) (*Resolver, func(string)) {
	t.Helper()
	log, secret := newLogger(t)
	cfg := JWTConfig{Issuer: "https://idp.example", Audience: "sluice", Algorithms: []string{"RS256", "ES256", "EdDSA"}}
	if srv != nil {
		cfg.JWKSURL, cfg.HTTPClient = srv.URL+"/jwks.json", srv.Client()
	}
	if edit != nil {
		edit(&cfg)
	}
	r, err := New(Config{JWT: &cfg, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.jwt.resource.Load().Ready(ctx); err != nil {
			t.Fatalf("JWKS never fetched: %v", err)
		}
	}
	return r, secret
}

func bearer(tok string) *http.Request { return request("Authorization", "Bearer "+tok) }

func TestJWTAccepted(t *testing.T) {
	k := testKeys()
	srv := newJWKSServer(t, map[string]crypto.PublicKey{"rsa1": &k.rsa1.PublicKey, "ec1": &k.ec1.PublicKey})
	der, err := x509.MarshalPKIXPublicKey(k.ed.Public())
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(t.TempDir(), "ed.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	r, secret := jwtResolver(t, srv, clock.NewFake(t0), func(c *JWTConfig) { c.KeyFiles = []string{pemFile} })

	for _, c := range []struct {
		name string
		tok  string
		want tenant.Identity
	}{
		{"RS256 from the JWKS, no tier claim", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims()),
			tenant.Identity{Tenant: "alice", Tier: "registered", Kind: tenant.JWT, Credential: "jwt https://idp.example"}},
		{"ES256 from the JWKS, tier claim", sign(t, jwt.SigningMethodES256, k.ec1, "ec1", claims("tier", "vip", "sub", "bob@example.com")),
			tenant.Identity{Tenant: "bob@example.com", Tier: "vip", Kind: tenant.JWT, Credential: "jwt https://idp.example"}},
		{"RS256 from the JWKS, no kid", sign(t, jwt.SigningMethodRS256, k.rsa1, "", claims()),
			tenant.Identity{Tenant: "alice", Tier: "registered", Kind: tenant.JWT, Credential: "jwt https://idp.example"}},
		{"EdDSA from a PEM file, no kid", sign(t, jwt.SigningMethodEdDSA, k.ed, "", claims("aud", []string{"other", "sluice"})),
			tenant.Identity{Tenant: "alice", Tier: "registered", Kind: tenant.JWT, Credential: "jwt https://idp.example"}},
		{"expired, within the leeway", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("exp", t0.Add(-20*time.Second).Unix())),
			tenant.Identity{Tenant: "alice", Tier: "registered", Kind: tenant.JWT, Credential: "jwt https://idp.example"}},
		{"nbf ahead, within the leeway", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("nbf", t0.Add(20*time.Second).Unix())),
			tenant.Identity{Tenant: "alice", Tier: "registered", Kind: tenant.JWT, Credential: "jwt https://idp.example"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			secret(c.tok)
			id, err := r.Identify(bearer(c.tok), "192.0.2.1")
			if err != nil || id != c.want {
				t.Fatalf("got %+v, %v; want %+v", id, err, c.want)
			}
		})
	}
}

func TestJWTRefused(t *testing.T) {
	k := testKeys()
	srv := newJWKSServer(t, map[string]crypto.PublicKey{"rsa1": &k.rsa1.PublicKey, "ec1": &k.ec1.PublicKey})
	r, secret := jwtResolver(t, srv, clock.NewFake(t0), nil)
	pubDER, err := x509.MarshalPKIXPublicKey(&k.rsa1.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	good := sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims())
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + strings.Split(sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("tier", "vip")), ".")[1] + "." + parts[2]

	for _, c := range []struct {
		name, tok, reason string
	}{
		{"expired", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("exp", t0.Add(-time.Minute).Unix())), "expired"},
		{"nbf in the future", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("nbf", t0.Add(time.Minute).Unix())), "not valid yet"},
		{"no exp", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("exp", nil)), "lacks a required claim"},
		{"wrong audience", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("aud", "someone-else")), "wrong audience"},
		{"no audience", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("aud", nil)), "lacks a required claim"},
		{"wrong issuer", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("iss", "https://evil.example")), "wrong issuer"},
		{"alg none", none, "alg none is not allowed"},
		{"HS256 keyed with the RSA public key", sign(t, jwt.SigningMethodHS256, rsaPubPEM, "rsa1", claims()), "alg HS256 is not allowed"},
		{"HS256 keyed with the RSA public key's DER", sign(t, jwt.SigningMethodHS256, pubDER, "rsa1", claims()), "alg HS256 is not allowed"},
		{"signed by another key", sign(t, jwt.SigningMethodRS256, k.rsaOther, "rsa1", claims()), "bad signature"},
		{"claims changed after signing", tampered, "bad signature"},
		{"EC alg with an RSA kid", sign(t, jwt.SigningMethodES256, k.ec1, "rsa1", claims()), "not for alg ES256"},
		{"RS384 not allowed", sign(t, jwt.SigningMethodRS384, k.rsa1, "rsa1", claims()), "alg RS384 is not allowed"},
		{"tenant that is an IP", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("sub", "203.0.113.7")), "looks like an IP address"},
		{"tenant that is an IPv6 prefix", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("sub", "2001:db8::/48")), "not a valid tenant"},
		{"no tenant", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("sub", nil)), "has no sub claim"},
		{"tier not a string", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("tier", 3)), "tier claim is not a string"},
		{"bad tier", sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims("tier", "VIP!")), "not a valid tier"},
		{"garbage", "not.a.token", "malformed token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			secret(c.tok)
			id, err := r.Identify(bearer(c.tok), "192.0.2.1")
			refused(t, id, err, c.reason)
			if strings.Contains(err.Error(), c.tok) {
				t.Fatalf("the error holds the token: %v", err)
			}
		})
	}
}

func TestJWKSRotationAndUnknownKid(t *testing.T) {
	k := testKeys()
	srv := newJWKSServer(t, map[string]crypto.PublicKey{"rsa1": &k.rsa1.PublicKey})
	clk := clock.NewFake(t0)
	r, secret := jwtResolver(t, srv, clk, func(c *JWTConfig) { c.MinRefresh = time.Minute })
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches at start, want 1", n)
	}
	tok := sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims())
	secret(tok)
	if _, err := r.Identify(bearer(tok), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}

	// The issuer rotates: a token with the new kid makes sluice fetch the
	// JWKS again, once.
	srv.set(t, map[string]crypto.PublicKey{"rsa1": &k.rsa1.PublicKey, "rsa2": &k.rsa2.PublicKey})
	rotated := sign(t, jwt.SigningMethodRS256, k.rsa2, "rsa2", claims("sub", "carol"))
	secret(rotated)
	if id, err := r.Identify(bearer(rotated), "192.0.2.1"); err != nil || id.Tenant != "carol" {
		t.Fatalf("token with the new kid: %+v, %v", id, err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after the rotation, want 2", n)
	}

	// Kids the JWKS does not hold are refused; within MinRefresh they cause
	// no fetch at all, however many come.
	for i := range 20 {
		forged := sign(t, jwt.SigningMethodRS256, k.rsaOther, "random-"+string(rune('a'+i)), claims())
		id, err := r.Identify(bearer(forged), "192.0.2.1")
		refused(t, id, err, "unknown key ID")
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after 20 unknown kids within MinRefresh, want 2", n)
	}
	clk.Advance(time.Minute)
	forged := sign(t, jwt.SigningMethodRS256, k.rsaOther, "random-z", claims())
	id, err := r.Identify(bearer(forged), "192.0.2.1")
	refused(t, id, err, "unknown key ID")
	if n := srv.fetches.Load(); n != 3 {
		t.Fatalf("%d fetches once MinRefresh passed, want 3", n)
	}
	// The rotated-out key's tokens still verify while it is in the set.
	if _, err := r.Identify(bearer(tok), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
}

func TestJWTConfigRefused(t *testing.T) {
	k := testKeys()
	for _, c := range []struct {
		name string
		cfg  JWTConfig
		want string
	}{
		{"HMAC", JWTConfig{JWKSURL: "https://idp.example/jwks", Algorithms: []string{"RS256", "HS256"}}, "HMAC"},
		{"none", JWTConfig{JWKSURL: "https://idp.example/jwks", Algorithms: []string{"none"}}, `"none" is never allowed`},
		{"unknown alg", JWTConfig{JWKSURL: "https://idp.example/jwks", Algorithms: []string{"XS256"}}, "unknown algorithm"},
		{"no keys", JWTConfig{}, "needs a JWKS URL or static public keys"},
		{"bad URL", JWTConfig{JWKSURL: "file:///etc/passwd"}, "want an http or https URL"},
		{"private key", JWTConfig{StaticKeys: []crypto.PublicKey{k.rsa1}}, "not an RSA, ECDSA or Ed25519 public key"},
		{"missing file", JWTConfig{KeyFiles: []string{filepath.Join(t.TempDir(), "nope.pem")}}, "key file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(Config{JWT: &c.cfg})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New: %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// TestJWKSDownAtStart: while the issuer's JWKS cannot be fetched, tokens
// are refused (never taken for anonymous) and the failure is logged; once
// it answers, the next refresh lets them in.
func TestJWKSDownAtStart(t *testing.T) {
	k := testKeys()
	good := newJWKSServer(t, map[string]crypto.PublicKey{"rsa1": &k.rsa1.PublicKey})
	var down atomic.Bool
	down.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		good.Config.Handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	var logs logBuffer
	clk := clock.NewFake(t0)
	r, err := New(Config{Clock: clk, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		JWT: &JWTConfig{JWKSURL: srv.URL, HTTPClient: srv.Client(), MinRefresh: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	tok := sign(t, jwt.SigningMethodRS256, k.rsa1, "rsa1", claims())
	id, err := r.Identify(bearer(tok), "192.0.2.1")
	refused(t, id, err, "unknown key ID")
	if !strings.Contains(logs.String(), "cannot fetch the JWKS") || strings.Contains(logs.String(), tok) {
		t.Fatalf("logs: %s", logs.String())
	}
	down.Store(false)
	clk.Advance(time.Minute)
	if id, err := r.Identify(bearer(tok), "192.0.2.1"); err != nil || id.Tenant != "alice" {
		t.Fatalf("after the JWKS came back: %+v, %v", id, err)
	}
}
