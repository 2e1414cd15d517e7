package dispatch_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
)

func TestQueuePosition(t *testing.T) {
	d, err := dispatch.New(dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "gpu-1"}}, MaxWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	held, err := d.Acquire(context.Background(), dispatch.Request{Tenant: "holder", Cost: 1})
	if err != nil {
		t.Fatal(err)
	}
	leases := make(chan *dispatch.Lease, 3)
	var pos []func() int
	for i := range 3 {
		queued := make(chan func() int, 1)
		go func() {
			l, err := d.Acquire(context.Background(), dispatch.Request{Tenant: fmt.Sprintf("tenant-%d", i), Cost: 1, OnQueued: func(p func() int) { queued <- p }})
			if err != nil {
				t.Error(err)
			}
			leases <- l
		}()
		pos = append(pos, <-queued) // queued before the next one starts
	}
	for i, p := range pos {
		if got := p(); got != i+1 {
			t.Fatalf("waiter %d at place %d, want %d", i, got, i+1)
		}
	}
	held.Release(time.Second) // the first waiter gets the slot
	first := <-leases
	if pos[0]() != 0 || pos[1]() != 1 || pos[2]() != 2 {
		t.Fatalf("after one hand-out: places %d %d %d, want 0 1 2", pos[0](), pos[1](), pos[2]())
	}
	first.Release(time.Second)
	(<-leases).Release(time.Second)
	(<-leases).Release(time.Second)
}

func TestCheckAnswersAsAcquireWould(t *testing.T) {
	d, err := dispatch.New(dispatch.Config{Backends: []dispatch.BackendConfig{{Name: "gpu-1"}}, MaxQueue: 1, TenantInFlight: 1, MaxWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if r := d.Check(dispatch.Request{Tenant: "a"}); r != nil {
		t.Fatalf("an idle farm refuses: %v", r)
	}
	held, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "a", Cost: 1})
	if r := d.Check(dispatch.Request{Tenant: "a"}); r == nil || r.Reason != dispatch.ReasonTenantBusy {
		t.Fatalf("tenant at its cap: %v", r)
	}
	if r := d.Check(dispatch.Request{Tenant: "b"}); r != nil {
		t.Fatalf("a free place in the queue refused: %v", r)
	}
	queued := make(chan func() int, 1)
	got := make(chan *dispatch.Lease, 1)
	go func() {
		l, _ := d.Acquire(context.Background(), dispatch.Request{Tenant: "b", Cost: 1, OnQueued: func(p func() int) { queued <- p }})
		got <- l
	}()
	<-queued
	if r := d.Check(dispatch.Request{Tenant: "c"}); r == nil || r.Reason != dispatch.ReasonQueueFull {
		t.Fatalf("queue full: %v", r)
	}
	d.SetHealthy("gpu-1", false)
	if r := d.Check(dispatch.Request{Tenant: "c"}); r == nil || r.Reason != dispatch.ReasonNoBackend {
		t.Fatalf("no healthy backend: %v", r)
	}
	// The job that waited was refused when the last backend went.
	if l := <-got; l != nil {
		t.Fatalf("a waiting job got a slot on %s with no backend healthy", l.Backend())
	}
	d.SetHealthy("gpu-1", true)
	held.Release(time.Second)
}
