//go:build unix

package console_test

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

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/console"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// BenchmarkLiveEvent is the whole cost of one live event: sampling a real
// engine's statistics, encoding them, and writing them to n viewers over
// loopback, with the viewers' own reading (a browser's work) counted too.
// cpu-ns/op is the process's CPU time per event (getrusage: user + system,
// every goroutine), which a loaded machine inflates far less than the
// wall-clock ns/op. The console makes one event a second, so cpu-ns/op with
// n=100 is, at most, the CPU time a hundred open dashboards cost per
// second:
//
//	go test ./adapters/console -run '^$' -bench LiveEvent -benchmem
func BenchmarkLiveEvent(b *testing.B) {
	set, err := rules.Default()
	if err != nil {
		b.Fatal(err)
	}
	eng, err := engine.New(engine.Options{Namespace: b.Name() + "/", CPU: idleCPU{}}, set)
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("viewers=%d", n), func(b *testing.B) {
			gin.SetMode(gin.ReleaseMode)
			r := gin.New()
			clk := clock.NewFake(start)
			con, err := console.Register(r, console.Config{Engine: eng, Clock: clk})
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(r)
			defer srv.Close()
			defer con.Close() // before srv.Close: the streams end
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var (
				events atomic.Int64
				wg     sync.WaitGroup
				got    = make(chan struct{}, n)
			)
			defer wg.Wait()
			defer cancel()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
			for range n {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/live", nil)
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				wg.Go(func() {
					defer resp.Body.Close()
					br := bufio.NewReaderSize(resp.Body, 64<<10)
					for {
						line, err := br.ReadSlice('\n')
						if err != nil && err != bufio.ErrBufferFull {
							return
						}
						if bytes.HasPrefix(line, []byte("event: stats")) {
							events.Add(1)
							got <- struct{}{}
						}
					}
				})
			}
			wait := func() { // until every viewer has read the latest event
				for range n {
					<-got
				}
			}
			wait()
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for range b.N {
				for clk.Timers() != 1 {
					time.Sleep(20 * time.Microsecond) // asleep, not spinning: no CPU counted
				}
				clk.Advance(time.Second)
				wait()
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			if events.Load() != int64((b.N+1)*n) {
				b.Fatalf("%d events read, want %d", events.Load(), (b.N+1)*n)
			}
		})
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
