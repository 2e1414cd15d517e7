package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/engine/jobs"
)

// parked is a run function that waits for a GPU slot until its context
// ends, as a job behind others in the gateway's queue.
func parked(waiting chan<- struct{}) jobs.RunFunc {
	return func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
		rep.Queued(func() int { return 1 })
		waiting <- struct{}{}
		<-ctx.Done()
		return jobs.Result{}, context.Cause(ctx)
	}
}

// TestQueuedJobResumesAfterRestart: a job still waiting for a slot when
// the gateway stops — gracefully, or killed without a word — is run again
// by the next gateway from the input its journal kept, and its journal
// entry goes once its end is in the Store.
func TestQueuedJobResumesAfterRestart(t *testing.T) {
	for _, kill := range []bool{false, true} {
		name := map[bool]string{false: "graceful stop", true: "SIGKILL"}[kill]
		t.Run(name, func(t *testing.T) {
			store := newMemStore()
			journal, err := jobs.NewDirResults(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			first := jobs.New(jobs.Config{Store: store, Results: journal, Journal: journal})
			waiting := make(chan struct{})
			spec := jobs.Spec{Tenant: "a", Resource: "ddcolor_person", Params: jobs.Params{Size: 512}, Input: []byte("the prepared image")}
			job, err := first.Submit(spec, parked(waiting))
			if err != nil {
				t.Fatal(err)
			}
			<-waiting
			if kill {
				// The process dies: nothing more is written; first's
				// goroutines are left to the test's end.
				defer first.Close()
			} else {
				first.Close()
			}

			m := newManager(t, jobs.Config{Store: store, Results: journal, Journal: journal})
			var got []byte
			err = m.Restore(context.Background(), nil, nil, func(ctx context.Context, j jobs.Job, input []byte, rep jobs.Report) (jobs.Result, error) {
				if j.ID != job.ID || j.Params.Size != 512 || j.Tenant != "a" || j.State != jobs.Queued {
					return jobs.Result{}, errors.New("resumed with the wrong record")
				}
				got = input
				rep.Started("http://gpu1", "p2")
				return jobs.Result{PromptID: "p2", Data: []byte("colourised"), ContentType: "image/png"}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if end := wait(t, m, job.ID); end.State != jobs.Succeeded {
				t.Fatalf("resumed job %s: %s", end.State, end.Error)
			}
			if string(got) != "the prepared image" {
				t.Errorf("resumed with input %q", got)
			}
			if err := m.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if rec, _ := store.get(job.ID); rec.State != jobs.Succeeded {
				t.Errorf("stored %s", rec.State)
			}
			if left, _ := journal.Inputs(); len(left) != 0 {
				t.Errorf("journal entries left after the job ended: %d", len(left))
			}
		})
	}
}

// TestJournalReplaysWhatTheStoreLacks: a job accepted while the Store did
// not answer (no record of it there) and then killed is known to the next
// gateway from its journal entry alone; the record is written to the Store.
func TestJournalReplaysWhatTheStoreLacks(t *testing.T) {
	down := &gateStore{memStore: newMemStore(), gate: make(chan struct{})} // never answers
	journal, err := jobs.NewDirResults(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first := jobs.New(jobs.Config{Store: down, Journal: journal})
	waiting := make(chan struct{})
	job, err := first.Submit(jobs.Spec{Tenant: "a", Input: []byte("img")}, parked(waiting))
	if err != nil {
		t.Fatal(err)
	}
	<-waiting
	defer func() { close(down.gate); first.Close() }() // killed: left as it is

	store := newMemStore() // the same etcd, back, without the record
	m := newManager(t, jobs.Config{Store: store, Journal: journal})
	resumed := make(chan string, 1)
	err = m.Restore(context.Background(), nil, nil, func(ctx context.Context, j jobs.Job, input []byte, rep jobs.Report) (jobs.Result, error) {
		resumed <- string(input)
		return jobs.Result{Data: []byte("out")}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if end := wait(t, m, job.ID); end.State != jobs.Succeeded {
		t.Fatalf("job %s: %s", end.State, end.Error)
	}
	if in := <-resumed; in != "img" {
		t.Errorf("input %q", in)
	}
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec, ok := store.get(job.ID); !ok || rec.State != jobs.Succeeded {
		t.Errorf("the Store got %+v", rec)
	}
}

// TestRestoreWithoutResumeLosesQueued: with no ResumeFunc, a job that had
// not reached a backend ends failed with LostQueued and its journal entry
// goes.
func TestRestoreWithoutResumeLosesQueued(t *testing.T) {
	store := newMemStore()
	journal, err := jobs.NewDirResults(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first := jobs.New(jobs.Config{Store: store, Journal: journal})
	waiting := make(chan struct{})
	job, _ := first.Submit(jobs.Spec{Input: []byte("img")}, parked(waiting))
	<-waiting
	first.Close()
	m := newManager(t, jobs.Config{Store: store, Journal: journal})
	if err := m.Restore(context.Background(), nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if end := wait(t, m, job.ID); end.State != jobs.Failed || end.Error != jobs.LostQueued {
		t.Fatalf("job %s: %s", end.State, end.Error)
	}
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if left, _ := journal.Inputs(); len(left) != 0 {
		t.Errorf("journal entries left: %d", len(left))
	}
}

// TestJobGoneFromItsBackendRunsAgain: a job that had reached a backend
// which no longer knows it after the restart (the built-in simulator
// restarted, a ComfyUI that lost its queue) is run again from its kept
// input, after its claim on that backend is released.
func TestJobGoneFromItsBackendRunsAgain(t *testing.T) {
	store := newMemStore()
	journal, err := jobs.NewDirResults(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first := jobs.New(jobs.Config{Store: store, Journal: journal})
	submitted := make(chan struct{})
	job, err := first.Submit(jobs.Spec{Input: []byte("img")}, func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
		rep.Started("http://127.0.0.1:8188", "p1")
		close(submitted)
		<-ctx.Done()
		return jobs.Result{}, context.Cause(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
	<-submitted
	first.Close()

	var order []string
	m := newManager(t, jobs.Config{Store: store, Journal: journal})
	err = m.Restore(context.Background(), func(ctx context.Context, j jobs.Job) (jobs.Result, error) {
		order = append(order, "follow "+j.PromptID)
		return jobs.Result{}, fmt.Errorf("prompt %s: %w", j.PromptID, jobs.ErrRerun)
	}, func(jobs.Job) func(error) {
		order = append(order, "claim")
		return func(error) { order = append(order, "release") }
	}, func(ctx context.Context, j jobs.Job, input []byte, rep jobs.Report) (jobs.Result, error) {
		order = append(order, "resume "+string(input))
		rep.Started("http://127.0.0.1:8188", "p2")
		return jobs.Result{PromptID: "p2", Data: []byte("out")}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	end := wait(t, m, job.ID)
	if end.State != jobs.Succeeded || end.PromptID != "p2" {
		t.Fatalf("job %s (%s) prompt %s", end.State, end.Error, end.PromptID)
	}
	if got := strings.Join(order, ", "); got != "claim, follow p1, release, resume img" {
		t.Errorf("order: %s", got)
	}
}
