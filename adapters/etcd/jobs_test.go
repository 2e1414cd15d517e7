package etcd

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sluicehq/sluice/engine/jobs"
)

func TestJobStore(t *testing.T) {
	s := NewJobStore(shared.client, testPrefix(t), 0)
	a := jobs.Job{ID: uuid.NewString(), Tenant: "t", Resource: "r", State: jobs.Running, Backend: "http://b", PromptID: "p"}
	b := jobs.Job{ID: uuid.NewString(), State: jobs.Queued}
	for _, j := range []jobs.Job{a, b} {
		if err := s.Save(j); err != nil {
			t.Fatal(err)
		}
	}
	a.State = jobs.Succeeded
	if err := s.Save(a); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || len(got) != 2 {
		t.Fatalf("Load = %+v, %v", got, err)
	}
	byID := map[string]jobs.Job{got[0].ID: got[0], got[1].ID: got[1]}
	if g := byID[a.ID]; g.State != jobs.Succeeded || g.Tenant != "t" || g.Backend != "http://b" || g.PromptID != "p" {
		t.Errorf("loaded %+v", g)
	}
	if err := s.Delete(b.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(); len(got) != 1 || got[0].ID != a.ID {
		t.Errorf("after Delete: %+v", got)
	}
}

// TestJobStoreSkipsBadRecords: a record that does not decode is left out
// and named in an error wrapping jobs.ErrBadRecord; the others load.
func TestJobStoreSkipsBadRecords(t *testing.T) {
	s := NewJobStore(shared.client, testPrefix(t), 0)
	good := jobs.Job{ID: uuid.NewString(), Tenant: "t", State: jobs.Running, Backend: "http://b", PromptID: "p"}
	if err := s.Save(good); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.client.Put(context.Background(), s.Key("broken"), "{not json"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if !errors.Is(err, jobs.ErrBadRecord) || !strings.Contains(err.Error(), s.Key("broken")) {
		t.Fatalf("Load error %v; want one naming %s", err, s.Key("broken"))
	}
	if len(got) != 1 || got[0].ID != good.ID {
		t.Fatalf("Load = %+v; want the good record", got)
	}
}
