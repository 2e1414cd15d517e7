package jobs_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/engine/jobs"
)

// syncBuffer is a log sink safe for the jobs' goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPanickingJobFailsAndFreesItsSlot runs a job that panics while it
// holds the one slot of a one-slot setup: the process goes on, the job
// ends failed with a clear message, the panic and its stack are logged
// once, OnFinish hears of it, and the slot (released by the run function's
// defer as the panic unwinds) admits the next job.
func TestPanickingJobFailsAndFreesItsSlot(t *testing.T) {
	var logs syncBuffer
	finished := make(chan jobs.Job, 2)
	m := newManager(t, jobs.Config{
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		OnFinish: func(j jobs.Job) { finished <- j },
	})
	slot := make(chan struct{}, 1) // a one-slot backend
	run := func(body func()) jobs.RunFunc {
		return func(ctx context.Context, _ jobs.Report) (jobs.Result, error) {
			select {
			case slot <- struct{}{}:
			default:
				t.Error("the slot is still taken")
				return jobs.Result{}, context.Canceled
			}
			defer func() { <-slot }()
			body()
			return jobs.Result{Data: []byte("img"), ContentType: "image/png"}, nil
		}
	}

	bad, err := m.Submit(jobs.Spec{Tenant: "a", Resource: "r"}, run(func() { panic("boom in the run function") }))
	if err != nil {
		t.Fatal(err)
	}
	j := <-finished
	if j.ID != bad.ID || j.State != jobs.Failed || j.Error != jobs.ErrPanicked.Error() {
		t.Fatalf("the panicking job ended %s (%q); want failed with %q", j.State, j.Error, jobs.ErrPanicked)
	}
	if got, _ := m.Status(bad.ID); got.State != jobs.Failed {
		t.Fatalf("its record says %s", got.State)
	}
	if n := strings.Count(logs.String(), "boom in the run function"); n != 1 {
		t.Fatalf("the panic was logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "panic_test.go") {
		t.Fatalf("the log has no stack:\n%s", logs.String())
	}

	next, err := m.Submit(jobs.Spec{Tenant: "b", Resource: "r"}, run(func() {}))
	if err != nil {
		t.Fatal(err)
	}
	if j := <-finished; j.ID != next.ID || j.State != jobs.Succeeded {
		t.Fatalf("the next job on the slot: %s %q", j.State, j.Error)
	}
}

// TestPanickingOnFinishKeepsTheProcess: a panic in OnFinish (the webhook's
// sender) is logged; the job stays as it ended and Drain returns.
func TestPanickingOnFinishKeepsTheProcess(t *testing.T) {
	var logs syncBuffer
	m := newManager(t, jobs.Config{
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		OnFinish: func(jobs.Job) { panic("boom in OnFinish") },
	})
	job, err := m.Submit(jobs.Spec{Tenant: "a", Resource: "r"}, func(context.Context, jobs.Report) (jobs.Result, error) {
		return jobs.Result{Data: []byte("img")}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if j, _ := m.Status(job.ID); j.State != jobs.Succeeded {
		t.Fatalf("job %s", j.State)
	}
	if !strings.Contains(logs.String(), "boom in OnFinish") {
		t.Fatalf("the panic was not logged:\n%s", logs.String())
	}
}
