package dispatch_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/tenant"
)

// BenchmarkAcquireRelease measures a job's way through the dispatcher with
// a slot free, and under contention with hand-offs:
//
//	go test ./engine/dispatch -run '^$' -bench . -benchmem
func BenchmarkAcquireRelease(b *testing.B) {
	ctx := context.Background()
	b.Run("uncontended", func(b *testing.B) {
		d, err := dispatch.New(dispatch.Config{Backends: backends(1)})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			l, err := d.Acquire(ctx, dispatch.Request{Tenant: "203.0.113.7", Cost: 1})
			if err != nil {
				b.Fatal(err)
			}
			l.Release(time.Millisecond)
		}
	})
	// 2 backends × 2 slots and 4 goroutines per CPU, a tenant each: more
	// jobs than slots, so Acquires wait and are handed slots by Releases
	// (with the real MaxWait timers).
	b.Run("parallel", func(b *testing.B) {
		parallelAcquire(b, func(i int64) dispatch.Request {
			return dispatch.Request{Tenant: "198.51.100." + strconv.FormatInt(i, 10), Cost: 1}
		})
	})
	// The tenants spread over the three priority classes with costs 1 to
	// 3: the classes' choice and DRR by cost add no allocation.
	b.Run("parallel classes", func(b *testing.B) {
		parallelAcquire(b, func(i int64) dispatch.Request {
			return dispatch.Request{Tenant: "198.51.100." + strconv.FormatInt(i, 10), Class: tenant.Class(i % 3), Cost: 1 + int(i%3)}
		})
	})
}

// parallelAcquire has 4 goroutines per CPU acquire and release slots of 2
// backends × 2 slots, goroutine i with request req(i).
func parallelAcquire(b *testing.B, req func(i int64) dispatch.Request) {
	d, err := dispatch.New(dispatch.Config{Backends: backends(2, 2), MaxQueue: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(4)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := req(n.Add(1))
		for pb.Next() {
			l, err := d.Acquire(context.Background(), r)
			if err != nil {
				b.Error(err)
				return
			}
			l.Release(time.Millisecond)
		}
	})
}
