package dispatch

import (
	"context"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

func newInternal(t *testing.T, slots int) *Dispatcher {
	t.Helper()
	d, err := New(Config{
		Backends:       []BackendConfig{{Name: "gpu0", Slots: slots}},
		TenantInFlight: 1000,
		MaxQueue:       1000,
		After:          func(time.Duration, func()) func() bool { return func() bool { return true } },
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// spinPick is DRR walked one quantum at a time: what pick must match.
func spinPick(r *ring) *waiter {
	for {
		if f := r.cur; f.deficit >= f.head.cost {
			return f.head
		}
		r.cur = r.cur.next
		r.cur.deficit += quantum
	}
}

// TestPickMatchesSpinning: pick's skipping of empty rounds hands out in
// exactly the order plain DRR does, over random arrivals and costs.
func TestPickMatchesSpinning(t *testing.T) {
	for seed := range uint64(200) {
		fast, slow := newInternal(t, 1), newInternal(t, 1)
		rng := rand.New(rand.NewPCG(seed, 7))
		var got, want []string
		for range 300 {
			if rng.IntN(3) > 0 || fast.waiting == 0 {
				name := string(rune('a' + rng.IntN(6)))
				cost := 1 + rng.IntN(rng.IntN(9)+1)
				for _, d := range []*Dispatcher{fast, slow} {
					d.enqueue(&waiter{flow: &d.tenant(name).flows[0], cost: cost})
				}
				continue
			}
			for _, s := range []struct {
				d    *Dispatcher
				pick func(*ring) *waiter
				out  *[]string
			}{{fast, (*ring).pick, &got}, {slow, spinPick, &want}} {
				w := s.pick(&s.d.rings[0])
				w.flow.deficit -= w.cost
				s.d.unqueue(w)
				*s.out = append(*s.out, w.flow.t.name)
			}
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("seed %d: hand-out %d went to %s, plain DRR gives %s\ngot  %v\nwant %v", seed, i, got[i], want[i], got, want)
			}
		}
	}
}

// TestAbandonPassesHandedLeaseOn: a caller that gives up just after a
// lease was handed to it passes the lease to the next waiter.
func TestAbandonPassesHandedLeaseOn(t *testing.T) {
	d := newInternal(t, 1)
	ctx := context.Background()
	held, err := d.Acquire(ctx, Request{Tenant: "a", Cost: 1})
	if err != nil {
		t.Fatal(err)
	}
	// b is queued by hand, so the test decides when its caller looks.
	d.mu.Lock()
	b := d.queue(&d.tenant("b").flows[0], 1)
	d.mu.Unlock()
	got := make(chan *Lease)
	go func() {
		l, err := d.Acquire(ctx, Request{Tenant: "c", Cost: 1})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	for d.Stats().Queued != 2 {
		runtime.Gosched()
	}
	held.Release(time.Second) // the slot goes to b
	if b.queued || len(b.ch) != 1 {
		t.Fatal("b was not handed the slot")
	}
	if err := d.abandon(b, context.Canceled); err != context.Canceled {
		t.Fatalf("abandon = %v, want context.Canceled", err)
	}
	l := <-got
	if l == nil || l.Backend() != "gpu0" {
		t.Fatalf("c got %v, want the slot b gave up", l)
	}
	s := d.Stats()
	if s.Queued != 0 || len(s.Tenants) != 1 || s.Tenants[0] != (TenantStats{Tenant: "c", Running: 1}) {
		t.Fatalf("stats %+v, want only c running", s)
	}
	if s.AvgJobTime != time.Second {
		t.Errorf("AvgJobTime = %v: b's unused lease was measured", s.AvgJobTime)
	}
	l.Release(time.Second)
}

// TestAbandonAfterTimeout: a caller that gives up as its MaxWait passes
// gets its context's error, and nothing is left behind.
func TestAbandonAfterTimeout(t *testing.T) {
	d := newInternal(t, 1)
	held, _ := d.Acquire(context.Background(), Request{Tenant: "a", Cost: 1})
	d.mu.Lock()
	w := d.queue(&d.tenant("b").flows[0], 1)
	d.mu.Unlock()
	d.expire(w)
	d.expire(w) // a second firing finds nothing
	if err := d.abandon(w, context.DeadlineExceeded); err != context.DeadlineExceeded {
		t.Fatalf("abandon = %v", err)
	}
	held.Release(time.Second)
	if s := d.Stats(); s.Queued != 0 || len(s.Tenants) != 0 || s.Backends[0].InUse != 0 {
		t.Fatalf("left behind: %+v", s)
	}
}
