package jobs_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/jobs"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

// step is a job the test drives: each value sent on progress is reported,
// and the job returns what is sent on end.
type step struct {
	progress chan int
	end      chan error
	ctxDone  chan struct{}
}

func newStep() *step {
	return &step{progress: make(chan int), end: make(chan error), ctxDone: make(chan struct{})}
}

func (s *step) run(ctx context.Context, report jobs.Report) (jobs.Result, error) {
	for {
		select {
		case v := <-s.progress:
			report.Progress(v, 10)
		case err := <-s.end:
			if err != nil {
				return jobs.Result{}, err
			}
			return jobs.Result{PromptID: "p1", Data: []byte("img"), ContentType: "image/png"}, nil
		case <-ctx.Done():
			close(s.ctxDone)
			return jobs.Result{}, ctx.Err()
		}
	}
}

func newManager(t *testing.T, cfg jobs.Config) *jobs.Manager {
	t.Helper()
	cfg.Clock = &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := jobs.New(cfg)
	t.Cleanup(m.Close)
	return m
}

func TestLifecycle(t *testing.T) {
	m := newManager(t, jobs.Config{})
	st := newStep()
	job, err := m.Submit(jobs.Spec{Tenant: "a", Resource: "r", Params: jobs.Params{Size: 512}}, st.run)
	if err != nil || job.State != jobs.Queued || job.ID == "" || job.Created.IsZero() {
		t.Fatalf("Submit = %+v, %v", job, err)
	}
	events, err := m.Subscribe(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e := <-events; e.Type != jobs.EventState || e.Job.State != jobs.Queued {
		t.Fatalf("replay %+v", e)
	}
	st.progress <- 3
	if e := <-events; e.Type != jobs.EventState || e.Job.State != jobs.Running || e.Job.Started.IsZero() {
		t.Fatalf("second event %+v", e)
	}
	if e := <-events; e.Type != jobs.EventProgress || e.Job.Progress != (jobs.Progress{Value: 3, Max: 10}) {
		t.Fatalf("third event %+v", e)
	}
	st.end <- nil
	e := <-events
	if e.Type != jobs.EventState || e.Job.State != jobs.Succeeded || e.Job.Result != nil {
		t.Fatalf("final event %+v", e)
	}
	if _, open := <-events; open {
		t.Fatal("events not closed after the final state")
	}
	got, err := m.Get(job.ID)
	if err != nil || got.State != jobs.Succeeded || string(got.Result) != "img" || got.PromptID != "p1" || !got.Finished.After(got.Started) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := m.Cancel(job.ID); !errors.Is(err, jobs.ErrFinished) {
		t.Errorf("Cancel of a finished job: %v", err)
	}
	// A late subscriber gets the final state, then the end.
	late, _ := m.Subscribe(context.Background(), job.ID)
	if e := <-late; e.Job.State != jobs.Succeeded {
		t.Errorf("late replay %+v", e)
	}
	if _, open := <-late; open {
		t.Error("late subscription not closed")
	}
}

func TestFailure(t *testing.T) {
	m := newManager(t, jobs.Config{})
	st := newStep()
	job, _ := m.Submit(jobs.Spec{}, st.run)
	events, _ := m.Subscribe(context.Background(), job.ID)
	<-events
	st.end <- errors.New("boom")
	if e := <-events; e.Job.State != jobs.Failed || e.Job.Error != "boom" {
		t.Fatalf("final %+v", e)
	}
}

func TestCancelQueued(t *testing.T) {
	m := newManager(t, jobs.Config{})
	st := newStep()
	job, _ := m.Submit(jobs.Spec{}, st.run)
	events, _ := m.Subscribe(context.Background(), job.ID)
	<-events
	if _, err := m.Cancel(job.ID); err != nil {
		t.Fatal(err)
	}
	<-st.ctxDone
	if e := <-events; e.Job.State != jobs.Cancelled {
		t.Fatalf("final %+v", e)
	}
	if _, err := m.Cancel("nope"); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("Cancel of an unknown job: %v", err)
	}
}

func TestSlowSubscriberDropsProgressNotStates(t *testing.T) {
	m := newManager(t, jobs.Config{SubscriberBuffer: 2})
	st := newStep()
	job, _ := m.Submit(jobs.Spec{}, st.run)
	events, _ := m.Subscribe(context.Background(), job.ID)
	for v := 1; v <= 50; v++ { // nobody reads: the job must not block
		st.progress <- v
	}
	st.end <- nil
	var got []jobs.Event
	for e := range events {
		got = append(got, e)
	}
	if len(got) > 8 {
		t.Errorf("%d events kept for a subscriber with a buffer of 2", len(got))
	}
	var states []jobs.State
	last := 0
	for _, e := range got {
		switch e.Type {
		case jobs.EventState:
			states = append(states, e.Job.State)
		case jobs.EventProgress:
			if e.Job.Progress.Value <= last {
				t.Errorf("progress out of order: %d after %d", e.Job.Progress.Value, last)
			}
			last = e.Job.Progress.Value
		}
	}
	if len(states) != 3 || states[0] != jobs.Queued || states[1] != jobs.Running || states[2] != jobs.Succeeded {
		t.Errorf("states %v", states)
	}
	if last != 50 {
		t.Errorf("last progress %d; want the latest, 50", last)
	}
}

func TestEvictsOldestFinished(t *testing.T) {
	m := newManager(t, jobs.Config{MaxFinished: 2})
	var ids []string
	for range 3 {
		st := newStep()
		job, _ := m.Submit(jobs.Spec{}, st.run)
		events, _ := m.Subscribe(context.Background(), job.ID)
		st.end <- nil
		for range events {
		}
		ids = append(ids, job.ID)
	}
	if _, err := m.Get(ids[0]); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("oldest finished job kept: %v", err)
	}
	for _, id := range ids[1:] {
		if _, err := m.Get(id); err != nil {
			t.Errorf("job %s: %v", id, err)
		}
	}
}

func TestCloseCancelsAndWaits(t *testing.T) {
	m := jobs.New(jobs.Config{})
	st := newStep()
	job, _ := m.Submit(jobs.Spec{}, st.run)
	m.Close()
	select {
	case <-st.ctxDone:
	default:
		t.Fatal("Close returned before the job's context ended")
	}
	if got, _ := m.Get(job.ID); got.State != jobs.Cancelled {
		t.Errorf("after Close: %s", got.State)
	}
	if _, err := m.Submit(jobs.Spec{}, st.run); !errors.Is(err, jobs.ErrClosed) {
		t.Errorf("Submit after Close: %v", err)
	}
}

func TestSubscriptionEndsWithContext(t *testing.T) {
	m := newManager(t, jobs.Config{})
	st := newStep()
	job, _ := m.Submit(jobs.Spec{}, st.run)
	ctx, cancel := context.WithCancel(context.Background())
	events, _ := m.Subscribe(ctx, job.ID)
	<-events
	cancel()
	for range events {
	}
	st.end <- nil
}

func TestDrainWaitsForRunningJobs(t *testing.T) {
	m := jobs.New(jobs.Config{})
	defer m.Close()
	release := make(chan struct{})
	job, err := m.Submit(jobs.Spec{Tenant: "192.0.2.1", Resource: "zimage_generate"}, func(ctx context.Context, _ jobs.Report) (jobs.Result, error) {
		<-release
		return jobs.Result{Data: []byte("png"), ContentType: "image/png"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Past its deadline, Drain gives up and says so; the job still runs.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("drain with an ended context: %v", err)
	}
	if _, err := m.Submit(jobs.Spec{}, nil); !errors.Is(err, jobs.ErrClosed) {
		t.Fatalf("a draining manager took a job: %v", err)
	}
	close(release)
	if err := m.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(job.ID); got.State != jobs.Succeeded {
		t.Fatalf("drained job state %s, want succeeded", got.State)
	}
}
