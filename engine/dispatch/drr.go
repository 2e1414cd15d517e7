package dispatch

import (
	"math"
	"time"
)

// The wait queue: deficit round robin over tenants, a FIFO of waiters each.
//
// Tenants with waiters form a ring; d.cur is the tenant whose turn it is,
// and it has had its quantum for this turn. A tenant's turn lasts while its
// deficit covers the cost of its first waiter; then the turn passes to the
// next tenant, which gains a quantum. A tenant joins the ring at the end of
// the current round, and leaves it, its deficit cleared, when its FIFO
// empties. Slots are handed out one at a time, so the DRR state carries
// over between hand-outs.

// quantum is what a tenant's deficit gains per turn: one cost unit, so
// tenants with cost-1 jobs alternate one job each.
const quantum = 1

type tenant struct {
	name    string
	running int
	waiting int
	// The tenant's waiters, oldest first.
	head, tail *waiter
	deficit    int
	// Links in the ring, while waiting > 0.
	prev, next *tenant
}

type waiter struct {
	tenant   *tenant
	cost     int
	queuedAt time.Time
	seq      uint64 // arrival order
	// Links in the tenant's FIFO.
	prev, next *waiter
	// queued is true from enqueue to unqueue; guarded by d.mu.
	queued bool
	// ch gets the waiter's lease, or nil with err set when it is refused.
	// It has room for the one value ever sent, so senders never block.
	ch   chan *Lease
	err  error
	stop func() bool // cancels the MaxWait timer
	// requeued: put back by Requeue; it outlives the last backend going.
	requeued bool
}

func (d *Dispatcher) enqueue(w *waiter) {
	t := w.tenant
	w.queued = true
	if t.tail == nil {
		t.head, t.tail = w, w
		d.join(t)
	} else {
		w.prev = t.tail
		t.tail.next = w
		t.tail = w
	}
	t.waiting++
	d.waiting++
}

// enqueueFront puts w first in its tenant's FIFO. A tenant that had no
// waiter joins the ring in front of the current tenant and takes the turn,
// with a deficit of exactly w's cost; the current tenant's turn resumes
// after it as it was.
func (d *Dispatcher) enqueueFront(w *waiter) {
	t := w.tenant
	w.queued = true
	if t.head == nil {
		t.head, t.tail = w, w
		if d.cur == nil {
			d.join(t)
		} else {
			last := d.cur.prev
			t.prev, t.next = last, d.cur
			last.next = t
			d.cur.prev = t
			// The turn comes back to the current tenant with a quantum
			// (leave or pick add one): take it now, so that its deficit
			// is as it was.
			d.cur.deficit -= quantum
			d.cur = t
		}
		t.deficit = max(w.cost, quantum)
	} else {
		w.next = t.head
		t.head.prev = w
		t.head = w
	}
	t.waiting++
	d.waiting++
}

// unqueue takes w out of its tenant's FIFO and stops its timer.
func (d *Dispatcher) unqueue(w *waiter) {
	t := w.tenant
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		t.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		t.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	t.waiting--
	d.waiting--
	if t.head == nil {
		d.leave(t)
	}
	if w.stop != nil {
		w.stop()
	}
}

// join adds t to the ring at the end of the current round.
func (d *Dispatcher) join(t *tenant) {
	if d.cur == nil {
		t.prev, t.next = t, t
		d.cur = t
		t.deficit = quantum
		return
	}
	last := d.cur.prev
	t.prev, t.next = last, d.cur
	last.next = t
	d.cur.prev = t
	t.deficit = 0
}

// leave takes t out of the ring; if it was t's turn, the next one's begins.
func (d *Dispatcher) leave(t *tenant) {
	t.deficit = 0
	if t.next == t {
		d.cur = nil
	} else {
		t.prev.next = t.next
		t.next.prev = t.prev
		if d.cur == t {
			d.cur = t.next
			d.cur.deficit += quantum
		}
	}
	t.prev, t.next = nil, nil
}

// pick returns the waiter whose turn it is, moving d.cur as DRR does. The
// ring must not be empty.
func (d *Dispatcher) pick() *waiter {
	for {
		start := d.cur
		for t := start; ; {
			if t.deficit >= t.head.cost {
				return t.head
			}
			t = t.next
			t.deficit += quantum
			d.cur = t
			if t == start {
				break
			}
		}
		// A whole round and no first waiter's cost was covered: skip at
		// once the further rounds in which none would be, rather than
		// walking them one quantum at a time.
		need := math.MaxInt
		t := start
		for {
			need = min(need, t.head.cost-t.deficit)
			if t = t.next; t == start {
				break
			}
		}
		if skip := need - quantum; skip > 0 {
			for {
				t.deficit += skip
				if t = t.next; t == start {
					break
				}
			}
		}
	}
}
