package dispatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
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
	// DefaultLowShare and DefaultMediumShare are the lower classes'
	// minimum shares: a waiting low-class job's class gets at least one
	// hand-out in 10, a medium one's at least one in 5 of those that do
	// not go to a lower class.
	DefaultLowShare    = 10
	DefaultMediumShare = 5
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
	// MaxQueue bounds the jobs waiting for a slot, over all tenants. A
	// job finding the queue full takes the place of a waiting job of a
	// lower class, which is refused (see Acquire); with none, it is refused.
	MaxQueue int
	// MaxWait bounds how long a job waits for a slot.
	MaxWait time.Duration
	// TenantInFlight bounds the jobs one tenant has running or waiting,
	// for requests that set no InFlight of their own.
	TenantInFlight int
	// LowShare and MediumShare keep the lower priority classes from
	// starving (0: DefaultLowShare and DefaultMediumShare; otherwise at
	// least 2). Freed slots go to the highest class with jobs waiting,
	// except that a class below High whose waiting jobs have been passed
	// over by Share-1 hand-outs in a row to higher classes gets the next
	// one (the lowest such class first). So, while a class has jobs
	// waiting:
	//
	//   - low gets at least one hand-out in every LowShare, whatever
	//     waits above it;
	//   - medium gets at least one in every MediumShare hand-outs that do
	//     not go to low (at most MediumShare-1 in a row go to high); low's
	//     guaranteed ones come on top: with the defaults, medium gets at
	//     least one in 6 of all hand-outs, since low takes at most one in
	//     10 while a higher class waits.
	//
	// The bound counts hand-outs, not time: how long that is depends on
	// the job times, and MaxWait still applies. A class is owed its share
	// only while it has jobs waiting; one that empties starts again.
	LowShare, MediumShare int
	// Clock times the waits; nil means the system clock.
	Clock clock.Clock
	// After schedules f to run once after d and returns a function that
	// cancels it, reporting whether it did, as time.AfterFunc(d, f).Stop
	// does; nil means after d on Clock (time.AfterFunc for the system
	// clock). It is called with the Dispatcher's lock held, so f must run
	// later, on a goroutine of its own.
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

	tenants map[string]*tenantState // tenants with jobs running or waiting
	rings   [classes]ring           // the DRR rings of flows with waiters, by class; see drr.go
	waiting int
	queued  [classes]int  // the jobs waiting, by class
	running [classes]int  // the leases held, by class
	passed  [classes]int  // see nextClass
	share   [classes]int  // the Config's shares, by class (High's unused)
	avgJob  time.Duration // 0 until measured
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
	if cfg.LowShare < 0 || cfg.LowShare == 1 {
		errs = append(errs, fmt.Errorf("dispatch: low_share: must be 0 (default %d) or >= 2, got %d", DefaultLowShare, cfg.LowShare))
	}
	if cfg.MediumShare < 0 || cfg.MediumShare == 1 {
		errs = append(errs, fmt.Errorf("dispatch: medium_share: must be 0 (default %d) or >= 2, got %d", DefaultMediumShare, cfg.MediumShare))
	}
	d := &Dispatcher{
		clock:     clock.Or(cfg.Clock),
		after:     cfg.After,
		maxQueue:  cmp.Or(cfg.MaxQueue, DefaultMaxQueue),
		maxWait:   cmp.Or(cfg.MaxWait, DefaultMaxWait),
		tenantCap: cmp.Or(cfg.TenantInFlight, DefaultTenantInFlight),
		byName:    make(map[string]*backend, len(cfg.Backends)),
		tenants:   make(map[string]*tenantState),
	}
	d.share[tenant.Low] = cmp.Or(cfg.LowShare, DefaultLowShare)
	d.share[tenant.Medium] = cmp.Or(cfg.MediumShare, DefaultMediumShare)
	if d.after == nil {
		d.after = afterOn(d.clock)
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

// Request is one job asking for a slot.
type Request struct {
	// Tenant is who the job is for: what TenantInFlight and the fair
	// shares count.
	Tenant string
	// Tier names the tenant's service tier, for Stats only.
	Tier string
	// Class is the job's priority class: a higher class is served first
	// (see Config.LowShare for the lower classes' minimum share). Out of
	// range: the nearest class.
	Class tenant.Class
	// Cost weighs the job in the tenant's fair share; below 1 counts as 1.
	Cost int
	// InFlight bounds the jobs the tenant has running or waiting, this one
	// included (the tier's jobs at once); 0 or less: Config.TenantInFlight.
	InFlight int
	// OnQueued, if set, is called when the job has to wait, before it
	// waits, with a function telling its place in the queue: see
	// Dispatcher.Acquire.
	OnQueued func(position func() int)
	// Keep marks a job already promised to its client (an async job
	// answered 202): a full queue never gives its place to a job of a
	// higher class.
	Keep bool
}

// class is req's class, brought into range.
func (req *Request) class() tenant.Class { return min(max(req.Class, tenant.Low), tenant.High) }

// inFlight is req's cap on its tenant's jobs.
func (d *Dispatcher) inFlight(req *Request) int {
	if req.InFlight > 0 {
		return req.InFlight
	}
	return d.tenantCap
}

// Acquire takes a slot for one job, waiting for one if none is free: a
// free slot is taken at once whatever the job's class (the queue is then
// empty), so low-class jobs keep an idle farm busy.
//
// It returns a *Refusal when the queue is full, the tenant has its
// InFlight jobs running or waiting, no backend is healthy, or no slot came
// within MaxWait; and ctx.Err() when ctx ends first, the job's place in the
// queue removed. A full queue refuses a job only when no job of a lower
// class waits: otherwise the job takes the place of one of them (in the
// lowest such class, the newest job of the tenant with the most jobs
// waiting there; never one put back by Requeue), which is refused with
// ReasonQueueFull. So low-class jobs filling the queue never shut out the
// higher classes. Otherwise the caller holds the Lease until it calls
// Release.
//
// When the job has to wait, req.OnQueued is called with a function telling
// its place in the queue: 1 + the number of jobs that will be handed a
// slot before it, in the real serving order (classes, minimum shares,
// deficit round robin), were no job to come or go; 0 once it no longer
// waits. A job leaving the queue or being served moves it up; a new job
// can move it down: one of a higher class, or of another tenant of its
// class whose turn comes before its own. Asking costs O(jobs waiting).
func (d *Dispatcher) Acquire(ctx context.Context, req Request) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.healthySlots == 0 {
		r := d.refusal(ReasonNoBackend)
		d.mu.Unlock()
		return nil, r
	}
	t := d.tenant(req.Tenant)
	if t.running+t.waiting >= d.inFlight(&req) {
		r := d.busyRefusal(req.class())
		d.forgetIdle(t)
		d.mu.Unlock()
		return nil, r
	}
	cls := req.class()
	if d.waiting == 0 {
		if b := d.freeBackend(); b != nil {
			t.class, t.tier = cls, req.Tier
			l := d.grant(b, t, cls, 0)
			d.mu.Unlock()
			return l, nil
		}
	}
	if d.waiting >= d.maxQueue {
		v := d.displaceable(cls)
		if v == nil {
			r := d.refusal(ReasonQueueFull)
			d.forgetIdle(t)
			d.mu.Unlock()
			return nil, r
		}
		d.refuse(v, ReasonQueueFull)
		t = d.tenant(req.Tenant) // v may have been t's last job
	}
	t.class, t.tier = cls, req.Tier
	w := d.queue(&t.flows[cls], max(req.Cost, 1))
	w.kept = req.Keep
	d.mu.Unlock()
	if req.OnQueued != nil {
		req.OnQueued(func() int { return d.position(w) })
	}
	return d.wait(ctx, w)
}

// Check says whether Acquire would refuse req right now, and why, without
// queueing anything: for callers that must answer before they hand the job
// over (an async request's 202). The answer can change by the time they
// call Acquire.
func (d *Dispatcher) Check(req Request) *Refusal {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.healthySlots == 0 {
		return d.refusal(ReasonNoBackend)
	}
	if t := d.tenants[req.Tenant]; t != nil && t.running+t.waiting >= d.inFlight(&req) {
		return d.busyRefusal(req.class())
	}
	if d.waiting >= d.maxQueue && d.displaceable(req.class()) == nil {
		return d.refusal(ReasonQueueFull)
	}
	return nil
}

// displaceable is the waiter a new job of class cls takes the place of
// when the queue is full: in the lowest class below cls with jobs waiting,
// the newest job of the tenant with the most jobs waiting there (ties: the
// one whose turn comes last), never a job put back by Requeue nor one
// promised to its client (Request.Keep); nil when there is none. It takes
// O(jobs waiting).
func (d *Dispatcher) displaceable(cls tenant.Class) *waiter {
	for c := range int(cls) {
		r := &d.rings[c]
		if r.cur == nil {
			continue
		}
		var victim *waiter
		most := 0
		for f := r.cur.prev; ; f = f.prev { // the last turn first
			n := 0
			var newest *waiter
			for w := f.tail; w != nil; w = w.prev {
				if !w.requeued && !w.kept {
					newest = cmp.Or(newest, w)
					n++
				}
			}
			if n > most {
				victim, most = newest, n
			}
			if f == r.cur {
				break
			}
		}
		if victim != nil {
			return victim
		}
	}
	return nil
}

// refuse takes w out of the queue and answers it with a refusal.
func (d *Dispatcher) refuse(w *waiter, reason Reason) {
	d.unqueue(w)
	d.forgetIdle(w.flow.t)
	w.err = d.refusal(reason)
	w.ch <- nil
}

// position is 1 + the number of waiters to be handed a slot before w, were
// none to come or go; 0 when w no longer waits. Within w's class that is
// DRR's order (ring.ahead); between classes, nextClass's, played out on
// the counts of waiters per class.
func (d *Dispatcher) position(w *waiter) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !w.queued {
		return 0
	}
	c := int(w.flow.class)
	left := d.rings[c].ahead(w)
	pos := 1 + left
	waiting, passed := d.queued, d.passed
	for {
		g := nextClass(&d.share, &waiting, &passed)
		if g == c {
			if left == 0 {
				return pos
			}
			left--
		} else {
			pos++
		}
		served(g, &waiting, &passed)
		if waiting[g]--; waiting[g] == 0 {
			passed[g] = 0
		}
	}
}

// queue puts a new waiter at the end of f's FIFO and starts its MaxWait
// timer.
func (d *Dispatcher) queue(f *flow, cost int) *waiter {
	w := &waiter{flow: f, cost: cost, queuedAt: d.clock.Now(), ch: make(chan *Lease, 1)}
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
		d.forgetIdle(w.flow.t)
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
	d.refuse(w, ReasonWaitTimeout)
}

// dispatch hands free slots to waiters while both last: to the class
// nextClass says, and in it in DRR order.
func (d *Dispatcher) dispatch() {
	for d.waiting > 0 {
		b := d.freeBackend()
		if b == nil {
			return
		}
		g := nextClass(&d.share, &d.queued, &d.passed)
		served(g, &d.queued, &d.passed)
		w := d.rings[g].pick()
		f := w.flow
		f.deficit -= w.cost
		d.unqueue(w)
		w.ch <- d.grant(b, f.t, f.class, d.clock.Now().Sub(w.queuedAt))
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

// grant gives t a slot on b for its job of class cls.
func (d *Dispatcher) grant(b *backend, t *tenantState, cls tenant.Class, waited time.Duration) *Lease {
	b.inUse++
	b.started++
	t.running++
	d.running[cls]++
	return &Lease{d: d, b: b, t: t, class: cls, waited: waited}
}

// tenant returns name's tenant, adding it when it has nothing in flight.
func (d *Dispatcher) tenant(name string) *tenantState {
	t := d.tenants[name]
	if t == nil {
		t = &tenantState{name: name}
		for c := range t.flows {
			t.flows[c] = flow{t: t, class: tenant.Class(c)}
		}
		if d.tenants == nil {
			d.tenants = make(map[string]*tenantState)
		}
		d.tenants[name] = t
	}
	return t
}

// forgetIdle drops t once it has nothing running or waiting, so the map
// holds only tenants in flight however many come and go.
func (d *Dispatcher) forgetIdle(t *tenantState) {
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
	return d.refusalAhead(reason, d.waiting)
}

// busyRefusal is the ReasonTenantBusy refusal of a job of class cls: only
// the jobs waiting in its class and above would be served before its
// retry, not the lower classes' (a registered client at its cap behind a
// queue of anonymous jobs is told to come back after one job, not after
// all of theirs).
func (d *Dispatcher) busyRefusal(cls tenant.Class) *Refusal {
	ahead := 0
	for c := int(cls); c < classes; c++ {
		ahead += d.queued[c]
	}
	return d.refusalAhead(ReasonTenantBusy, ahead)
}

// refusalAhead builds a refusal whose RetryAfter is ahead jobs (at least
// one) times the average job time, over the healthy slots.
func (d *Dispatcher) refusalAhead(reason Reason, ahead int) *Refusal {
	job := cmp.Or(d.avgJob, DefaultJobTime)
	slots := max(cmp.Or(d.healthySlots, d.totalSlots), 1)
	return &Refusal{Reason: reason, RetryAfter: time.Duration(max(ahead, 1)) * job / time.Duration(slots)}
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
		for c := range t.flows {
			for w := t.flows[c].head; w != nil; w = w.next {
				if !w.requeued {
					refused = append(refused, w)
				}
			}
		}
	}
	for _, w := range refused {
		d.unqueue(w)
		d.forgetIdle(w.flow.t)
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
	// Classes counts the jobs waiting and running by priority class,
	// indexed by tenant.Class (Low first).
	Classes []ClassStats
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

// ShownName is a backend's name as it may be shown (the operator API,
// metrics): a URL loses the user information it may carry
// (http://user:password@host), so no password is shown.
func ShownName(name string) string {
	u, err := url.Parse(name)
	if err != nil || u.User == nil {
		return name
	}
	u.User = nil
	return u.String()
}

// ClassStats counts one priority class's jobs.
type ClassStats struct {
	Class   tenant.Class
	Waiting int
	Running int
}

// TenantStats describes one tenant's jobs.
type TenantStats struct {
	Tenant string
	// Tier and Class are those of the tenant's latest job.
	Tier    string
	Class   tenant.Class
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
		Classes:    make([]ClassStats, classes),
		Tenants:    make([]TenantStats, 0, len(d.tenants)),
		AvgJobTime: d.avgJob,
	}
	for c := range s.Classes {
		s.Classes[c] = ClassStats{Class: tenant.Class(c), Waiting: d.queued[c], Running: d.running[c]}
	}
	for _, b := range d.backends {
		s.Backends = append(s.Backends, BackendStats{Name: b.name, Slots: b.slots, InUse: b.inUse, Healthy: b.healthy, Pressure: b.pressure, Started: b.started})
	}
	for _, t := range d.tenants {
		s.Tenants = append(s.Tenants, TenantStats{Tenant: t.name, Tier: t.tier, Class: t.class, Waiting: t.waiting, Running: t.running})
	}
	slices.SortFunc(s.Tenants, func(a, b TenantStats) int { return cmp.Compare(a.Tenant, b.Tenant) })
	return s
}

// afterOn is Config.After on c: time.AfterFunc for the system clock, a
// goroutine waiting on c's timer otherwise (a fake clock in tests, so that
// MaxWait passes when the test moves the time).
func afterOn(c clock.Clock) func(time.Duration, func()) func() bool {
	if _, ok := c.(clock.System); ok {
		return func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	return func(d time.Duration, f func()) func() bool {
		fire, stop := clock.NewTimer(c, d)
		cancel := make(chan struct{})
		go func() {
			select {
			case <-fire:
				f()
			case <-cancel:
			}
		}()
		var once sync.Once
		return func() bool {
			stopped := stop()
			if stopped {
				once.Do(func() { close(cancel) }) // the goroutine ends without running f
			}
			return stopped
		}
	}
}
