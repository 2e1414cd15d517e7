package dispatch

import (
	"context"
	"errors"
)

// ErrReleased is the error of Requeue for a lease already released.
var ErrReleased = errors.New("dispatch: lease already released")

// Requeue gives back l's slot and puts its job back in the queue at its
// place: in its priority class, first among its tenant's waiting jobs of
// that class, its tenant taking the next turn in the class when it had no
// other job waiting there. It is for a job
// taken back from a backend before it started there (its backend was taken
// out), so that it does not go to the back of the queue.
//
// The job is not counted again against MaxQueue or TenantInFlight, and it
// waits even while no backend is healthy (a new job is refused then): up
// to MaxWait from now, for any backend that is healthy and not under GPU
// pressure. It returns as Acquire does: a new Lease, a *Refusal
// (ReasonWaitTimeout), or ctx.Err() when ctx ends first.
func (d *Dispatcher) Requeue(ctx context.Context, l *Lease, cost int, onQueued func(position func() int)) (*Lease, error) {
	d.mu.Lock()
	if l.released {
		d.mu.Unlock()
		return nil, ErrReleased
	}
	l.released = true
	l.b.inUse--
	t := l.t
	t.running--
	d.running[l.class]--
	if err := ctx.Err(); err != nil {
		d.forgetIdle(t)
		d.dispatch()
		d.mu.Unlock()
		return nil, err
	}
	w := &waiter{flow: &t.flows[l.class], cost: max(cost, 1), queuedAt: d.clock.Now(), ch: make(chan *Lease, 1), requeued: true}
	d.enqueueFront(w)
	w.stop = d.after(d.maxWait, func() { d.expire(w) })
	d.dispatch()
	queued := w.queued
	d.mu.Unlock()
	if onQueued != nil && queued {
		onQueued(func() int { return d.position(w) })
	}
	return d.wait(ctx, w)
}
