package dispatch

import (
	"math"
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
)

// The wait queue: one ring per priority class, deficit round robin over
// flows (a tenant's jobs of one class), a FIFO of waiters each.
//
// A class's flows with waiters form a ring; ring.cur is the flow whose turn
// it is, and it has had its quantum for this turn. A flow's turn lasts
// while its deficit covers the cost of its first waiter; then the turn
// passes to the next flow, which gains a quantum. A flow joins the ring at
// the end of the current round, and leaves it, its deficit cleared, when its
// FIFO empties. Slots are handed out one at a time, so the DRR state carries
// over between hand-outs.
//
// Which class a freed slot goes to is nextClass's rule (see Config.LowShare).

// quantum is what a flow's deficit gains per turn: one cost unit, so
// tenants with cost-1 jobs alternate one job each.
const quantum = 1

// classes is the number of priority classes, tenant.Low to tenant.High.
const classes = int(tenant.High) + 1

// tenantState is one tenant's jobs in flight, over all classes.
type tenantState struct {
	name    string
	running int
	waiting int
	// class and tier are those of the tenant's latest request (Stats).
	class tenant.Class
	tier  string
	// flows holds the tenant's waiters, one flow per class.
	flows [classes]flow
}

// flow is a tenant's waiters of one class, in the class's DRR ring.
type flow struct {
	t     *tenantState
	class tenant.Class
	// The waiters, oldest first.
	head, tail *waiter
	deficit    int
	// Links in the class's ring, while the flow has waiters.
	prev, next *flow
}

// ring is one class's DRR ring.
type ring struct {
	cur *flow // the flow whose turn it is; nil when none waits
}

type waiter struct {
	flow     *flow
	cost     int
	queuedAt time.Time
	// Links in the flow's FIFO.
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
	// kept: promised to its client (Request.Keep); never displaced.
	kept bool
}

func (d *Dispatcher) enqueue(w *waiter) {
	f := w.flow
	w.queued = true
	if f.tail == nil {
		f.head, f.tail = w, w
		d.rings[f.class].join(f)
	} else {
		w.prev = f.tail
		f.tail.next = w
		f.tail = w
	}
	d.counted(w, +1)
}

// enqueueFront puts w first in its flow's FIFO. A flow that had no waiter
// joins its ring in front of the current flow and takes the turn, with a
// deficit of exactly w's cost; the current flow's turn resumes after it as
// it was.
func (d *Dispatcher) enqueueFront(w *waiter) {
	f := w.flow
	w.queued = true
	if f.head == nil {
		f.head, f.tail = w, w
		r := &d.rings[f.class]
		if r.cur == nil {
			r.join(f)
		} else {
			last := r.cur.prev
			f.prev, f.next = last, r.cur
			last.next = f
			r.cur.prev = f
			// The turn comes back to the current flow with a quantum
			// (leave or pick add one): take it now, so that its deficit
			// is as it was.
			r.cur.deficit -= quantum
			r.cur = f
		}
		f.deficit = max(w.cost, quantum)
	} else {
		w.next = f.head
		f.head.prev = w
		f.head = w
	}
	d.counted(w, +1)
}

// counted adds n to the waiting counts w is part of.
func (d *Dispatcher) counted(w *waiter, n int) {
	c := w.flow.class
	w.flow.t.waiting += n
	d.queued[c] += n
	d.waiting += n
	if d.queued[c] == 0 {
		d.passed[c] = 0 // a class is owed its share while it waits
	}
}

// unqueue takes w out of its flow's FIFO and stops its timer.
func (d *Dispatcher) unqueue(w *waiter) {
	f := w.flow
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		f.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		f.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	d.counted(w, -1)
	if f.head == nil {
		d.rings[f.class].leave(f)
	}
	if w.stop != nil {
		w.stop()
	}
}

// join adds f to the ring at the end of the current round.
func (r *ring) join(f *flow) {
	if r.cur == nil {
		f.prev, f.next = f, f
		r.cur = f
		f.deficit = quantum
		return
	}
	last := r.cur.prev
	f.prev, f.next = last, r.cur
	last.next = f
	r.cur.prev = f
	f.deficit = 0
}

// leave takes f out of the ring; if it was f's turn, the next one's begins.
func (r *ring) leave(f *flow) {
	f.deficit = 0
	if f.next == f {
		r.cur = nil
	} else {
		f.prev.next = f.next
		f.next.prev = f.prev
		if r.cur == f {
			r.cur = f.next
			r.cur.deficit += quantum
		}
	}
	f.prev, f.next = nil, nil
}

// pick returns the waiter whose turn it is, moving r.cur as DRR does. The
// ring must not be empty.
func (r *ring) pick() *waiter {
	for {
		start := r.cur
		for f := start; ; {
			if f.deficit >= f.head.cost {
				return f.head
			}
			f = f.next
			f.deficit += quantum
			r.cur = f
			if f == start {
				break
			}
		}
		// A whole round and no first waiter's cost was covered: skip at
		// once the further rounds in which none would be, rather than
		// walking them one quantum at a time.
		need := math.MaxInt
		f := start
		for {
			need = min(need, f.head.cost-f.deficit)
			if f = f.next; f == start {
				break
			}
		}
		if skip := need - quantum; skip > 0 {
			for {
				f.deficit += skip
				if f = f.next; f == start {
					break
				}
			}
		}
	}
}

// ahead counts the waiters of r that pick would hand slots to before w,
// were no waiter to come or go: DRR serves a flow's waiters in rounds,
// the round of a waiter being the number of quanta its flow still needs
// to cover the costs up to and including it, and within a round the flows
// in ring order from r.cur. It takes O(waiters of r).
func (r *ring) ahead(w *waiter) int {
	// round is the round in which the waiters of f up to a total cost of
	// sum are handed out: the current flow has had its quantum for round
	// 0, the others gain theirs at their turn.
	round := func(f *flow, sum int) int {
		need := sum - f.deficit
		if f != r.cur {
			need -= quantum
		}
		if need <= 0 {
			return 0
		}
		return (need + quantum - 1) / quantum
	}
	n, sum := 0, 0
	for o := w.flow.head; o != w; o = o.next {
		n++
		sum += o.cost
	}
	wRound := round(w.flow, sum+w.cost)
	before := true // the flows before w's in ring order from r.cur
	for f := r.cur; ; {
		if f == w.flow {
			before = false
		} else {
			sum := 0
			for o := f.head; o != nil; o = o.next {
				sum += o.cost
				if rd := round(f, sum); rd > wRound || rd == wRound && !before {
					break
				}
				n++
			}
		}
		if f = f.next; f == r.cur {
			return n
		}
	}
}

// nextClass is the class the next freed slot goes to, given the waiters
// per class and the passed counters (the hand-outs in a row that went to a
// higher class while the class had waiters): the lowest class c below High
// with waiters whose passed count has reached share[c]-1, if any; else the
// highest class with waiters; -1 when none waits.
func nextClass(share *[classes]int, waiting, passed *[classes]int) int {
	for c := range classes - 1 {
		if waiting[c] > 0 && passed[c] >= share[c]-1 {
			return c
		}
	}
	for c := classes - 1; c >= 0; c-- {
		if waiting[c] > 0 {
			return c
		}
	}
	return -1
}

// served updates the passed counters for a hand-out to class g: a lower
// class with waiters was passed once more; g's own count starts again.
func served(g int, waiting, passed *[classes]int) {
	for c := range g {
		if waiting[c] > 0 {
			passed[c]++
		}
	}
	passed[g] = 0
}
