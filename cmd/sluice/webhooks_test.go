package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/webhook"
)

func TestAsyncJobWithSignedWebhook(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("a secret of thirty-two bytes!!!!"))
	key, _ := webhook.ParseSecret(secret)
	type delivery struct {
		header http.Header
		body   []byte
	}
	got := make(chan delivery, 1)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- delivery{r.Header.Clone(), body}
	}))
	defer receiver.Close()
	// The receiver is on loopback: allowed here only.
	g := startServe(t, "--webhook-secret", secret, "--webhook-allow-private")

	resp, err := http.Post(g.base+"/v1/generate?mode=async&webhook="+receiver.URL+"/done", "application/json",
		strings.NewReader(`{"prompt": "a lighthouse", "width": 256, "height": 256}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || sub.ID == "" {
		t.Fatalf("async submit: %d %+v", resp.StatusCode, sub)
	}
	var d delivery
	select {
	case d = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook within 20s")
	}
	h := d.header
	if err := webhook.Verify(key, h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature"), d.body, time.Now(), time.Minute); err != nil {
		t.Fatalf("the webhook does not verify: %v", err)
	}
	var ev struct {
		Type string `json:"type"`
		Data struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"data"`
	}
	if err := json.Unmarshal(d.body, &ev); err != nil || ev.Type != "job.succeeded" || ev.Data.ID != sub.ID || h.Get("webhook-id") != sub.ID+".succeeded" {
		t.Fatalf("webhook %s (id %s): %v", d.body, h.Get("webhook-id"), err)
	}
	// The result stays readable from the results folder.
	resp, err = http.Get(g.base + "/api/jobs/" + sub.ID + "/result")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("result: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
