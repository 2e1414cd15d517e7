package farm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/plan"
)

// Defaults for the zero fields of Config.
const (
	DefaultInterval     = 2 * time.Second
	DefaultProbeTimeout = 5 * time.Second
	DefaultStall        = time.Minute
)

// Config configures a Farm.
type Config struct {
	// Backends are the ComfyUI servers, one client each, made by New; their
	// base URLs name them and must differ. New sets their OnConnection
	// (calling any given one too): a broken WebSocket is a health signal.
	Backends []comfyui.Config
	// Slots is the jobs each backend runs at once (0: dispatch.DefaultSlots).
	Slots int
	// MaxQueue bounds the jobs waiting for a slot, over all tenants.
	MaxQueue int
	// MaxWait bounds how long a job waits for a slot, each time it waits.
	MaxWait time.Duration
	// TenantInFlight bounds the jobs one tenant has running or waiting,
	// for jobs that set no InFlight of their own (their tier's).
	TenantInFlight int
	// LowShare and MediumShare are the lower priority classes' minimum
	// shares of the freed slots (0: the dispatch defaults); see
	// dispatch.Config.
	LowShare, MediumShare int

	// Monitor receives every backend's GPU samples and says which backends
	// are under GPU pressure (*engine.Engine); nil: no GPU samples, no
	// pressure.
	Monitor Monitor
	// Interval is the time between two health probes of a backend
	// (default DefaultInterval).
	Interval time.Duration
	// ProbeTimeout bounds one health probe (default DefaultProbeTimeout): an
	// answer within it, however slow, is healthy.
	ProbeTimeout time.Duration
	// Stall is how long a job running on a backend taken out may go
	// without a sign of progress before it is interrupted there and run
	// elsewhere (default DefaultStall).
	Stall time.Duration
	// JobTimes, if set, is told each job's slot time: from its grant of a
	// slot until ComfyUI has executed it (never its wait in the queue), by
	// resource and size (*plan.Recorder, for the capacity planner). A job
	// that did not execute is not told.
	JobTimes JobTimes
	// Clock times probes, stalls and slot times; nil means the system
	// clock.
	Clock clock.Clock
	// Logger logs the farm's decisions; nil discards them.
	Logger *slog.Logger
}

// Monitor is what the farm reports GPU samples to and asks about GPU
// pressure: *engine.Engine is one.
type Monitor interface {
	ReportGPUs(source string, gpus []engine.GPU, err error)
	// BackendPressure says whether a GPU of the backend is under pressure.
	BackendPressure(backend string) bool
}

var _ Monitor = (*engine.Engine)(nil)

// JobTimes records how long jobs held a slot: *plan.Recorder is one.
type JobTimes interface {
	Record(resource string, size int, held time.Duration)
}

var _ JobTimes = (*plan.Recorder)(nil)

// Farm shares the ComfyUI backends between tenants and runs jobs on them.
type Farm struct {
	d       *dispatch.Dispatcher
	members map[string]*member
	names   []string // the backends, in the order given
	clients []*comfyui.Client
	log     *slog.Logger
	clk     clock.Clock
	monitor Monitor
	times   JobTimes

	interval, probeTimeout, stall time.Duration

	mu sync.Mutex // guards the members' health and their jobs
}

// backend is what the farm runs jobs on and probes: a *comfyui.Client.
type backend interface {
	Run(ctx context.Context, job comfyui.Job) (*comfyui.Result, error)
	GPUs(ctx context.Context, now time.Time) ([]engine.GPU, error)
}

// member is one backend of the farm.
type member struct {
	name string
	b    backend
	kick chan struct{} // asks its watcher for a probe now

	probeMu sync.Mutex // one probe at a time

	// Guarded by Farm.mu.
	out       bool
	failures  int  // failed probes in a row
	successes int  // probes in a row that succeeded
	wsDown    bool // its client's WebSocket is broken
	pressure  bool // its GPU is under pressure
	jobs      map[*active]struct{}
}

// active is a job holding a slot on a member.
type active struct {
	cancel context.CancelCauseFunc
	// Guarded by Farm.mu.
	started  bool      // ComfyUI began executing it
	executed bool      // ComfyUI finished executing it
	lastSign time.Time // its last event
}

// Why a job's run on a backend was cut short by the farm.
var (
	// errPulledBack: its backend was taken out before the job started
	// there; it goes back into the queue at its place.
	errPulledBack = errors.New("backend taken out of the farm before the job started there")
	// errStalled: its backend was taken out and the job had shown no
	// progress there for Config.Stall; it runs once more elsewhere.
	errStalled = errors.New("backend taken out of the farm and the job stalled there")
)

var (
	_ httpapi.Runner     = (*Farm)(nil)
	_ httpapi.Prechecker = (*Farm)(nil)
)

// New makes a Farm of cfg's backends, every one healthy. Call Watch to
// start the health probes.
func New(cfg Config) (*Farm, error) {
	f := &Farm{}
	var backends []backend
	for _, bc := range cfg.Backends {
		name := bc.BaseURL
		given := bc.OnConnection
		bc.OnConnection = func(up bool, err error) {
			f.connection(name, up, err)
			if given != nil {
				given(up, err)
			}
		}
		c, err := comfyui.NewClient(bc)
		if err != nil {
			return nil, fmt.Errorf("farm: backend %s: %w", bc.BaseURL, err)
		}
		name = c.BaseURL()
		f.clients = append(f.clients, c)
		backends = append(backends, c)
	}
	return f, f.init(cfg, backends)
}

// init sets f up with backends, named by their clients (or, in tests, by
// cfg.Backends' base URLs).
func (f *Farm) init(cfg Config, backends []backend) error {
	f.log = cfg.Logger
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.clk = clock.Or(cfg.Clock)
	f.monitor = cfg.Monitor
	f.times = cfg.JobTimes
	f.interval = cmp.Or(cfg.Interval, DefaultInterval)
	f.probeTimeout = cmp.Or(cfg.ProbeTimeout, DefaultProbeTimeout)
	f.stall = cmp.Or(cfg.Stall, DefaultStall)
	members := make(map[string]*member, len(backends))
	var dcs []dispatch.BackendConfig
	for i, b := range backends {
		name := cfg.Backends[i].BaseURL
		if c, ok := b.(*comfyui.Client); ok {
			name = c.BaseURL()
		}
		if _, dup := members[name]; dup {
			return fmt.Errorf("farm: backend %s given twice", name)
		}
		members[name] = &member{name: name, b: b, kick: make(chan struct{}, 1), jobs: make(map[*active]struct{})}
		f.names = append(f.names, name)
		dcs = append(dcs, dispatch.BackendConfig{Name: name, Slots: cfg.Slots})
	}
	d, err := dispatch.New(dispatch.Config{Backends: dcs, MaxQueue: cfg.MaxQueue, MaxWait: cfg.MaxWait, TenantInFlight: cfg.TenantInFlight,
		LowShare: cfg.LowShare, MediumShare: cfg.MediumShare, Clock: f.clk})
	if err != nil {
		return fmt.Errorf("farm: %w", err)
	}
	f.d = d
	f.mu.Lock() // a client may report its connection already
	f.members = members
	f.mu.Unlock()
	return nil
}

// Clients are the backends' ComfyUI clients, in the order given.
func (f *Farm) Clients() []*comfyui.Client { return f.clients }

// Close closes the backends' clients (their WebSockets). Call it once no
// job runs any more: after the HTTP server and the async jobs have stopped.
func (f *Farm) Close() {
	for _, c := range f.clients {
		c.Close()
	}
}

// Stats is a snapshot of the farm's slots, health, GPU pressure and queue.
func (f *Farm) Stats() dispatch.Stats { return f.d.Stats() }

// Run waits for a slot, runs the job on that backend and frees the slot. A
// refusal of the dispatcher is an *httpapi.BusyError. The job waits in its
// Class, counted against its InFlight (0: Config.TenantInFlight).
//
// A job whose backend is taken out before the job started executing there
// is removed from that ComfyUI's queue and goes back into the farm's queue
// at its place, to wait (up to the queue wait) for any healthy backend. A
// job already executing there runs on while it shows progress; one that
// showed none for Config.Stall is interrupted there and run once more
// elsewhere. A job never runs on two backends at once.
func (f *Farm) Run(ctx context.Context, job httpapi.Job) (*comfyui.Result, error) {
	cost := max(job.Cost, 1)
	lease, err := f.d.Acquire(ctx, request(job))
	for rerun := false; ; {
		if err != nil {
			var r *dispatch.Refusal
			if errors.As(err, &r) {
				return nil, busy(r)
			}
			return nil, err
		}
		res, why, runErr := f.runOn(ctx, lease, job)
		switch {
		case why == nil:
			return res, runErr
		case errors.Is(why, errStalled) && rerun:
			lease.Release(0)
			return nil, runErr
		}
		rerun = rerun || errors.Is(why, errStalled)
		f.log.Warn("job back in the queue: its backend was taken out", slog.String("backend", lease.Backend()),
			slog.String("tenant", job.Tenant), slog.String("why", why.Error()))
		lease, err = f.d.Requeue(ctx, lease, cost, job.OnQueued)
		if errors.Is(err, dispatch.ErrReleased) { // it finished executing meanwhile
			return nil, runErr
		}
	}
}

// runOn runs job on lease's backend. It releases the lease, except when the
// farm cut the run short to run the job again (why says so): the caller
// then re-queues it.
func (f *Farm) runOn(ctx context.Context, lease *dispatch.Lease, job httpapi.Job) (res *comfyui.Result, why, err error) {
	// The slot is free as soon as ComfyUI has executed the prompt, while
	// its output is still being fetched (OnExecuted below); Release is
	// idempotent, so this deferred call frees it on every other path: an
	// error, a timeout, a cancellation, a panic.
	start := f.clk.Now()
	keep := false
	defer func() {
		if !keep {
			lease.Release(f.clk.Now().Sub(start))
		}
	}()
	name := lease.Backend()
	m := f.members[name]
	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a := &active{cancel: cancel, lastSign: start}
	f.mu.Lock()
	m.jobs[a] = struct{}{}
	if m.out { // taken out between the grant and now
		cancel(errPulledBack)
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(m.jobs, a)
		f.mu.Unlock()
	}()

	cj := job.Job
	sign := func(started, executed bool) {
		f.mu.Lock()
		a.started = a.started || started
		a.executed = a.executed || executed
		a.lastSign = f.clk.Now()
		f.mu.Unlock()
	}
	cj.OnRunning = func() {
		sign(true, false)
		if job.OnRunning != nil {
			job.OnRunning()
		}
	}
	onProgress := job.OnProgress
	cj.OnProgress = func(value, max int) {
		sign(true, false)
		if onProgress != nil {
			onProgress(value, max)
		}
	}
	cj.OnExecuted = func() {
		sign(true, true)
		held := f.clk.Now().Sub(start)
		lease.Release(held)
		if f.times != nil {
			f.times.Record(job.Resource, cmp.Or(job.Size, max(job.Width, job.Height)), held)
		}
	}
	cj.OnQueuePosition = job.OnPosition
	cj.OnQueued = nil
	if job.OnStarted != nil {
		cj.OnQueued = func(promptID string) { job.OnStarted(name, promptID) }
	}
	res, err = m.b.Run(jobCtx, cj)
	if err != nil && ctx.Err() == nil {
		if cause := context.Cause(jobCtx); errors.Is(cause, errPulledBack) || errors.Is(cause, errStalled) {
			keep = true
			return nil, cause, fmt.Errorf("%w: %s: %w", cause, name, err)
		}
	}
	return res, nil, err
}

// Precheck says whether the farm would refuse job now (its tenant at its
// InFlight, the queue full, no backend), so that an async job is answered
// with it at once rather than failing after its 202.
func (f *Farm) Precheck(job httpapi.Job) error {
	if r := f.d.Check(request(job)); r != nil {
		return busy(r)
	}
	return nil
}

// request is what job asks of the dispatcher.
func request(job httpapi.Job) dispatch.Request {
	return dispatch.Request{Tenant: job.Tenant, Tier: job.Tier, Class: job.Class, Cost: max(job.Cost, 1),
		InFlight: job.InFlight, OnQueued: job.OnQueued, Keep: job.Async}
}

// busy is a dispatch refusal as the HTTP API answers it.
func busy(r *dispatch.Refusal) *httpapi.BusyError {
	return &httpapi.BusyError{Reason: r.Error(), RetryAfter: r.RetryAfter, OverShare: r.Reason == dispatch.ReasonTenantBusy}
}
