package dispatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

// Defaults for the zero fields of Config and BackendConfig.
const (
	DefaultSlots          = 1
	DefaultMaxQueue       = 64
	DefaultMaxWait        = 30 * time.Second
	DefaultTenantInFlight = 2
	// DefaultJobTime is the job time RetryAfter estimates assume until a
	// Release has measured one: about one DDColor job.
	DefaultJobTime = 3 * time.Second
)

// BackendConfig describes one backend.
type BackendConfig struct {
	Name string
	// Slots is the number of jobs the backend runs at once; 0 means
	// DefaultSlots.
	Slots int
}

// Config configures a Dispatcher. Zero fields take the defaults above.
type Config struct {
	Backends []BackendConfig
	// MaxQueue bounds the jobs waiting for a slot, over all tenants.
	MaxQueue int
	// MaxWait bounds how long a job waits for a slot.
	MaxWait time.Duration
	// TenantInFlight bounds the jobs one tenant has running or waiting.
	TenantInFlight int
	// Clock times the waits; nil means the system clock.
	Clock clock.Clock
	// After schedules f to run once after d and returns a function that
	// cancels it, reporting whether it did, as time.AfterFunc(d, f).Stop
	// does; nil means time.AfterFunc. It is called with the Dispatcher's
	// lock held, so f must run later, on a goroutine of its own.
	After func(d time.Duration, f func()) (stop func() bool)
}

// Dispatcher hands out the backends' slots. Make one with New.
type Dispatcher struct {
	mu        sync.Mutex
	clock     clock.Clock
	after     func(time.Duration, func()) func() bool
	maxQueue  int
	maxWait   time.Duration
	tenantCap int

	backends     []*backend // sorted by name
	byName       map[string]*backend
	totalSlots   int
	healthySlots int

	tenants map[string]*tenant // tenants with jobs running or waiting
	cur     *tenant            // the DRR ring of tenants with waiters; see drr.go
	waiting int
	avgJob  time.Duration // 0 until measured
	seq     uint64        // numbers waiters in the order they queued
}

type backend struct {
	name    string
	slots   int
	inUse   int
	healthy bool
	// pressure: its GPU is under memory pressure; it gets no new job.
	pressure bool
	started  uint64
}

// New validates cfg and returns a Dispatcher with every backend healthy
// and every slot free.
func New(cfg Config) (*Dispatcher, error) {
	var errs []error
	if len(cfg.Backends) == 0 {
		errs = append(errs, errors.New("dispatch: backends: need at least one"))
	}
	if cfg.MaxQueue < 0 {
		errs = append(errs, fmt.Errorf("dispatch: max_queue: must be >= 0, got %d", cfg.MaxQueue))
	}
	if cfg.MaxWait < 0 {
		errs = append(errs, fmt.Errorf("dispatch: max_wait: must be >= 0, got %v", cfg.MaxWait))
	}
	if cfg.TenantInFlight < 0 {
		errs = append(errs, fmt.Errorf("dispatch: tenant_in_flight: must be >= 0, got %d", cfg.TenantInFlight))
	}
	d := &Dispatcher{
		clock:     clock.Or(cfg.Clock),
		after:     cfg.After,
		maxQueue:  cmp.Or(cfg.MaxQueue, DefaultMaxQueue),
		maxWait:   cmp.Or(cfg.MaxWait, DefaultMaxWait),
		tenantCap: cmp.Or(cfg.TenantInFlight, DefaultTenantInFlight),
		byName:    make(map[string]*backend, len(cfg.Backends)),
		tenants:   make(map[string]*tenant),
	}
	if d.after == nil {
		d.after = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	first := make(map[string]int, len(cfg.Backends))
	for i, bc := range cfg.Backends {
		switch j, dup := first[bc.Name]; {
		case bc.Name == "":
			errs = append(errs, fmt.Errorf("dispatch: backends[%d].name: must not be empty", i))
		case dup:
			errs = append(errs, fmt.Errorf("dispatch: backends[%d].name: %q is already backends[%d]", i, bc.Name, j))
		}
		first[bc.Name] = i
		if bc.Slots < 0 {
			errs = append(errs, fmt.Errorf("dispatch: backends[%d].slots: must be >= 1, got %d", i, bc.Slots))
		}
		b := &backend{name: bc.Name, slots: cmp.Or(bc.Slots, DefaultSlots), healthy: true}
		d.backends = append(d.backends, b)
		d.byName[b.name] = b
		d.totalSlots += b.slots
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	d.healthySlots = d.totalSlots
	slices.SortFunc(d.backends, func(a, b *backend) int { return cmp.Compare(a.name, b.name) })
	return d, nil
}

// Acquire takes a slot for one job of tenant, waiting for one if none is
// free. A cost below 1 counts as 1.
//
// It returns a *Refusal when the queue is full, the tenant has
// TenantInFlight jobs running or waiting, no backend is healthy, or no slot
// came within MaxWait; and ctx.Err() when ctx ends first, the job's place in
// the queue removed. Otherwise the caller holds the Lease until it calls
// Release.
func (d *Dispatcher) Acquire(ctx context.Context, tenant string, cost int) (*Lease, error) {
	return d.AcquireWith(ctx, tenant, cost, nil)
}

// AcquireWith is Acquire that, when the job has to wait, calls onQueued
// (before waiting) with a function telling its place in the queue: 1 for
// the next in arrival order among the jobs waiting, 0 once it no longer
// waits. Deficit round robin may serve a later job of another tenant first,
// so the place is an estimate, and it only decreases.
func (d *Dispatcher) AcquireWith(ctx context.Context, tenant string, cost int, onQueued func(position func() int)) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.healthySlots == 0 {
		r := d.refusal(ReasonNoBackend)
		d.mu.Unlock()
		return nil, r
	}
	t := d.tenant(tenant)
	if t.running+t.waiting >= d.tenantCap {
		r := d.refusal(ReasonTenantBusy)
		d.mu.Unlock()
		return nil, r
	}
	if d.waiting == 0 {
		if b := d.freeBackend(); b != nil {
			d.seq++
			l := d.grant(b, t, 0, d.seq)
			d.mu.Unlock()
			return l, nil
		}
	}
	if d.waiting >= d.maxQueue {
		r := d.refusal(ReasonQueueFull)
		d.forgetIdle(t)
		d.mu.Unlock()
		return nil, r
	}
	w := d.queue(t, max(cost, 1))
	d.mu.Unlock()
	if onQueued != nil {
		onQueued(func() int { return d.position(w) })
	}
	return d.wait(ctx, w)
}

// Check says whether Acquire would refuse a job of tenant right now, and
// why, without queueing anything: for callers that must answer before they
// hand the job over (an async request's 202). The answer can change by the
// time they call Acquire.
func (d *Dispatcher) Check(tenant string) *Refusal {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.healthySlots == 0 {
		return d.refusal(ReasonNoBackend)
	}
	if t := d.tenants[tenant]; t != nil && t.running+t.waiting >= d.tenantCap {
		return d.refusal(ReasonTenantBusy)
	}
	if d.waiting >= d.maxQueue && (d.waiting > 0 || d.freeBackend() == nil) {
		return d.refusal(ReasonQueueFull)
	}
	return nil
}

// position is w's place among the waiters in arrival order; 0 when it no
// longer waits.
func (d *Dispatcher) position(w *waiter) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !w.queued {
		return 0
	}
	pos := 1
	for _, t := range d.tenants {
		for o := t.head; o != nil; o = o.next {
			if o.queued && o.seq < w.seq {
				pos++
			}
		}
	}
	return pos
}

// queue puts a new waiter for t at the end of t's FIFO and starts its
// MaxWait timer.
func (d *Dispatcher) queue(t *tenant, cost int) *waiter {
	d.seq++
	w := &waiter{tenant: t, cost: cost, queuedAt: d.clock.Now(), ch: make(chan *Lease, 1), seq: d.seq}
	d.enqueue(w)
	w.stop = d.after(d.maxWait, func() { d.expire(w) })
	return w
}

// wait blocks until w is handed a lease or refused, or ctx ends.
func (d *Dispatcher) wait(ctx context.Context, w *waiter) (*Lease, error) {
	select {
	case l := <-w.ch:
		if l == nil {
			return nil, w.err
		}
		return l, nil
	case <-ctx.Done():
		return nil, d.abandon(w, ctx.Err())
	}
}

// abandon takes w out of the queue for a caller that gave up, and returns
// err. A lease handed to w in the meantime goes on to the next waiter.
func (d *Dispatcher) abandon(w *waiter, err error) error {
	d.mu.Lock()
	if w.queued {
		d.unqueue(w)
		d.forgetIdle(w.tenant)
		d.mu.Unlock()
		return err
	}
	d.mu.Unlock()
	// Not queued: a hand-off or a timeout has already sent on w.ch.
	if l := <-w.ch; l != nil {
		l.Release(0)
	}
	return err
}

// expire refuses w, if it is still waiting, when MaxWait has passed.
func (d *Dispatcher) expire(w *waiter) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !w.queued {
		return
	}
	d.unqueue(w)
	d.forgetIdle(w.tenant)
	w.err = d.refusal(ReasonWaitTimeout)
	w.ch <- nil
}

// dispatch hands free slots to waiters, in DRR order, while both last.
func (d *Dispatcher) dispatch() {
	for d.cur != nil {
		b := d.freeBackend()
		if b == nil {
			return
		}
		w := d.pick()
		t := w.tenant
		t.deficit -= w.cost
		d.unqueue(w)
		w.ch <- d.grant(b, t, d.clock.Now().Sub(w.queuedAt), w.seq)
	}
}

// freeBackend returns the healthy backend, not under GPU pressure, with the
// most free slots (ties: the fewest jobs started, then the first name), or
// nil when none has one.
func (d *Dispatcher) freeBackend() *backend {
	var best *backend
	for _, b := range d.backends {
		if !b.healthy || b.pressure || b.inUse >= b.slots {
			continue
		}
		if best == nil {
			best = b
			continue
		}
		free, bestFree := b.slots-b.inUse, best.slots-best.inUse
		if free > bestFree || free == bestFree && b.started < best.started {
			best = b
		}
	}
	return best
}

// grant gives t a slot on b for its job numbered seq in arrival order.
func (d *Dispatcher) grant(b *backend, t *tenant, waited time.Duration, seq uint64) *Lease {
	b.inUse++
	b.started++
	t.running++
	return &Lease{d: d, b: b, t: t, waited: waited, seq: seq}
}

// tenant returns name's tenant, adding it when it has nothing in flight.
func (d *Dispatcher) tenant(name string) *tenant {
	t := d.tenants[name]
	if t == nil {
		t = &tenant{name: name}
		if d.tenants == nil {
			d.tenants = make(map[string]*tenant)
		}
		d.tenants[name] = t
	}
	return t
}

// forgetIdle drops t once it has nothing running or waiting, so the map
// holds only tenants in flight however many come and go.
func (d *Dispatcher) forgetIdle(t *tenant) {
	if t.running == 0 && t.waiting == 0 && d.tenants[t.name] == t {
		delete(d.tenants, t.name)
	}
}

// measure folds a job time into the average: an exponentially weighted
// moving average giving the newest job 1/8, the first one taken whole.
func (d *Dispatcher) measure(jobTime time.Duration) {
	if d.avgJob == 0 {
		d.avgJob = jobTime
		return
	}
	d.avgJob += (jobTime - d.avgJob) / 8
}

// refusal builds a refusal whose RetryAfter is the queue's length (at least
// one job) times the average job time, over the healthy slots (all slots
// when none is healthy).
func (d *Dispatcher) refusal(reason Reason) *Refusal {
	job := cmp.Or(d.avgJob, DefaultJobTime)
	slots := max(cmp.Or(d.healthySlots, d.totalSlots), 1)
	ahead := max(d.waiting, 1)
	return &Refusal{Reason: reason, RetryAfter: time.Duration(ahead) * job / time.Duration(slots)}
}

// SetHealthy marks a backend healthy or not. An unhealthy backend gets no
// new jobs; its leases run on until released. When the last healthy
// backend goes, the jobs waiting for a slot are refused at once
// (ReasonNoBackend), except those put back by Requeue, which keep waiting,
// up to MaxWait, for a backend to come back. A backend coming back takes
// waiters at once. Unknown names are ignored.
func (d *Dispatcher) SetHealthy(name string, healthy bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.byName[name]
	if b == nil || b.healthy == healthy {
		return
	}
	b.healthy = healthy
	if !healthy {
		d.healthySlots -= b.slots
		if d.healthySlots == 0 {
			d.refuseWaiters(ReasonNoBackend)
		}
		return
	}
	d.healthySlots += b.slots
	d.dispatch()
}

// refuseWaiters refuses every waiter not put back by Requeue.
func (d *Dispatcher) refuseWaiters(reason Reason) {
	var refused []*waiter
	for _, t := range d.tenants {
		for w := t.head; w != nil; w = w.next {
			if !w.requeued {
				refused = append(refused, w)
			}
		}
	}
	for _, w := range refused {
		d.unqueue(w)
		d.forgetIdle(w.tenant)
	}
	for _, w := range refused {
		w.err = d.refusal(reason)
		w.ch <- nil
	}
}

// SetPressure marks a backend's GPU under memory pressure or not. A backend
// under pressure gets no new jobs (they wait for another backend, or for
// the pressure to end); its leases run on. It still counts as healthy: the
// farm as a whole refuses work only through the engine's GPU rule. Unknown
// names are ignored.
func (d *Dispatcher) SetPressure(name string, pressure bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.byName[name]
	if b == nil || b.pressure == pressure {
		return
	}
	b.pressure = pressure
	if !pressure {
		d.dispatch()
	}
}

// Stats is a snapshot of a Dispatcher.
type Stats struct {
	Backends []BackendStats // sorted by name
	// Queued is the number of jobs waiting for a slot.
	Queued int
	// Tenants lists the tenants with jobs running or waiting, by name.
	Tenants []TenantStats
	// AvgJobTime is the measured average job time; 0 before any.
	AvgJobTime time.Duration
}

// BackendStats describes one backend.
type BackendStats struct {
	Name    string
	Slots   int
	InUse   int
	Healthy bool
	// Pressure says its GPU is under memory pressure: it gets no new job.
	Pressure bool
	// Started counts the jobs the backend was given.
	Started uint64
}

// TenantStats describes one tenant's jobs.
type TenantStats struct {
	Tenant  string
	Waiting int
	Running int
}

// Stats returns a snapshot.
func (d *Dispatcher) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{
		Backends:   make([]BackendStats, 0, len(d.backends)),
		Queued:     d.waiting,
		Tenants:    make([]TenantStats, 0, len(d.tenants)),
		AvgJobTime: d.avgJob,
	}
	for _, b := range d.backends {
		s.Backends = append(s.Backends, BackendStats{Name: b.name, Slots: b.slots, InUse: b.inUse, Healthy: b.healthy, Pressure: b.pressure, Started: b.started})
	}
	for _, t := range d.tenants {
		s.Tenants = append(s.Tenants, TenantStats{Tenant: t.name, Waiting: t.waiting, Running: t.running})
	}
	slices.SortFunc(s.Tenants, func(a, b TenantStats) int { return cmp.Compare(a.Tenant, b.Tenant) })
	return s
}
