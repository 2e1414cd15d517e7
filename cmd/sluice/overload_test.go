package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// BenchmarkOverload floods a farm of fake GPU backends, on loopback, with
// an open-loop load: one abusive client at 20× the farm's capacity and
// several well-behaved ones, each asking for a mix of small and large
// images. It prints goodput against capacity (the GPU time spent on jobs
// within the load's window over the GPU time there was), the queue wait of admitted
// jobs, each client's share, Jain's fairness index among the well-behaved,
// and the refusals by reason. Run it with `make bench-overload`:
//
//	go test ./cmd/sluice -run '^$' -bench Overload -benchtime 1x
func BenchmarkOverload(b *testing.B) {
	const (
		backends  = 4
		small     = 60 * time.Millisecond // a 512 px job
		large     = 120 * time.Millisecond
		duration  = 6 * time.Second
		wellRate  = 11.0 // jobs per second per well-behaved client: together, about the capacity
		wellCount = 4
	)
	meanJob := (small + large) / 2
	capacity := float64(backends) / meanJob.Seconds() // jobs per second
	jobTime := func(p comfyuitest.Prompt) time.Duration {
		if w, _ := p.Int("EmptySD3LatentImage", "width"); w > 256 {
			return large
		}
		return small
	}
	clients := make(map[string]*comfyui.Client)
	var cfgs []dispatch.BackendConfig
	for range backends {
		srv := comfyuitest.NewServer(comfyuitest.Options{JobTime: jobTime})
		b.Cleanup(srv.Close)
		c, err := comfyui.NewClient(comfyui.Config{BaseURL: srv.URL, PollInterval: 50 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Close)
		clients[c.BaseURL()] = c
		cfgs = append(cfgs, dispatch.BackendConfig{Name: c.BaseURL(), Slots: 1})
	}
	d, err := dispatch.New(dispatch.Config{Backends: cfgs, MaxQueue: 16, MaxWait: 2 * large, TenantInFlight: 2})
	if err != nil {
		b.Fatal(err)
	}

	var (
		gpuBusy atomic.Int64 // GPU time of the jobs completed, in ns
		seed    atomic.Int64 // a seed per job: ComfyUI serves a repeated prompt from its cache
	)
	type tally struct {
		done, asked atomic.Int64
		busy        sync.Map // dispatch.Reason → *atomic.Int64
	}
	tenants := map[string]float64{"abuser": 20 * capacity}
	for i := range wellCount {
		tenants[fmt.Sprintf("client-%d", i+1)] = wellRate
	}
	tallies := make(map[string]*tally, len(tenants))
	for name := range tenants {
		tallies[name] = &tally{}
	}
	var (
		waitsMu sync.Mutex
		waits   []time.Duration
		running sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	start := time.Now()
	var load sync.WaitGroup
	for name, rate := range tenants {
		t := tallies[name]
		load.Go(func() {
			tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				t.asked.Add(1)
				side, cost, gpu := 256, 1, small // small images: the fake's PNG work stays small
				if i%2 == 1 {
					side, cost, gpu = 512, 2, large
				}
				running.Go(func() {
					lease, err := d.Acquire(ctx, dispatch.Request{Tenant: name, Cost: cost})
					var r *dispatch.Refusal
					if errors.As(err, &r) {
						n, _ := t.busy.LoadOrStore(r.Reason, new(atomic.Int64))
						n.(*atomic.Int64).Add(1)
						return
					}
					if err != nil {
						return // the load ended while it waited
					}
					waitsMu.Lock()
					waits = append(waits, lease.Waited())
					waitsMu.Unlock()
					// As the farm does: the slot is free once the prompt has run.
					jobStart := time.Now()
					job := comfyui.Job{Resource: "zimage_generate", Prompt: "bench", Width: side, Height: side, Steps: 1, Seed: seed.Add(1),
						OnExecuted: func() {
							lease.Release(time.Since(jobStart))
							// The GPU ran this job for gpu up to now: count the part
							// inside the load's window.
							end := time.Since(start)
							if in := min(end, duration) - max(end-gpu, 0); in > 0 {
								gpuBusy.Add(int64(in))
							}
						}}
					_, err = clients[lease.Backend()].Run(context.Background(), job)
					lease.Release(time.Since(jobStart))
					if err == nil {
						t.done.Add(1)
					}
				})
			}
		})
	}
	load.Wait()
	running.Wait()

	var total int64
	for _, t := range tallies {
		total += t.done.Load()
	}
	goodput := float64(gpuBusy.Load()) / float64(backends*duration) // of capacity
	slices.Sort(waits)
	pct := func(p float64) time.Duration {
		if len(waits) == 0 {
			return 0
		}
		return waits[int(p*float64(len(waits)-1))]
	}
	var sum, sumSq float64
	names := make([]string, 0, len(tallies))
	for name := range tallies {
		names = append(names, name)
	}
	sort.Strings(names)
	out := os.Stdout
	fmt.Fprintf(out, "\noverload: %d backends × 1 slot, jobs %s/%s, capacity %.1f jobs/s, %s of load\n", backends, small, large, capacity, duration)
	fmt.Fprintf(out, "%-10s %8s %8s %8s  %s\n", "client", "asked/s", "done/s", "share", "refused")
	for _, name := range names {
		t := tallies[name]
		done := float64(t.done.Load())
		refused := ""
		t.busy.Range(func(k, v any) bool {
			refused += fmt.Sprintf("%s=%d ", k, v.(*atomic.Int64).Load())
			return true
		})
		fmt.Fprintf(out, "%-10s %8.1f %8.1f %7.1f%%  %s\n", name, float64(t.asked.Load())/duration.Seconds(), done/duration.Seconds(), 100*done/float64(max(total, 1)), refused)
		if name != "abuser" {
			x := done / float64(max(t.asked.Load(), 1)) // the share of its own demand served
			sum, sumSq = sum+x, sumSq+x*x
		}
	}
	jain := sum * sum / (float64(wellCount) * sumSq)
	fmt.Fprintf(out, "goodput: %d jobs, GPUs busy %.1f%% of the window (goal ≥ 95%%)\n", total, 100*goodput)
	fmt.Fprintf(out, "queue wait of admitted jobs: p50 %s, p99 %s (goal p99 ≤ one job, %s on average)\n", pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), meanJob)
	fmt.Fprintf(out, "Jain's fairness among the well-behaved: %.3f (goal ≥ 0.95)\n", jain)
	b.ReportMetric(100*goodput, "goodput-%")
	b.ReportMetric(float64(pct(0.99).Milliseconds()), "p99-wait-ms")
	b.ReportMetric(jain, "jain")
}
