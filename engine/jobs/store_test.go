package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/sluicehq/sluice/engine/jobs"
)

// memStore is a hand-written jobs.Store that keeps every save.
type memStore struct {
	mu      sync.Mutex
	records map[string]jobs.Job
	saves   []jobs.State // states saved, in order
	deleted []string
}

func newMemStore() *memStore { return &memStore{records: map[string]jobs.Job{}} }

func (s *memStore) Save(j jobs.Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[j.ID] = j
	s.saves = append(s.saves, j.State)
	return nil
}

func (s *memStore) Load() ([]jobs.Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []jobs.Job
	for _, j := range s.records {
		out = append(out, j)
	}
	return out, nil
}

func (s *memStore) Delete(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, id)
	s.deleted = append(s.deleted, id)
	return nil
}

func (s *memStore) get(id string) (jobs.Job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.records[id]
	return j, ok
}

// memResults is a hand-written jobs.ResultStore.
type memResults struct {
	mu   sync.Mutex
	data map[string][2]string
}

func newMemResults() *memResults { return &memResults{data: map[string][2]string{}} }

func (r *memResults) Put(id string, data []byte, ct string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data[id] = [2]string{string(data), ct}
	return nil
}

func (r *memResults) Get(id string) ([]byte, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.data[id]
	if !ok {
		return nil, "", fmt.Errorf("%w: %s", jobs.ErrNotFound, id)
	}
	return []byte(d[0]), d[1], nil
}

func (r *memResults) Delete(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.data, id)
	return nil
}

func (r *memResults) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.data[id]
	return ok
}

// wait follows job id to its end.
func wait(t *testing.T, m *jobs.Manager, id string) jobs.Job {
	t.Helper()
	events, err := m.Subscribe(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var last jobs.Job
	for e := range events {
		last = e.Job
	}
	return last
}

func TestStoreSavesStateChanges(t *testing.T) {
	store, results := newMemStore(), newMemResults()
	m := newManager(t, jobs.Config{Store: store, Results: results})
	job, err := m.Submit(jobs.Spec{Tenant: "a", Resource: "r"}, func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
		rep.Started("http://gpu1:8188", "p1")
		for v := range 5 {
			rep.Progress(v, 5) // ticks are not saved
		}
		return jobs.Result{PromptID: "p1", Data: []byte("img"), ContentType: "image/png"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if final := wait(t, m, job.ID); final.State != jobs.Succeeded {
		t.Fatalf("final %+v", final)
	}
	m.Close()
	// Writes are coalesced (a change made while one is in flight goes
	// into the next), so some states may be skipped; never the last, never
	// out of order, never the ticks.
	order := map[jobs.State]int{jobs.Queued: 0, jobs.Submitted: 1, jobs.Running: 2, jobs.Succeeded: 3}
	saves := store.saves
	if len(saves) == 0 || len(saves) > 4 || saves[len(saves)-1] != jobs.Succeeded {
		t.Errorf("saved states %v, want at most queued, submitted, running, succeeded, ending succeeded", saves)
	}
	for i := 1; i < len(saves); i++ {
		if order[saves[i]] < order[saves[i-1]] {
			t.Errorf("saved states out of order: %v", saves)
		}
	}
	rec, _ := store.get(job.ID)
	if rec.Tenant != "a" || rec.Backend != "http://gpu1:8188" || rec.PromptID != "p1" || rec.Result != nil {
		t.Errorf("record %+v", rec)
	}
	if st, _ := m.Status(job.ID); st.Result != nil {
		t.Error("result bytes kept in memory beside the ResultStore")
	}
	got, err := m.Get(job.ID)
	if err != nil || string(got.Result) != "img" || got.ContentType != "image/png" {
		t.Errorf("Get = %q %q, %v", got.Result, got.ContentType, err)
	}
}

func TestEvictionDeletes(t *testing.T) {
	store, results := newMemStore(), newMemResults()
	m := newManager(t, jobs.Config{Store: store, Results: results, MaxFinished: 1})
	var ids []string
	for range 2 {
		st := newStep()
		job, _ := m.Submit(jobs.Spec{}, st.run)
		st.end <- nil
		wait(t, m, job.ID)
		ids = append(ids, job.ID)
	}
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := store.get(ids[0]); ok || results.has(ids[0]) {
		t.Errorf("evicted job %s still stored (record %v, result %v)", ids[0], ok, results.has(ids[0]))
	}
	if _, ok := store.get(ids[1]); !ok || !results.has(ids[1]) {
		t.Errorf("kept job %s not stored", ids[1])
	}
}

func TestCloseLeavesRecordsForTheNextRun(t *testing.T) {
	store := newMemStore()
	m := jobs.New(jobs.Config{Store: store})
	started := make(chan struct{})
	job, _ := m.Submit(jobs.Spec{}, func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
		rep.Started("b", "p")
		close(started)
		<-ctx.Done()
		return jobs.Result{}, ctx.Err()
	})
	<-started
	m.Close()
	if rec, _ := store.get(job.ID); rec.State.Final() || rec.PromptID != "p" {
		t.Errorf("stored after Close: %s, prompt %q; want it as Started left it", rec.State, rec.PromptID)
	}
}

func TestRestore(t *testing.T) {
	store, results := newMemStore(), newMemResults()
	// A first manager finishes one job and leaves three.
	first := jobs.New(jobs.Config{Store: store, Results: results})
	ok, _ := first.Submit(jobs.Spec{Tenant: "a"}, func(context.Context, jobs.Report) (jobs.Result, error) {
		return jobs.Result{Data: []byte("old"), ContentType: "image/png"}, nil
	})
	wait(t, first, ok.ID)
	runningOK, runningBad, queued := make(chan struct{}), make(chan struct{}), make(chan struct{})
	park := func(backend, prompt string, ready chan struct{}) jobs.RunFunc {
		return func(ctx context.Context, rep jobs.Report) (jobs.Result, error) {
			if prompt != "" {
				rep.Started(backend, prompt)
			}
			close(ready)
			<-ctx.Done()
			return jobs.Result{}, ctx.Err()
		}
	}
	jOK, _ := first.Submit(jobs.Spec{Tenant: "a"}, park("b1", "p-ok", runningOK))
	jBad, _ := first.Submit(jobs.Spec{Tenant: "a"}, park("b1", "p-bad", runningBad))
	jQueued, _ := first.Submit(jobs.Spec{Tenant: "a"}, park("", "", queued))
	<-runningOK
	<-runningBad
	<-queued
	first.Close() // the gateway stops

	var finished []jobs.Job
	var fmu sync.Mutex
	m := newManager(t, jobs.Config{Store: store, Results: results, OnFinish: func(j jobs.Job) {
		fmu.Lock()
		finished = append(finished, j)
		fmu.Unlock()
	}})
	err := m.Restore(context.Background(), func(ctx context.Context, j jobs.Job) (jobs.Result, error) {
		if j.Backend != "b1" {
			return jobs.Result{}, fmt.Errorf("backend %q", j.Backend)
		}
		if j.PromptID == "p-bad" {
			return jobs.Result{}, errors.New("node 3 failed")
		}
		return jobs.Result{PromptID: j.PromptID, Data: []byte("new"), ContentType: "image/png"}, nil
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Get(ok.ID); err != nil || got.State != jobs.Succeeded || string(got.Result) != "old" {
		t.Errorf("finished job after restore: %+v, %v", got, err)
	}
	if got := wait(t, m, jOK.ID); got.State != jobs.Succeeded {
		t.Errorf("recovered job: %+v", got)
	}
	if got, _ := m.Get(jOK.ID); string(got.Result) != "new" || got.PromptID != "p-ok" {
		t.Errorf("recovered job's result %q, prompt %q", got.Result, got.PromptID)
	}
	if got := wait(t, m, jBad.ID); got.State != jobs.Failed || got.Error != "node 3 failed" {
		t.Errorf("recovered failing job: %+v", got)
	}
	if got := wait(t, m, jQueued.ID); got.State != jobs.Failed || got.Error != jobs.LostQueued {
		t.Errorf("queued job: %+v", got)
	}
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{jOK.ID, jBad.ID, jQueued.ID} {
		if rec, _ := store.get(id); !rec.State.Final() {
			t.Errorf("job %s stored %s after restore", id, rec.State)
		}
	}
	m.Close()
	if len(finished) != 3 {
		t.Errorf("OnFinish called for %d jobs, want 3", len(finished))
	}
}

func TestDirResults(t *testing.T) {
	dir := t.TempDir()
	d, err := jobs.NewDirResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	if err := d.Put(id, []byte("png"), "image/png"); err != nil {
		t.Fatal(err)
	}
	if err := d.Put(id, []byte("png2"), "image/webp"); err != nil { // replaces
		t.Fatal(err)
	}
	data, ct, err := d.Get(id)
	if err != nil || string(data) != "png2" || ct != "image/webp" {
		t.Fatalf("Get = %q %q %v", data, ct, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != id && e.Name() != id+".type" {
			t.Errorf("left in the folder: %s (a temporary file not renamed?)", e.Name())
		}
	}
	for _, bad := range []string{"../etc/passwd", "x", "", filepath.Join("a", id), "6F9619FF-8B86-D011-B42D-00C04FC964FF"} {
		if err := d.Put(bad, []byte("x"), "t"); err == nil {
			t.Errorf("Put(%q) accepted", bad)
		}
		if _, _, err := d.Get(bad); err == nil {
			t.Errorf("Get(%q) accepted", bad)
		}
	}
	if err := d.Delete(id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Get(id); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
	if err := d.Delete(id); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	j := jobs.Job{ID: uuid.NewString(), Tenant: "t", Resource: "r", Params: jobs.Params{Size: 512}, State: jobs.Running,
		Backend: "http://b", PromptID: "p", Webhook: "https://h"}
	b, err := jobs.MarshalRecord(j)
	if err != nil {
		t.Fatal(err)
	}
	got, err := jobs.UnmarshalRecord(b)
	if err != nil || got.Tenant != "t" || got.Backend != "http://b" || got.PromptID != "p" || got.Params.Size != 512 || got.Webhook != "https://h" {
		t.Fatalf("round trip %+v, %v", got, err)
	}
	if _, err := jobs.UnmarshalRecord([]byte(`{"id":"x","state":"weird"}`)); !errors.Is(err, jobs.ErrBadRecord) {
		t.Error("unknown state accepted")
	}
}
