package httpapi_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
)

// The route benchmarks put a request refused by a rule beside a bare
// Gin route that answers a constant 429 problem, both served over loopback
// HTTP with keep-alive clients, so the ratio of their ns/op is the refused
// route's throughput against the bare route's:
//
//	go test ./adapters/httpapi -run '^$' -bench Route -benchmem
//
// The InProcess variants call ServeHTTP directly and show the cost of the
// handler alone.

// refuseAll admits one request per client a day: after the first, every
// request of the benchmark is refused.
const refuseAll = "resource: zimage_generate\nhotspot: [{param: origin, threshold: 1, window: 86400s}]\n"

var generateBody = []byte(`{"prompt": "a lighthouse at dusk", "width": 1024, "height": 1024, "steps": 8, "seed": 1}`)

func bareRouter() *gin.Engine {
	r := gin.New()
	problem := []byte(`{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Too Many Requests","status":429}`)
	r.POST("/v1/generate", func(c *gin.Context) {
		io.Copy(io.Discard, c.Request.Body)
		c.Header("Retry-After", "1")
		c.Data(http.StatusTooManyRequests, "application/problem+json", problem)
	})
	return r
}

func benchLoopback(b *testing.B, h http.Handler) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	url := srv.URL + "/v1/generate"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/json", bytes.NewReader(generateBody))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusTooManyRequests {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

func benchInProcess(b *testing.B, h http.Handler) {
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		serveRefused(b, h)
	}
}

// serveRefused sends h, in process, the generation request the route
// benchmarks send and checks it is refused.
func serveRefused(tb testing.TB, h http.Handler) {
	req := httptest.NewRequest(http.MethodPost, "/v1/generate", bytes.NewReader(generateBody))
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = "192.0.2.1:1234"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests {
		tb.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
}

// refusingStack spends the one admission of refuseAll so every
// benchmarked request is refused.
func refusingStack(b testing.TB) *stack {
	s := newStack(b, refuseAll, stackOptions{})
	for _, peer := range []string{"192.0.2.1:1", "127.0.0.1:1"} {
		req := httptest.NewRequest(http.MethodPost, "/v1/generate", strings.NewReader(`{"prompt": "warm", "width": 256, "height": 256}`))
		req.Header.Set("Content-Type", "application/json")
		s.do(req, peer)
	}
	return s
}

func BenchmarkRoute(b *testing.B) {
	// Both routes run in the same process state: the engine (and
	// sentinel-golang's clock goroutine) and the fake ComfyUI are up for
	// the bare route too, as they are in a gateway.
	refusing := refusingStack(b).api
	b.Run("bare/loopback", func(b *testing.B) { benchLoopback(b, bareRouter()) })
	b.Run("refused/loopback", func(b *testing.B) { benchLoopback(b, refusing) })
	b.Run("bare/in-process", func(b *testing.B) { benchInProcess(b, bareRouter()) })
	b.Run("refused/in-process", func(b *testing.B) { benchInProcess(b, refusing) })
}

// A refused request allocates what it must (its JSON body, the guard, the
// problem answer, the log line), not per-request work that belongs at
// start: parsing the built-in tiers on every request once cost 290 of 417
// allocations and quadrupled the route's time. The bound leaves room for
// small changes, not for such a regression.
func TestRefusedRouteAllocations(t *testing.T) {
	h := refusingStack(t).api
	allocs := testing.AllocsPerRun(200, func() { serveRefused(t, h) })
	if allocs > 180 {
		t.Errorf("a refused request allocates %.0f times, want at most 180 (130 measured)", allocs)
	}
}
