package httpapi_test

import (
	"encoding/json"
	"net/http"
	"testing"
)

func TestWebhookParameter(t *testing.T) {
	if rec := newStack(t, "resource: zimage_generate\n", stackOptions{}).do(func() *http.Request {
		r := generateRequest(`{"prompt": "a kite"}`)
		r.URL.RawQuery = "mode=async&webhook=https://hooks.example.com/sluice"
		return r
	}(), "192.0.2.1:1"); rec.Code != http.StatusBadRequest {
		t.Fatalf("a gateway without webhooks took one: %d", rec.Code)
	}
	s := newStack(t, "resource: zimage_generate\n", stackOptions{webhooks: true})
	for _, tc := range []struct {
		query  string
		status int
	}{
		{"?webhook=https://hooks.example.com/x", http.StatusBadRequest},               // not async
		{"?mode=async&webhook=ftp://hooks.example.com/x", http.StatusBadRequest},      // not http(s)
		{"?mode=async&webhook=https://hooks.example.com/sluice", http.StatusAccepted}, // taken
	} {
		req := generateRequest(`{"prompt": "a kite", "width": 256, "height": 256}`)
		req.URL.RawQuery = tc.query[1:]
		rec := s.do(req, "192.0.2.1:1")
		if rec.Code != tc.status {
			t.Fatalf("%s: %d, want %d: %s", tc.query, rec.Code, tc.status, rec.Body)
		}
		if rec.Code != http.StatusAccepted {
			continue
		}
		var sub struct{ ID string }
		json.Unmarshal(rec.Body.Bytes(), &sub)
		get, _ := http.NewRequest(http.MethodGet, "/api/jobs/"+sub.ID, nil)
		var job struct{ Webhook string }
		if err := json.Unmarshal(s.do(get, "192.0.2.1:1").Body.Bytes(), &job); err != nil || job.Webhook != "https://hooks.example.com/sluice" {
			t.Fatalf("the job does not carry its webhook: %+v %v", job, err)
		}
	}
}
