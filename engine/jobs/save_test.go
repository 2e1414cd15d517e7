package jobs_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/jobs"
)

// gateStore is a jobs.Store whose writes wait at a gate (a Store that does
// not answer, as etcd when it is down) or fail while told to.
type gateStore struct {
	*memStore
	gate   chan struct{} // closed: writes go through
	failN  int           // the next failN saves fail
	failed chan struct{} // told of each failure
	mu     sync.Mutex
}

func (s *gateStore) Save(j jobs.Job) error {
	<-s.gate
	s.mu.Lock()
	if s.failN > 0 {
		s.failN--
		s.mu.Unlock()
		s.failed <- struct{}{}
		return errors.New("etcdserver: request timed out")
	}
	s.mu.Unlock()
	return s.memStore.Save(j)
}

func within(t *testing.T, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // a deadline to fail, not a wait that hopes
		t.Fatalf("%s: still blocked", what)
	}
}

// TestStoreThatDoesNotAnswerHoldsNothingUp: with a Store that does not
// answer (etcd stopped), Submit returns, the job runs through all its
// states and ends — its GPU slot is never held by a record write — and the
// writes that were queued meanwhile are coalesced: once the Store answers,
// it gets the latest record, in order, not every change.
func TestStoreThatDoesNotAnswerHoldsNothingUp(t *testing.T) {
	store := &gateStore{memStore: newMemStore(), gate: make(chan struct{})}
	m := newManager(t, jobs.Config{Store: store})
	ran := make(chan struct{})
	submitted := make(chan jobs.Job)
	go func() {
		job, err := m.Submit(jobs.Spec{Tenant: "a"}, func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
			rep.Started("http://gpu1", "p1")
			rep.Running()
			rep.Progress(1, 2)
			close(ran)
			return jobs.Result{Data: []byte("img")}, nil
		})
		if err != nil {
			t.Error(err)
		}
		submitted <- job
	}()
	var job jobs.Job
	select {
	case job = <-submitted:
	case <-time.After(10 * time.Second):
		t.Fatal("Submit waits for the Store")
	}
	within(t, "the job's run function", ran)
	if got := wait(t, m, job.ID); got.State != jobs.Succeeded {
		t.Fatalf("job %s with the Store down", got.State)
	}
	close(store.gate) // etcd is back
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if rec := store.records[job.ID]; rec.State != jobs.Succeeded || rec.PromptID != "p1" {
		t.Errorf("stored %+v, want the succeeded record", rec)
	}
	// At most the first write was in flight; everything after it is one.
	if n := len(store.saves); n > 2 || store.saves[n-1] != jobs.Succeeded {
		t.Errorf("saves %v, want at most one write in flight, then the latest (succeeded)", store.saves)
	}
}

// TestFailedWritesAreRetriedWithBackoff: a write that fails is tried again
// after SaveRetry, then twice that, on the injected clock, and the record
// reaches the Store.
func TestFailedWritesAreRetriedWithBackoff(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	gate := make(chan struct{})
	close(gate)
	store := &gateStore{memStore: newMemStore(), gate: gate, failN: 2, failed: make(chan struct{}, 2)}
	m := jobs.New(jobs.Config{Store: store, Clock: clk, SaveRetry: time.Second})
	defer m.Close()
	job, err := m.Submit(jobs.Spec{}, func(context.Context, jobs.Report) (jobs.Result, error) { return jobs.Result{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	wait(t, m, job.ID)
	for _, backoff := range []time.Duration{time.Second, 2 * time.Second} {
		within(t, "a failing write", store.failed)
		waitTimer(t, clk)
		clk.Advance(backoff - time.Millisecond)
		if clk.Timers() != 1 {
			t.Fatalf("retried before %s", backoff)
		}
		clk.Advance(time.Millisecond)
	}
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec, ok := store.get(job.ID); !ok || rec.State != jobs.Succeeded {
		t.Errorf("stored %+v after the retries", rec)
	}
}

// waitTimer waits until code under test waits on clk.
func waitTimer(t *testing.T, clk *clock.Fake) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for clk.Timers() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing waits on the clock")
		}
		runtime.Gosched()
	}
}

// TestStatesInOrder: a job goes queued (with its place in the gateway's
// queue), submitted (with its place in the backend's queue), running,
// succeeded, and a subscriber sees each change in that order.
func TestStatesInOrder(t *testing.T) {
	m := newManager(t, jobs.Config{})
	step := make(chan func(jobs.Report))
	job, err := m.Submit(jobs.Spec{}, func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
		for f := range step {
			f(rep)
		}
		return jobs.Result{Data: []byte("img")}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	events, err := m.Subscribe(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	next := func(typ jobs.EventType, state jobs.State, pos int) {
		t.Helper()
		e := <-events
		if e.Type != typ || e.Job.State != state || e.Job.QueuePosition != pos {
			t.Fatalf("event %s %s at %d, want %s %s at %d", e.Type, e.Job.State, e.Job.QueuePosition, typ, state, pos)
		}
	}
	next(jobs.EventState, jobs.Queued, 0)
	step <- func(rep jobs.Report) { rep.Queued(func() int { return 3 }) }
	step <- func(jobs.Report) {}
	if st, _ := m.Status(job.ID); st.State != jobs.Queued || st.QueuePosition != 3 {
		t.Fatalf("waiting for a slot: %s at %d", st.State, st.QueuePosition)
	}
	step <- func(rep jobs.Report) { rep.Started("http://gpu1", "p1") }
	next(jobs.EventState, jobs.Submitted, 0)
	step <- func(rep jobs.Report) { rep.Position(2) }
	next(jobs.EventPosition, jobs.Submitted, 2)
	step <- func(rep jobs.Report) { rep.Position(1) }
	next(jobs.EventPosition, jobs.Submitted, 1)
	if st, _ := m.Status(job.ID); st.State != jobs.Submitted || st.QueuePosition != 1 {
		t.Fatalf("in the backend's queue: %s at %d", st.State, st.QueuePosition)
	}
	step <- func(rep jobs.Report) { rep.Running() }
	next(jobs.EventState, jobs.Running, 0)
	step <- func(rep jobs.Report) { rep.Progress(1, 4) }
	next(jobs.EventProgress, jobs.Running, 0)
	close(step)
	next(jobs.EventState, jobs.Succeeded, 0)
	if _, open := <-events; open {
		t.Error("events go on after the end")
	}
}
