package dispatch

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
)

// TestPositionIsTheServingOrder: over random queues of tenants, classes and
// costs, with shares that make the lower classes' turns come often, jobs
// put back in front (as Requeue does) and jobs leaving, the places the
// position function gives are 1..n, the waiter at place 1 is the one the
// next freed slot goes to, and a hand-out moves every other waiter up by
// exactly one place: the places are the serving order.
func TestPositionIsTheServingOrder(t *testing.T) {
	ctx := context.Background()
	for seed := range uint64(150) {
		rng := rand.New(rand.NewPCG(seed, 9))
		d, err := New(Config{
			Backends:       []BackendConfig{{Name: "gpu0"}},
			TenantInFlight: 1000,
			MaxQueue:       1000,
			LowShare:       2 + rng.IntN(5),
			MediumShare:    2 + rng.IntN(4),
			After:          func(time.Duration, func()) func() bool { return func() bool { return true } },
		})
		if err != nil {
			t.Fatal(err)
		}
		held, err := d.Acquire(ctx, Request{Tenant: "holder"})
		if err != nil {
			t.Fatal(err)
		}
		var waiters []*waiter
		add := func() {
			name := string(rune('a' + rng.IntN(5)))
			cls := tenant.Class(rng.IntN(classes))
			cost := 1 + rng.IntN(rng.IntN(4)+1)
			d.mu.Lock()
			f := &d.tenant(name).flows[cls]
			var w *waiter
			if rng.IntN(8) == 0 { // put back in front, as Requeue does
				w = &waiter{flow: f, cost: cost, ch: make(chan *Lease, 1), requeued: true}
				d.enqueueFront(w)
			} else {
				w = d.queue(f, cost)
			}
			d.mu.Unlock()
			waiters = append(waiters, w)
		}
		places := func() map[*waiter]int {
			pos := make(map[*waiter]int, len(waiters))
			seen := make([]bool, len(waiters)+1)
			for _, w := range waiters {
				p := d.position(w)
				if p < 1 || p > len(waiters) || seen[p] {
					t.Fatalf("seed %d: place %d among %d waiters (or given twice)", seed, p, len(waiters))
				}
				seen[p] = true
				pos[w] = p
			}
			return pos
		}
		for step := range 300 {
			switch op := rng.IntN(10); {
			case op < 5 || len(waiters) == 0:
				add()
			case op < 6:
				i := rng.IntN(len(waiters))
				if err := d.abandon(waiters[i], context.Canceled); err != context.Canceled {
					t.Fatal(err)
				}
				waiters = append(waiters[:i], waiters[i+1:]...)
			default:
				before := places()
				held.Release(0) // the slot goes to the next waiter
				var next *waiter
				for i, w := range waiters {
					if !w.queued {
						next = w
						waiters = append(waiters[:i], waiters[i+1:]...)
						break
					}
				}
				if next == nil {
					t.Fatalf("seed %d step %d: the freed slot went to no waiter", seed, step)
				}
				if before[next] != 1 {
					t.Fatalf("seed %d step %d: the slot went to the waiter at place %d (class %s, tenant %s), not to the one at place 1",
						seed, step, before[next], next.flow.class, next.flow.t.name)
				}
				for w, p := range places() {
					if p != before[w]-1 {
						t.Fatalf("seed %d step %d: a hand-out moved a waiter from place %d to %d", seed, step, before[w], p)
					}
				}
				held = <-next.ch
			}
		}
		for len(waiters) > 0 {
			held.Release(0)
			for i, w := range waiters {
				if !w.queued {
					waiters = append(waiters[:i], waiters[i+1:]...)
					held = <-w.ch
					break
				}
			}
		}
		held.Release(0)
		if s := d.Stats(); s.Queued != 0 || len(s.Tenants) != 0 {
			t.Fatalf("seed %d: left behind %+v", seed, s)
		}
	}
}

// TestRequeuedJobIsNotDisplaced: a full queue whose only lower-class job
// was put back by Requeue refuses a high job rather than drop it.
func TestRequeuedJobIsNotDisplaced(t *testing.T) {
	d, err := New(Config{Backends: []BackendConfig{{Name: "gpu0"}}, MaxQueue: 1,
		After: func(time.Duration, func()) func() bool { return func() bool { return true } }})
	if err != nil {
		t.Fatal(err)
	}
	held, _ := d.Acquire(context.Background(), Request{Tenant: "holder"})
	d.mu.Lock()
	w := &waiter{flow: &d.tenant("a").flows[tenant.Low], cost: 1, ch: make(chan *Lease, 1), requeued: true}
	d.enqueueFront(w)
	d.mu.Unlock()
	high := Request{Tenant: "v", Class: tenant.High}
	if r := d.Check(high); r == nil || r.Reason != ReasonQueueFull {
		t.Fatalf("Check = %v, want queue_full", r)
	}
	if _, err := d.Acquire(context.Background(), high); err == nil {
		t.Fatal("a high job displaced a re-queued one")
	}
	if !w.queued {
		t.Fatal("the re-queued job left the queue")
	}
	held.Release(0)
	(<-w.ch).Release(0)
}

// TestKeptJobIsNotDisplaced: an async job already answered 202 (Keep) keeps
// its place in a full queue when a job of a higher class comes; the higher
// job is refused instead, as the 202 promised the job would run.
func TestKeptJobIsNotDisplaced(t *testing.T) {
	d, err := New(Config{Backends: []BackendConfig{{Name: "gpu0"}}, MaxQueue: 1,
		After: func(time.Duration, func()) func() bool { return func() bool { return true } }})
	if err != nil {
		t.Fatal(err)
	}
	held, _ := d.Acquire(context.Background(), Request{Tenant: "holder"})
	kept := make(chan error, 1)
	queued := make(chan struct{})
	go func() {
		l, err := d.Acquire(context.Background(), Request{Tenant: "anon", Class: tenant.Low, Keep: true,
			OnQueued: func(func() int) { close(queued) }})
		if err == nil {
			l.Release(0)
		}
		kept <- err
	}()
	<-queued
	high := Request{Tenant: "v", Class: tenant.High}
	if r := d.Check(high); r == nil || r.Reason != ReasonQueueFull {
		t.Fatalf("Check = %v, want queue_full", r)
	}
	if _, err := d.Acquire(context.Background(), high); err == nil {
		t.Fatal("a high job displaced a kept one")
	}
	held.Release(0)
	if err := <-kept; err != nil {
		t.Fatalf("the kept job: %v", err)
	}
}
