package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/adapters/httpapi"
)

// originLog records the origins it is told.
type originLog struct {
	mu      sync.Mutex
	origins []string
}

func (l *originLog) ObserveClient(origin string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.origins = append(l.origins, origin)
}

// TestClientsObservedByOrigin: every call to the public API tells the
// client observer its origin (an IPv6 client as its prefix), refused ones
// too.
func TestClientsObservedByOrigin(t *testing.T) {
	log := &originLog{}
	api, _, _ := runnerStack(t, "resource: zimage_generate\nflow: [{threshold: 1, window: 10s}]\n", httpapi.Config{Clients: log})
	for _, peer := range []string{"192.0.2.1:1000", "192.0.2.1:1001", "[2001:db8:1:2::7]:1000"} {
		serve(api, generateRequest(`{"prompt": "a lighthouse", "width": 256, "height": 256}`), peer)
	}
	serve(api, httptest.NewRequest(http.MethodGet, "/api/me", nil), "198.51.100.9:1")
	want := []string{"192.0.2.1", "192.0.2.1", "2001:db8:1:2::/64", "198.51.100.9"}
	log.mu.Lock()
	defer log.mu.Unlock()
	if !slices.Equal(log.origins, want) {
		t.Errorf("observed %q, want %q", log.origins, want)
	}
}
