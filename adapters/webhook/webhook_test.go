package webhook_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/webhook"
)

// The example of the Standard Webhooks specification: this secret, id,
// timestamp and body sign to this value.
func TestSignMatchesTheSpecification(t *testing.T) {
	key, err := webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"test": 2432232314}`)
	got := webhook.Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), body)
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
}

func TestParseSecretAndCheckURL(t *testing.T) {
	for _, bad := range []string{"", "secret", "whsec_!!!", "whsec_" + base64.StdEncoding.EncodeToString([]byte("short"))} {
		if _, err := webhook.ParseSecret(bad); err == nil {
			t.Errorf("secret %q accepted", bad)
		}
	}
	for _, tc := range []struct {
		url string
		ok  bool
	}{{"https://hooks.example.com/sluice", true}, {"http://10.0.0.5:8080/h", true}, {"ftp://x/y", false}, {"/relative", false}, {"https://user:pw@example.com/", false}, {"https://" + strings.Repeat("a", 2050), false}} {
		if err := webhook.CheckURL(tc.url); (err == nil) != tc.ok {
			t.Errorf("CheckURL(%.40q) = %v", tc.url, err)
		}
	}
}

type received struct {
	id, ts, sig string
	body        []byte
}

func TestSendSignsRetriesAndStops(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	key, _ := webhook.ParseSecret(secret)
	var (
		mu     sync.Mutex
		got    []received
		status = []int{503, 429, 200}
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, received{r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body})
		code := status[min(len(got)-1, len(status)-1)]
		mu.Unlock()
		w.WriteHeader(code)
	}))
	defer srv.Close()
	now := time.Unix(1_800_000_000, 0)
	var waits []time.Duration
	s, err := webhook.New(webhook.Config{Secret: secret, AllowPrivate: true, Now: func() time.Time { return now },
		Sleep: func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ev := webhook.Event{Type: "job.succeeded", Timestamp: now, Data: map[string]string{"id": "job-1"}}
	if err := s.Send(context.Background(), srv.URL, "job-1.succeeded", ev); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || len(waits) != 2 || waits[0] != time.Second || waits[1] != 2*time.Second {
		t.Fatalf("%d attempts, waits %v; want 3 attempts after 503 and 429, waiting 1s then 2s", len(got), waits)
	}
	last := got[2]
	if err := webhook.Verify(key, last.id, last.ts, last.sig, last.body, now, 5*time.Minute); err != nil {
		t.Fatalf("the receiver cannot verify it: %v", err)
	}
	if err := webhook.Verify(key, last.id, last.ts, last.sig, append(last.body, ' '), now, 5*time.Minute); err == nil {
		t.Fatal("a changed body verified")
	}
	var body webhook.Event
	if err := json.Unmarshal(last.body, &body); err != nil || body.Type != "job.succeeded" || got[0].id != got[2].id {
		t.Fatalf("body %s, ids %s/%s", last.body, got[0].id, got[2].id)
	}

	// A 4xx other than 429 is final: no retry.
	status = []int{410}
	mu.Lock()
	got = nil
	mu.Unlock()
	if err := s.Send(context.Background(), srv.URL, "job-2.failed", ev); err == nil || len(got) != 1 {
		t.Fatalf("after a 410: %v, %d attempts", err, len(got))
	}
}

func TestPrivateAddressesRefusedByDefault(t *testing.T) {
	hit := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit = true }))
	defer srv.Close()
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	s, err := webhook.New(webhook.Config{Secret: secret, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(context.Background(), srv.URL, "job-3.succeeded", webhook.Event{Type: "job.succeeded"})
	if err == nil || hit || !strings.Contains(err.Error(), "not a public address") {
		t.Fatalf("a loopback webhook was called: %v (hit %v)", err, hit)
	}
}
