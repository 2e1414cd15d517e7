package etcd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"

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

// TestFinishedRecordsExpireByLease: a finished job's record is written
// under a lease of the retention (etcd deletes it then, no sweep needed);
// an unfinished one has none, and lives until its job ends. Records
// finished close together share one lease.
func TestFinishedRecordsExpireByLease(t *testing.T) {
	s := NewJobStore(shared.client, testPrefix(t), 0).WithRetention(time.Hour)
	running := jobs.Job{ID: uuid.NewString(), State: jobs.Running, Backend: "http://b", PromptID: "p"}
	done1 := jobs.Job{ID: uuid.NewString(), State: jobs.Succeeded}
	done2 := jobs.Job{ID: uuid.NewString(), State: jobs.Failed, Error: "x"}
	for _, j := range []jobs.Job{running, done1, done2} {
		if err := s.Save(j); err != nil {
			t.Fatal(err)
		}
	}
	lease := func(id string) clientv3.LeaseID {
		resp, err := shared.client.Get(context.Background(), s.Key(id))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v", id, err)
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	if l := lease(running.ID); l != 0 {
		t.Errorf("running job's record under lease %x", l)
	}
	l1, l2 := lease(done1.ID), lease(done2.ID)
	if l1 == 0 || l1 != l2 {
		t.Fatalf("finished records under leases %x and %x; want one shared lease", l1, l2)
	}
	ttl, err := shared.client.TimeToLive(context.Background(), l1)
	if err != nil {
		t.Fatal(err)
	}
	if max := int64((time.Hour + time.Hour/16).Seconds()); ttl.GrantedTTL != max || ttl.TTL < int64(time.Hour.Seconds()) {
		t.Errorf("lease granted for %ds (%ds left); want %ds", ttl.GrantedTTL, ttl.TTL, max)
	}
}
