package dispatch_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
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
	b.Run("parallel", func(b *testing.B) {
		// 2 backends × 2 slots and 4 goroutines per CPU, a tenant each:
		// more jobs than slots, so Acquires wait and are handed slots by
		// Releases (with the real MaxWait timers).
		d, err := dispatch.New(dispatch.Config{Backends: backends(2, 2), MaxQueue: 1 << 16})
		if err != nil {
			b.Fatal(err)
		}
		var n atomic.Int64
		b.SetParallelism(4)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			tenant := "198.51.100." + strconv.FormatInt(n.Add(1), 10)
			for pb.Next() {
				l, err := d.Acquire(ctx, dispatch.Request{Tenant: tenant, Cost: 1})
				if err != nil {
					b.Error(err)
					return
				}
				l.Release(time.Millisecond)
			}
		})
	})
}
