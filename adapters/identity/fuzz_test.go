package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// FuzzIdentify sends arbitrary Authorization and X-API-Key values: the
// answer is anonymous only without a credential, otherwise the known key's
// identity, a token's, or an AuthError that never repeats the credential.
func FuzzIdentify(f *testing.F) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	r, err := New(Config{Clock: clock.NewFake(t0), JWT: &JWTConfig{StaticKeys: []crypto.PublicKey{&ec.PublicKey}, Algorithms: []string{"ES256"}}})
	if err != nil {
		f.Fatal(err)
	}
	const key = "sk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	e := &keyEntry{hash: sha256.Sum256([]byte(key)), id: tenant.Identity{Tenant: "acme", Tier: "vip", Kind: tenant.APIKey, Credential: "key 0123456789abcdef"}}
	r.keys.Store(&keyTable{byID: map[string]*keyEntry{"0123456789abcdef": e}})
	tok, err := jwt.NewWithClaims(jwt.SigningMethodES256, claims("iss", nil, "aud", nil)).SignedString(ec)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][2]string{
		{"", ""}, {"Bearer " + key, ""}, {"", key}, {"Bearer " + key, key}, {"Bearer " + tok, ""},
		{"Bearer sk_", ""}, {"Basic x", ""}, {"Bearer " + tok[:len(tok)-3], ""}, {"", "sk_0123456789abcdef_" + strings.Repeat("_", 43)},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, auth, apiKey string) {
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if apiKey != "" {
			req.Header.Set("X-API-Key", apiKey)
		}
		id, err := r.Identify(req, "192.0.2.1")
		var ae *tenant.AuthError
		switch {
		case auth == "" && apiKey == "":
			if err != nil || id.Kind != tenant.Anonymous || id.Tenant != "192.0.2.1" {
				t.Fatalf("no credential: %+v, %v", id, err)
			}
		case err == nil:
			if id.Kind == tenant.Anonymous || id.Tenant == "" || id.Tier == "" {
				t.Fatalf("a credential gave %+v", id)
			}
		case !errors.As(err, &ae):
			t.Fatalf("error %T %v is not an AuthError", err, err)
		default:
			for _, c := range []string{auth, apiKey} {
				if len(c) >= 24 && strings.Contains(ae.Reason, strings.TrimSpace(strings.TrimPrefix(c, "Bearer "))) {
					t.Fatalf("reason %q repeats the credential", ae.Reason)
				}
			}
		}
	})
}
