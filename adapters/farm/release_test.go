package farm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/httpapi"
)

// deadlineCtx is a context whose deadline passes when the test says so: a
// timeout at a chosen moment, with no real time involved.
type deadlineCtx struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newDeadlineCtx() *deadlineCtx {
	return &deadlineCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *deadlineCtx) Done() <-chan struct{} { return c.done }

func (c *deadlineCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func (c *deadlineCtx) pass() { c.once.Do(func() { close(c.done) }) }

// TestFarmReleasesTheSlotOnEveryPath ends a job on a one-slot backend in
// each way a job can end — success, error, timeout, cancellation, the
// client gone, the backend taken out, a panic — and checks that the slot
// and the tenant's place are free afterwards: the next job is admitted and
// runs.
func TestFarmReleasesTheSlotOnEveryPath(t *testing.T) {
	type env struct {
		f       *Farm
		backend string
		started <-chan struct{} // the first prompt runs on ComfyUI
	}
	cases := []struct {
		name string
		hang bool // the first prompt runs until interrupted
		fail bool // the first prompt fails on ComfyUI
		// run runs the first job and returns its error.
		run func(e env, job httpapi.Job) error
	}{
		{name: "success", run: func(e env, job httpapi.Job) error {
			_, err := e.f.Run(context.Background(), job)
			return err
		}},
		{name: "error", fail: true, run: func(e env, job httpapi.Job) error {
			_, err := e.f.Run(context.Background(), job)
			var ee *comfyui.ExecutionError
			if !errors.As(err, &ee) {
				return fmt.Errorf("want an execution error, got %v", err)
			}
			return nil
		}},
		{name: "timeout", hang: true, run: func(e env, job httpapi.Job) error {
			ctx := newDeadlineCtx()
			go func() { <-e.started; ctx.pass() }()
			if _, err := e.f.Run(ctx, job); !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("want a timeout, got %v", err)
			}
			return nil
		}},
		{name: "cancel", hang: true, run: func(e env, job httpapi.Job) error {
			ctx, cancel := context.WithCancel(context.Background())
			go func() { <-e.started; cancel() }()
			if _, err := e.f.Run(ctx, job); !errors.Is(err, context.Canceled) {
				return fmt.Errorf("want a cancellation, got %v", err)
			}
			return nil
		}},
		{name: "client gone", hang: true, run: func(e env, job httpapi.Job) error {
			// A request whose client leaves: its context ends with a cause.
			ctx, cancel := context.WithCancelCause(context.Background())
			go func() { <-e.started; cancel(errors.New("client disconnected")) }()
			if _, err := e.f.Run(ctx, job); err == nil {
				return errors.New("the job succeeded after its client left")
			}
			return nil
		}},
		{name: "backend removed", hang: true, run: func(e env, job httpapi.Job) error {
			// Taken out before it showed progress, the job goes back into
			// the queue and runs when the backend is back.
			go func() {
				<-e.started
				e.f.setOut(e.backend, true)
				for e.f.Stats().Queued != 1 {
					runtime.Gosched()
				}
				e.f.setOut(e.backend, false)
			}()
			if _, err := e.f.Run(context.Background(), job); err != nil {
				return fmt.Errorf("want the job run once the backend is back, got %v", err)
			}
			return nil
		}},
		{name: "panic", run: func(e env, job httpapi.Job) (err error) {
			job.OnStarted = func(string, string) { panic("a bug while the job holds its slot") }
			defer func() {
				if p := recover(); p == nil {
					err = errors.New("no panic")
				}
			}()
			e.f.Run(context.Background(), job)
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var prompts atomic.Int64
			started := make(chan struct{}, 1)
			srv := comfyuitest.NewServer(comfyuitest.Options{
				JobTime: func(comfyuitest.Prompt) time.Duration {
					if prompts.Add(1) == 1 {
						started <- struct{}{}
						if tc.hang {
							return time.Hour
						}
					}
					return 5 * time.Millisecond
				},
				Fail: func(comfyuitest.Prompt) *comfyuitest.ExecutionFailure {
					if tc.fail && prompts.Load() == 1 {
						return &comfyuitest.ExecutionFailure{ExceptionMessage: "CUDA out of memory"}
					}
					return nil
				},
			})
			t.Cleanup(srv.Close)
			c := comfyui.Config{BaseURL: srv.URL, PollInterval: 20 * time.Millisecond}
			f, err := New(Config{Backends: []comfyui.Config{c}, Slots: 1, MaxQueue: 64, TenantInFlight: 1, MaxWait: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.run(env{f: f, backend: c.BaseURL, started: started}, generate("192.0.2.1")); err != nil {
				t.Fatal(err)
			}
			st := f.d.Stats()
			if st.Backends[0].InUse != 0 || st.Queued != 0 || len(st.Tenants) != 0 {
				t.Fatalf("after the job: %d slots in use, %d queued, tenants %+v", st.Backends[0].InUse, st.Queued, st.Tenants)
			}
			// The same tenant (a cap of one job) runs its next job at once.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			next := generate("192.0.2.1")
			next.OnQueued = func(func() int) { t.Error("the next job had to wait for the slot") }
			if _, err := f.Run(ctx, next); err != nil {
				t.Fatalf("the next job: %v", err)
			}
		})
	}
}
