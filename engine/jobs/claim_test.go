package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sluicehq/sluice/engine/jobs"
)

// TestRestoreClaimsBeforeReturning: every job Restore takes up on a backend
// is claimed before Restore returns (so before the gateway serves), and its
// claim is released exactly once when the job ends, with its error: nil,
// the RecoverFunc's error, or ErrPanicked when it panicked. A job lost at
// the restart (no prompt ID) holds nothing and is not claimed.
func TestRestoreClaimsBeforeReturning(t *testing.T) {
	store := newMemStore()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	okJob := jobs.Job{ID: uuid.NewString(), Tenant: "a", State: jobs.Running, Backend: "b1", PromptID: "p-ok", Created: at}
	badJob := jobs.Job{ID: uuid.NewString(), Tenant: "a", State: jobs.Running, Backend: "b1", PromptID: "p-bad", Created: at}
	panicJob := jobs.Job{ID: uuid.NewString(), Tenant: "b", State: jobs.Queued, Backend: "b1", PromptID: "p-panic", Created: at}
	lostJob := jobs.Job{ID: uuid.NewString(), Tenant: "c", State: jobs.Queued, Created: at}
	for _, j := range []jobs.Job{okJob, badJob, panicJob, lostJob} {
		store.Save(j)
	}

	var (
		mu       sync.Mutex
		claimed  = map[string]int{}
		released = map[string][]error{}
	)
	go1 := make(chan struct{}) // holds every RecoverFunc until the claims are checked
	m := newManager(t, jobs.Config{Store: store})
	err := m.Restore(context.Background(), func(ctx context.Context, j jobs.Job) (jobs.Result, error) {
		<-go1
		switch j.PromptID {
		case "p-bad":
			return jobs.Result{}, errors.New("node 3 failed")
		case "p-panic":
			panic("a bug while following the job")
		}
		return jobs.Result{Data: []byte("img")}, nil
	}, func(j jobs.Job) func(error) {
		mu.Lock()
		claimed[j.ID]++
		mu.Unlock()
		return func(err error) {
			mu.Lock()
			released[j.ID] = append(released[j.ID], err)
			mu.Unlock()
		}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if claimed[okJob.ID] != 1 || claimed[badJob.ID] != 1 || claimed[panicJob.ID] != 1 || claimed[lostJob.ID] != 0 {
		t.Fatalf("claims when Restore returned: %v", claimed)
	}
	if len(released) != 0 {
		t.Fatalf("released before the jobs ended: %v", released)
	}
	mu.Unlock()
	close(go1)
	for _, j := range []jobs.Job{okJob, badJob, panicJob, lostJob} {
		wait(t, m, j.ID)
	}
	m.Close()
	mu.Lock()
	defer mu.Unlock()
	for id, want := range map[string]error{okJob.ID: nil, badJob.ID: errors.New("node 3 failed"), panicJob.ID: jobs.ErrPanicked} {
		got := released[id]
		if len(got) != 1 || (want == nil) != (got[0] == nil) || (want != nil && got[0].Error() != want.Error()) {
			t.Errorf("job %s released with %v, want once with %v", id, got, want)
		}
	}
	if got, _ := m.Status(panicJob.ID); got.State != jobs.Failed || got.Error != jobs.ErrPanicked.Error() {
		t.Errorf("the job whose follow panicked: %s %q", got.State, got.Error)
	}
}

// partialStore is a Store whose Load met a record it could not read.
type partialStore struct{ *memStore }

func (s partialStore) Load() ([]jobs.Job, error) {
	out, _ := s.memStore.Load()
	return out, fmt.Errorf("store: key /jobs/x: %w", jobs.ErrBadRecord)
}

// TestRestoreSkipsBadRecords: one unreadable record is logged and the
// others are restored.
func TestRestoreSkipsBadRecords(t *testing.T) {
	store := newMemStore()
	done := jobs.Job{ID: uuid.NewString(), Tenant: "a", State: jobs.Succeeded, Created: time.Now(), Finished: time.Now()}
	store.Save(done)
	var logs syncBuffer
	m := newManager(t, jobs.Config{Store: partialStore{store}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := m.Restore(context.Background(), nil, nil, nil); err != nil {
		t.Fatalf("Restore failed on one bad record: %v", err)
	}
	if got, err := m.Status(done.ID); err != nil || got.State != jobs.Succeeded {
		t.Fatalf("the good record: %+v, %v", got, err)
	}
	if !strings.Contains(logs.String(), "/jobs/x") {
		t.Fatalf("the bad record was not logged:\n%s", logs.String())
	}
}
