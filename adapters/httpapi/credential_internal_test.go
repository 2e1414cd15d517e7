package httpapi

import (
	"net/http/httptest"
	"testing"
)

// TestCredentialKind: the kind of credential a refused request carried,
// as the metrics count it, from its headers alone.
func TestCredentialKind(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers [][2]string
		want    string
	}{
		{"bearer key", [][2]string{{"Authorization", "Bearer sk_ab12_c2VjcmV0"}}, CredentialAPIKey},
		{"bearer key, scheme in lower case", [][2]string{{"Authorization", "bearer sk_ab12_c2VjcmV0"}}, CredentialAPIKey},
		{"x-api-key", [][2]string{{"X-API-Key", "sk_ab12_c2VjcmV0"}}, CredentialAPIKey},
		{"bearer token", [][2]string{{"Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}}, CredentialJWT},
		{"x-api-key not a key", [][2]string{{"X-API-Key", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}}, CredentialMalformed},
		{"basic", [][2]string{{"Authorization", "Basic YTpi"}}, CredentialMalformed},
		{"empty bearer", [][2]string{{"Authorization", "Bearer "}}, CredentialMalformed},
		{"two headers", [][2]string{{"Authorization", "Bearer sk_ab12_c2VjcmV0"}, {"X-API-Key", "sk_cd34_c2VjcmV0"}}, CredentialMalformed},
		{"none", nil, CredentialMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/api/me", nil)
			for _, h := range tc.headers {
				r.Header.Add(h[0], h[1])
			}
			if got := credentialKind(r); got != tc.want {
				t.Errorf("credentialKind = %q, want %q", got, tc.want)
			}
		})
	}
}
