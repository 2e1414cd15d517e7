package dispatch_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/tenant"
)

// TestAdoptHoldsTheSlot: jobs found running on a one-slot backend after a
// restart are adopted there, two of them past the backend's one slot; a
// new job waits (place 1) until both have ended, and the adopted jobs
// count for their tenant's cap.
func TestAdoptHoldsTheSlot(t *testing.T) {
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "gpu-1"}}, TenantInFlight: 2})
	a1, err := d.Adopt("gpu-1", dispatch.Request{Tenant: "old"})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := d.Adopt("gpu-1", dispatch.Request{Tenant: "old"})
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.Backends[0].InUse != 2 || st.Backends[0].Started != 0 {
		t.Fatalf("after two adoptions: %+v", st.Backends[0])
	}
	if _, err := d.Acquire(context.Background(), dispatch.Request{Tenant: "old", Cost: 1}); err == nil {
		t.Fatal("the adopted jobs do not count for their tenant's cap")
	} else {
		refusal(t, err, dispatch.ReasonTenantBusy)
	}

	queued := make(chan func() int, 1)
	got := make(chan *dispatch.Lease, 1)
	go func() {
		l, err := d.Acquire(context.Background(), dispatch.Request{Tenant: "new", Cost: 1, OnQueued: func(p func() int) { queued <- p }})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	pos := <-queued
	if p := pos(); p != 1 {
		t.Fatalf("the new job waits at place %d, want 1", p)
	}
	a1.Release(0)
	if p := pos(); p != 1 { // one adopted job still fills the one slot
		t.Fatalf("after one adopted job ended, the new job is at place %d, want 1", p)
	}
	a2.Release(time.Second)
	l := <-got
	if l.Backend() != "gpu-1" || pos() != 0 {
		t.Fatalf("the new job got %s, place %d", l.Backend(), pos())
	}
	l.Release(time.Second)
	if st := d.Stats(); st.Backends[0].InUse != 0 || len(st.Tenants) != 0 {
		t.Fatalf("at the end: %+v", st)
	}
}

func TestAdoptUnknownBackend(t *testing.T) {
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "gpu-1"}}})
	if _, err := d.Adopt("gpu-9", dispatch.Request{Tenant: "old"}); !errors.Is(err, dispatch.ErrUnknownBackend) {
		t.Fatalf("Adopt on an unknown backend: %v", err)
	}
	if st := d.Stats(); st.Backends[0].InUse != 0 || len(st.Tenants) != 0 {
		t.Fatalf("a failed Adopt left %+v", st)
	}
}

// TestAdoptShowsTierAndClass: an adopted job counts in its class and shows
// its tenant's tier and class, and its class's running count falls back
// when it ends.
func TestAdoptShowsTierAndClass(t *testing.T) {
	d, _, _ := newDispatcher(t, dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "gpu-1"}}})
	l, err := d.Adopt("gpu-1", dispatch.Request{Tenant: "acme", Tier: "vip", Class: tenant.High})
	if err != nil {
		t.Fatal(err)
	}
	st := d.Stats()
	if len(st.Tenants) != 1 || st.Tenants[0].Tier != "vip" || st.Tenants[0].Class != tenant.High || st.Tenants[0].Running != 1 ||
		st.Classes[tenant.High].Running != 1 || st.Classes[tenant.Low].Running != 0 || l.Class() != tenant.High {
		t.Fatalf("after the adoption: %+v", st)
	}
	l.Release(0)
	if st := d.Stats(); st.Classes[tenant.High].Running != 0 || len(st.Tenants) != 0 {
		t.Fatalf("after the release: %+v", st)
	}
}
