package httpapi_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/adapters/httpapi"
)

// refusalLog is a hand-written RefusalObserver that keeps what it is told.
type refusalLog struct {
	mu     sync.Mutex
	quota  []string // resource + " " + tier
	failed []string // credential kinds
}

func (l *refusalLog) ObserveQuotaRefusal(resource, tier string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.quota = append(l.quota, resource+" "+tier)
}

func (l *refusalLog) ObserveAuthFailure(credential string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed = append(l.failed, credential)
}

// TestRefusalsAreObservedByTier: a daily quota refusal is told with its
// resource and tier (not its tenant), a refused credential with the kind
// of credential (not the credential); admitted calls are not told. The
// quota refusal's log line names the caller's address, tenant and tier,
// never its key.
func TestRefusalsAreObservedByTier(t *testing.T) {
	obs := &refusalLog{}
	var logs bytes.Buffer
	ts := newTenantStack(t, tenantRules, testTiers(1), httpapi.Config{Refusals: obs, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	for i, want := range []int{http.StatusOK, http.StatusTooManyRequests} {
		if rec := ts.do(generateRequest(`{"prompt": "a lighthouse"}`), acmeKey, "192.0.2.1:1"); rec.Code != want {
			t.Fatalf("request %d: %d, want %d: %s", i+1, rec.Code, want, rec.Body)
		}
	}
	if want := []string{"zimage_generate registered"}; !slices.Equal(obs.quota, want) {
		t.Errorf("quota refusals told %q, want %q", obs.quota, want)
	}
	var line map[string]any
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, "request refused") {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line == nil || line["tenant"] != "acme" || line["tier"] != "registered" || line["ip"] != "192.0.2.1" ||
		line["kind"] != "quota" || line["resource"] != "zimage_generate" {
		t.Errorf("refusal line %v in %s", line, logs.String())
	}
	if strings.Contains(logs.String(), acmeKey) {
		t.Errorf("the log holds the key: %s", logs.String())
	}

	for _, tc := range []struct{ name, header, value, want string }{
		{"unknown API key", "Authorization", "Bearer sk_nobody_bm90LXRoZS1yaWdodC1zZWNyZXQtYXQtYWxsLTEyMzQ1", httpapi.CredentialAPIKey},
		{"expired token", "Authorization", "Bearer " + expiredJWT, httpapi.CredentialJWT},
		{"not bearer", "Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", httpapi.CredentialMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs.failed = nil
			req := generateRequest(`{"prompt": "a lighthouse"}`)
			req.Header.Set(tc.header, tc.value)
			if rec := serve(ts.api, req, "192.0.2.1:1"); rec.Code != http.StatusUnauthorized {
				t.Fatalf("%d, want 401: %s", rec.Code, rec.Body)
			}
			if !slices.Equal(obs.failed, []string{tc.want}) {
				t.Errorf("auth failures told %q, want [%s]", obs.failed, tc.want)
			}
		})
	}
}
