//go:build unix

package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/console"
	"github.com/sluicehq/sluice/engine"
)

// BenchmarkRouteWithDashboards serves the refused route of BenchmarkRoute
// (the whole request path: Gin, the engine's rules, the problem answer)
// with the web console mounted and 0 or 100 dashboards watching /api/live,
// each reading every event over its own loopback connection, as browsers
// do. The console samples once per second and every viewer writes the same
// encoded event, so the request path's ns/op should not move:
//
//	go test ./adapters/httpapi -run '^$' -bench RouteWithDashboards -benchmem -benchtime 5s
//
// events/s is what the viewers received together: 100 dashboards at one
// event per second each. cpu-ns/op is the process's CPU time (getrusage,
// every goroutine: the server, the benchmark's clients, the console and
// its viewers) per request, which a loaded machine inflates far less than
// the wall-clock ns/op.
func BenchmarkRouteWithDashboards(b *testing.B) {
	s := refusingStack(b)
	con, err := console.Register(s.api.Router(), console.Config{Engine: s.eng})
	if err != nil {
		b.Fatal(err)
	}
	live := httptest.NewServer(s.api)
	defer live.Close()
	defer con.Close() // before live.Close: the streams end
	for _, n := range []int{0, 100} {
		for _, mode := range []string{"loopback", "in-process"} {
			b.Run(fmt.Sprintf("dashboards=%d/refused/%s", n, mode), func(b *testing.B) {
				events, stop := openDashboards(b, live.URL, n)
				defer stop()
				before, cpu0 := events.Load(), cpuTime(b)
				if mode == "loopback" {
					benchLoopback(b, s.api)
				} else {
					benchInProcess(b, s.api)
				}
				b.StopTimer()
				b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(events.Load()-before)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}

// openDashboards opens n /api/live streams that read every event, once
// each has had its first; events counts the events they read.
func openDashboards(b *testing.B, base string, n int) (*atomic.Int64, func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var (
		events atomic.Int64
		wg     sync.WaitGroup
		ready  sync.WaitGroup
	)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n + 1}}
	for range n {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/live", nil)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		ready.Add(1)
		wg.Go(func() {
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			first := true
			for {
				line, err := r.ReadBytes('\n')
				if err != nil {
					if first {
						ready.Done()
					}
					return
				}
				if bytes.HasPrefix(line, []byte("event: stats")) {
					events.Add(1)
					if first {
						first = false
						ready.Done()
					}
				}
			}
		})
	}
	ready.Wait()
	return &events, func() {
		cancel()
		wg.Wait()
		client.CloseIdleConnections()
	}
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	d, err := engine.ProcessCPUTime()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
