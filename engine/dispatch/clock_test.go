package dispatch_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
)

// TestMaxWaitFollowsTheClock: with no Config.After, MaxWait passes on
// Config.Clock: a job waiting on a fake clock is refused when the test moves
// the time past MaxWait (before, it waited MaxWait of real time), and a job
// handed a slot in time is not.
func TestMaxWaitFollowsTheClock(t *testing.T) {
	clk := newClock()
	d, err := dispatch.New(dispatch.Config{Backends: backends(1), TenantInFlight: 4, MaxWait: time.Hour, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	held, err := d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		l, err := d.Acquire(ctx, dispatch.Request{Tenant: "b", Cost: 1})
		if err == nil {
			l.Release(0)
		}
		served <- err
	}()
	waitQueued(d, 1)
	held.Release(0) // the waiter gets the slot; its timer is stopped
	if err := <-served; err != nil {
		t.Fatalf("the job handed a slot: %v", err)
	}
	if n := clk.Timers(); n != 0 {
		t.Fatalf("%d timers left on the clock after the grant", n)
	}

	held, _ = d.Acquire(ctx, dispatch.Request{Tenant: "a", Cost: 1})
	defer held.Release(0)
	refused := make(chan error, 1)
	go func() {
		_, err := d.Acquire(ctx, dispatch.Request{Tenant: "b", Cost: 1})
		refused <- err
	}()
	waitQueued(d, 1)
	if clk.Timers() != 1 { // set under the lock, as the waiter queued
		t.Fatalf("%d timers on the clock, want the waiter's MaxWait", clk.Timers())
	}
	clk.Advance(time.Hour)
	var r *dispatch.Refusal
	if err := <-refused; !errors.As(err, &r) || r.Reason != dispatch.ReasonWaitTimeout {
		t.Fatalf("after MaxWait on the clock: %v, want a wait_timeout refusal", err)
	}
}
