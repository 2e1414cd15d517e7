package farm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sluicehq/sluice/adapters/comfyui"
)

// TestFlappingBackendsKeepTheSlotsExact runs jobs while backends go out and
// back in at random: no backend ever runs more jobs than its slots, no job
// runs on two backends at once, every job ends served or refused with a
// 503, and nothing stays held.
func TestFlappingBackendsKeepTheSlotsExact(t *testing.T) {
	f, bs, _ := fakeFarm(t, Config{Slots: 1, TenantInFlight: 8, MaxQueue: 64}, 3)
	var (
		mu      sync.Mutex
		running = map[string]string{} // job → backend it runs on
		errs    []string
	)
	for _, b := range bs {
		var inUse atomic.Int64
		b.auto = func(ctx context.Context, job comfyui.Job) error {
			if n := inUse.Add(1); n > 1 {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s runs %d jobs at once", b.name, n))
				mu.Unlock()
			}
			defer inUse.Add(-1)
			mu.Lock()
			if other, ok := running[job.Prompt]; ok {
				errs = append(errs, fmt.Sprintf("%s runs on %s and %s at once", job.Prompt, other, b.name))
			}
			running[job.Prompt] = b.name
			mu.Unlock()
			defer func() {
				mu.Lock()
				delete(running, job.Prompt)
				mu.Unlock()
			}()
			if rand.IntN(2) == 0 {
				job.OnRunning()
			}
			for range 20 {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				runtime.Gosched()
			}
			return nil
		}
	}
	var wg sync.WaitGroup
	var served, refused atomic.Int64
	for i := range 40 {
		wg.Go(func() {
			job := generate(fmt.Sprintf("192.0.2.%d", i%5))
			job.Prompt = fmt.Sprintf("job %d", i)
			_, err := f.Run(context.Background(), job)
			switch {
			case err == nil:
				served.Add(1)
			case isBusy(err):
				refused.Add(1)
			default:
				t.Errorf("%s: %v", job.Prompt, err)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	names := []string{"a", "b", "c"}
	for flapping := true; flapping; {
		select {
		case <-done:
			flapping = false
		default:
			f.setOut(names[rand.IntN(3)], rand.IntN(3) == 0)
			runtime.Gosched()
		}
		if !flapping {
			break
		}
		// Keep one backend in most of the time, so the jobs end.
		if rand.IntN(4) == 0 {
			f.setOut(names[rand.IntN(3)], false)
		}
	}
	for _, e := range errs {
		t.Error(e)
	}
	if served.Load()+refused.Load() != 40 || served.Load() == 0 {
		t.Fatalf("%d served, %d refused, of 40", served.Load(), refused.Load())
	}
	t.Logf("%d served, %d refused", served.Load(), refused.Load())
	st := f.Stats()
	for _, b := range st.Backends {
		if b.InUse != 0 {
			t.Errorf("%s: %d slots held after every job ended", b.Name, b.InUse)
		}
	}
	if st.Queued != 0 || len(st.Tenants) != 0 {
		t.Errorf("after every job: %d queued, tenants %+v", st.Queued, st.Tenants)
	}
}
