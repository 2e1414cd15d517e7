package dispatch_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// newClock returns a clock the test moves by hand.
func newClock() *clock.Fake { return clock.NewFake(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) }

// timers is a Config.After that fires only when the test says so.
type timers struct {
	mu  sync.Mutex
	all []*timer
}

type timer struct {
	d       time.Duration
	f       func()
	stopped bool
}

func (ts *timers) After(d time.Duration, f func()) func() bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := &timer{d: d, f: f}
	ts.all = append(ts.all, t)
	return func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// fire runs the i-th timer's function, stopped or not (a stopped timer
// firing is the race Stop can lose), and reports whether it was stopped.
func (ts *timers) fire(i int) (stopped bool) {
	ts.mu.Lock()
	t := ts.all[i]
	stopped = t.stopped
	t.stopped = true
	ts.mu.Unlock()
	t.f()
	return stopped
}

func (ts *timers) duration(i int) time.Duration {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.all[i].d
}

// newDispatcher fills in a manual clock and timers unless cfg has its own.
func newDispatcher(t testing.TB, cfg dispatch.Config) (*dispatch.Dispatcher, *clock.Fake, *timers) {
	t.Helper()
	c, ts := newClock(), &timers{}
	if cfg.Clock == nil {
		cfg.Clock = c
	}
	if cfg.After == nil {
		cfg.After = ts.After
	}
	d, err := dispatch.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, c, ts
}

func backends(slots ...int) []dispatch.BackendConfig {
	var bs []dispatch.BackendConfig
	for i, n := range slots {
		bs = append(bs, dispatch.BackendConfig{Name: "gpu" + string(rune('0'+i)), Slots: n})
	}
	return bs
}

// waitQueued spins until n jobs wait: Acquire's goroutines have queued.
// It waits on the state itself, never on time.
func waitQueued(d *dispatch.Dispatcher, n int) {
	for d.Stats().Queued != n {
		runtime.Gosched()
	}
}

// result is what a background Acquire got.
type result struct {
	tenant string
	seq    int
	lease  *dispatch.Lease
	err    error
}

// acquireAsync starts an Acquire on its own goroutine, waits until it has
// queued (the queue then holds queued jobs), and sends its outcome to out.
func acquireAsync(d *dispatch.Dispatcher, ctx context.Context, tenant string, seq, cost, queued int, out chan<- result, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		l, err := d.Acquire(ctx, dispatch.Request{Tenant: tenant, Cost: cost})
		out <- result{tenant, seq, l, err}
	}()
	waitQueued(d, queued)
}

// refusal asserts that err is a *dispatch.Refusal for reason.
func refusal(t *testing.T, err error, reason dispatch.Reason) *dispatch.Refusal {
	t.Helper()
	r, ok := err.(*dispatch.Refusal)
	if !ok {
		t.Fatalf("err = %v (%T), want a refusal %s", err, err, reason)
	}
	if r.Reason != reason {
		t.Fatalf("reason = %s, want %s (%v)", r.Reason, reason, r)
	}
	return r
}
