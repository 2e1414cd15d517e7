package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// State is where a job is in its life.
type State string

// The states of a job, in the order a job goes through them: Queued
// (waiting for a GPU slot in the gateway), Submitted (given to a backend,
// in ComfyUI's own queue there), Running (executing), then one of
// Succeeded, Failed and Cancelled, which are final. A job may skip states
// (a backend that reports no queue goes from Submitted to Running at its
// first progress), never go back.
const (
	Queued    State = "queued"
	Submitted State = "submitted"
	Running   State = "running"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Final reports whether s is an end state.
func (s State) Final() bool { return s == Succeeded || s == Failed || s == Cancelled }

// Params are the job's parameters as the caller gave them (defaults filled).
type Params struct {
	Size   int    `json:"size,omitempty"`
	Prompt string `json:"prompt,omitempty"`
	Width  int    `json:"width,omitempty"`
	Height int    `json:"height,omitempty"`
	Steps  int    `json:"steps,omitempty"`
	Seed   int64  `json:"seed,omitempty"`
}

// Progress is how far a running job got: Value of Max steps.
type Progress struct {
	Value int `json:"value"`
	Max   int `json:"max"`
}

// Spec describes a job to Submit.
type Spec struct {
	// Tenant is who the job bills: an identified caller's tenant, or an
	// anonymous caller's origin.
	Tenant string
	// Origin is the caller's origin (its address, or IPv6 prefix), kept
	// apart from Tenant so that a job taken up after a restart is counted
	// as its caller was: by tenant when identified, by origin when not.
	Origin string
	// Tier is the caller's service tier, shown in the job's record.
	Tier     string
	Resource string
	Params   Params
	// Ticket is the daily quota the job was charged (Units 0: none): kept
	// in its record, across restarts, so that a job that fails on the
	// gateway's side is refunded once (Config.Refund), to the day it was
	// charged to.
	Ticket tenant.Ticket
	// Webhook, if set, is the URL told when the job ends (Config.OnFinish
	// delivers it).
	Webhook string
	// Input is what the run function needs to run the job again (the
	// prepared image and whatever else its caller encodes): with a
	// Config.Journal it is kept there, beside the job's record, until the
	// job ends, so that Restore can run a job that had not reached a
	// backend again through a ResumeFunc.
	Input []byte
}

// Result is what a run function returns on success.
type Result struct {
	PromptID    string
	Data        []byte
	ContentType string
}

// Report is how a run function tells the Manager how its job goes. Both
// functions are always set.
type Report struct {
	// Progress reports value of max steps; (0, 0) says only "it has
	// started". The first makes a job not yet Running Running. Call it
	// from one goroutine at a time; it does not block.
	Progress func(value, max int)
	// Started says where the job runs: the backend and the prompt ID it
	// was given there. The job becomes Submitted (in that backend's own
	// queue) unless it runs already. Its record is saved in the
	// background: Started never blocks on the Store, so a job holding a
	// GPU slot is never held up by it. A restarted gateway finds the job
	// again by these two.
	Started func(backend, promptID string)
	// Queued says the job waits for a GPU slot, with a function telling its
	// place in the queue (0 once it no longer waits): the job's
	// QueuePosition while it is queued.
	Queued func(position func() int)
	// Position tells a Submitted job's place in its backend's queue (1:
	// next to run): the job's QueuePosition while it is submitted. It does
	// not block.
	Position func(position int)
	// Running says the job's prompt started executing: the job becomes
	// Running. It does not block.
	Running func()
}

// RunFunc runs a job under ctx, reporting through report as it goes.
type RunFunc func(ctx context.Context, report Report) (Result, error)

// Job is a snapshot of a job's record.
type Job struct {
	ID     string `json:"id"`
	Tenant string `json:"-"`
	// Origin is the caller's origin (see Spec.Origin); kept from the job's
	// view like its tenant.
	Origin   string    `json:"-"`
	Tier     string    `json:"tier,omitempty"`
	Resource string    `json:"resource"`
	Params   Params    `json:"params"`
	State    State     `json:"state"`
	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Progress Progress  `json:"progress"`
	// QueuePosition is the job's place in the queue its state names: the
	// gateway's while Queued (1: next to get a slot), its backend's
	// (ComfyUI's own) while Submitted (1: nothing ahead of it there, the
	// prompts running or queued before it counting as ahead); 0 unknown or
	// no longer waiting.
	QueuePosition int    `json:"queue_position,omitempty"`
	Error         string `json:"error,omitempty"`
	PromptID      string `json:"prompt_id,omitempty"`
	// Result and ContentType are the output of a succeeded job.
	Result      []byte `json:"-"`
	ContentType string `json:"content_type,omitempty"`
	// Webhook is the URL told when the job ends.
	Webhook string `json:"webhook,omitempty"`
	// Backend is where the job runs or ran (a ComfyUI base URL); it is
	// kept from callers, like every backend address.
	Backend string `json:"-"`
	// Ticket is the quota charge of the job (see Spec.Ticket).
	Ticket tenant.Ticket `json:"-"`

	// resultKey names the job's result in the ResultStore once stored.
	resultKey string
}

// Caller is who submitted the job, as an engine call takes it: the origin
// it came from and its identified tenant, empty for an anonymous job
// (whose Tenant is its origin). A record kept before origins were has
// none: its tenant is taken for its origin when its tier is the anonymous
// one (or unset), and for an identified tenant of unknown origin
// otherwise.
func (j Job) Caller() (origin, tenantName string) {
	switch {
	case j.Origin != "" && j.Origin != j.Tenant:
		return j.Origin, j.Tenant
	case j.Origin != "" || j.Tier == "" || j.Tier == tenant.AnonymousTier:
		return j.Tenant, ""
	}
	return "", j.Tenant
}

// EventType says what an Event reports.
type EventType string

// Event types. A state event is sent on every change of State, in order;
// a position event when a Submitted job's place in its backend's queue
// changes; a progress event with each progress report.
const (
	EventProgress EventType = "progress"
	EventState    EventType = "state"
	EventPosition EventType = "position"
)

// Event is a change of a job: its progress or its state, with the job as it
// was then (Result left out).
type Event struct {
	Type EventType
	Job  Job
}

// Config configures a Manager; the zero value is usable.
type Config struct {
	// Clock stamps the jobs' times; the system clock by default.
	Clock clock.Clock
	// MaxFinished is how many finished jobs are kept (default 1000).
	MaxFinished int
	// MaxResultBytes bounds the result bytes kept in all (default 512 MiB).
	MaxResultBytes int64
	// SubscriberBuffer is how many events a subscriber may fall behind
	// before its intermediate progress events are dropped (default 16).
	SubscriberBuffer int
	// OnFinish, if set, is called with every job that reaches its final
	// state, on the job's own goroutine, outside the Manager's lock (the
	// webhook is sent from here). Drain and Close wait for it. A panic in
	// it is logged and goes no further.
	OnFinish func(Job)
	// Store, if set, keeps every job's record (never its result bytes) so
	// that a restarted gateway knows its jobs: see Restore. Nil: memory
	// only.
	Store Store
	// Results, if set, keeps succeeded jobs' result bytes instead of
	// memory; MaxResultBytes then bounds nothing. Nil: memory only.
	Results ResultStore
	// Journal, if set, keeps each job's Spec.Input and first record on
	// the gateway's own disk from Submit until the job has ended and its
	// final record is in the Store: Submit writes it before it returns, so
	// an accepted job survives any restart (SIGKILL included) and a Store
	// that does not answer (etcd down) never holds Submit up; Restore
	// replays into the Store the records it lacks. DirResults is one.
	Journal Journal
	// SaveRetry is the first wait before a failed record write is tried
	// again; each failure doubles it up to SaveRetryMax (defaults 200ms
	// and 10s).
	SaveRetry, SaveRetryMax time.Duration
	// FlushTimeout bounds how long Close waits for record writes still
	// pending, on Clock (default 5s); past it they are given up, logged.
	FlushTimeout time.Duration
	// Logger receives the Store's and ResultStore's failures, which never
	// fail a job. Default: discard.
	Logger *slog.Logger
	// Refund, if set, is called once with a job that holds a quota ticket
	// (Ticket.Units > 0) and ended failed on the gateway's side: Failed
	// (a backend or ComfyUI error, a timeout, no GPU slot, a panic, lost at
	// a restart), or cancelled by Close when no Store or Journal keeps it
	// for the next gateway. A job its caller cancelled is not refunded,
	// nor one Close leaves to the next gateway (which refunds it if it
	// fails there). It runs on the job's goroutine, outside the Manager's
	// lock, before OnFinish; Drain and Close wait for it. A panic in it is
	// logged and goes no further.
	Refund func(Job)
}

// Journal keeps, on the gateway's own disk, each unfinished job's entry
// (its first record and its input), by job ID. Inputs lists them all, for
// Restore.
type Journal interface {
	PutInput(id string, entry []byte) error
	Inputs() (map[string][]byte, error)
	DeleteInput(id string) error
}

// Store keeps job records. Save is called on every state change and when a
// job is started on its backend (not on progress), Delete when a finished
// job is forgotten, Load once by Restore; all of them off the jobs' own
// goroutines, by one writer per job that writes the job's latest record
// (changes made while a write is in flight are coalesced into the next),
// in order, retrying failures with backoff. Save is never called for one
// job from two goroutines at once. A Load that meets records it cannot read
// returns the others with an error wrapping ErrBadRecord (naming each):
// one bad record must not lose the rest.
type Store interface {
	Save(Job) error
	Load() ([]Job, error)
	Delete(id string) error
}

// ResultStore keeps the result bytes of succeeded jobs, by job ID. Get of
// a missing result returns an error wrapping ErrNotFound.
type ResultStore interface {
	Put(id string, data []byte, contentType string) error
	Get(id string) ([]byte, string, error)
	Delete(id string) error
}

// LostQueued is the error of a job found queued at Restore that cannot be
// run again: it had not reached a backend, and its input was not kept (no
// Journal, or no ResumeFunc).
const LostQueued = "lost at restart before it started; submit it again"

// Errors of Get, Cancel, Subscribe and Submit.
var (
	ErrNotFound = errors.New("jobs: no such job")
	ErrFinished = errors.New("jobs: job already finished")
	ErrClosed   = errors.New("jobs: manager closed")
	// ErrShutdown is the cause with which Close ends the jobs still
	// running: with a Store they are taken up again by the next Restore,
	// so a run function should leave the work itself running if it can.
	ErrShutdown = errors.New("jobs: the gateway is stopping; the job resumes after the restart")
	// ErrPanicked is the error of a job whose run function panicked: the
	// job fails with it, the panic and its stack are logged, and the
	// process goes on.
	ErrPanicked = errors.New("internal error: the job stopped on a bug in the gateway (its log has the details)")
)

// Manager owns job records. Make one with New and Close it.
type Manager struct {
	cfg Config
	wg  sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	jobs        map[string]*record
	finished    []string // IDs of finished jobs, oldest first
	resultBytes int64

	// The record writers: how many run, a channel closed while none does,
	// and one closed when Close gives up on the writes still failing.
	writers    int
	idle       chan struct{}
	stopWrites chan struct{}
}

type record struct {
	job       Job
	cancel    context.CancelCauseFunc
	cancelled bool // Cancel was called
	closing   bool // Close cancelled it: its stored record is left as it was
	evicted   bool // forgotten: its stored record is deleted, never saved again
	subs      map[*subscriber]struct{}
	// position tells the job's place in the GPU queue while it waits.
	position func() int
	// journaled says the Journal holds the job's entry.
	journaled bool

	// The record's writer (see write): what it is to write next, whether
	// it deletes the stored record, and whether it runs.
	pending  *Job
	deleting bool
	writing  bool
}

// New returns a Manager.
func New(cfg Config) *Manager {
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.MaxFinished <= 0 {
		cfg.MaxFinished = 1000
	}
	if cfg.MaxResultBytes <= 0 {
		cfg.MaxResultBytes = 512 << 20
	}
	if cfg.SubscriberBuffer <= 0 {
		cfg.SubscriberBuffer = 16
	}
	if cfg.SaveRetry <= 0 {
		cfg.SaveRetry = 200 * time.Millisecond
	}
	if cfg.SaveRetryMax < cfg.SaveRetry {
		cfg.SaveRetryMax = max(10*time.Second, cfg.SaveRetry)
	}
	if cfg.FlushTimeout <= 0 {
		cfg.FlushTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	idle := make(chan struct{})
	close(idle)
	return &Manager{cfg: cfg, jobs: map[string]*record{}, idle: idle, stopWrites: make(chan struct{})}
}

// Submit records a queued job and starts run on a goroutine of its own. It
// returns ErrClosed, without calling run, once Close has begun. With a
// Journal it writes the job's entry there first (an error doing so is
// returned, and run is not called); it never waits for the Store.
func (m *Manager) Submit(spec Spec, run RunFunc) (Job, error) {
	ctx, cancel := context.WithCancelCause(context.Background())
	r := &record{
		job: Job{
			ID: uuid.NewString(), Tenant: spec.Tenant, Origin: spec.Origin, Tier: spec.Tier, Resource: spec.Resource, Params: spec.Params, Webhook: spec.Webhook,
			State: Queued, Created: m.cfg.Clock.Now(), Ticket: spec.Ticket,
		},
		cancel: cancel,
	}
	if m.cfg.Journal != nil {
		if err := m.journal(r.job, spec.Input); err != nil {
			cancel(err)
			return Job{}, err
		}
		r.journaled = true
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cancel(ErrClosed)
		if r.journaled {
			m.dropJournal(r.id())
		}
		return Job{}, ErrClosed
	}
	m.jobs[r.job.ID] = r
	m.wg.Add(1)
	snap := r.job
	m.queueSave(r)
	m.mu.Unlock()

	go m.run(ctx, cancel, r, run)
	return snap, nil
}

// run calls the job's run function and records its end; m.wg was added.
func (m *Manager) run(ctx context.Context, cancel context.CancelCauseFunc, r *record, run RunFunc) {
	defer m.wg.Done()
	defer cancel(nil)
	res, err := m.call(ctx, r, run)
	m.end(r, res, err)
}

// call calls the job's run function and turns a panic in it into the
// job's error, ErrPanicked, logging the panic and its stack once: one
// job's bug fails that job, never the process. What the function holds
// (an admission token, a GPU slot) is released by its own deferred calls,
// which run as the panic unwinds.
func (m *Manager) call(ctx context.Context, r *record, run RunFunc) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			m.cfg.Logger.Error("jobs: a job's run function panicked; the job failed",
				slog.String("job", r.id()), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			res, err = Result{}, ErrPanicked
		}
	}()
	return run(ctx, m.report(r))
}

// report is the Report of record r's run function.
func (m *Manager) report(r *record) Report {
	return Report{
		Progress: func(value, max int) { m.progress(r, value, max) },
		Started:  func(backend, promptID string) { m.started(r, backend, promptID) },
		Queued:   func(position func() int) { m.queued(r, position) },
		Position: func(position int) { m.positioned(r, position) },
		Running:  func() { m.running(r) },
	}
}

// notify calls OnFinish with a finished job; a panic in it is logged with
// its stack, and the process goes on.
func (m *Manager) notify(j Job) {
	if m.cfg.OnFinish == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			m.cfg.Logger.Error("jobs: OnFinish panicked",
				slog.String("job", j.ID), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		}
	}()
	m.cfg.OnFinish(j)
}

// end records the end of a job, stores its result, queues the write of its
// record and the deletion of what the bounds evict, and tells OnFinish.
func (m *Manager) end(r *record, res Result, err error) {
	data, stored := res.Data, false
	if err == nil && m.cfg.Results != nil {
		if perr := m.cfg.Results.Put(r.id(), res.Data, res.ContentType); perr != nil {
			m.cfg.Logger.Error("jobs: storing a result failed; kept in memory only",
				slog.String("job", r.id()), slog.Any("error", perr))
		} else {
			res.Data, stored = nil, true
		}
	}
	final, refund := m.finish(r, res, err, stored)
	final.Result = data
	if refund {
		m.refund(final)
	}
	m.notify(final)
}

// refund calls Refund with a job that failed on the gateway's side; a
// panic in it is logged with its stack, and the process goes on.
func (m *Manager) refund(j Job) {
	if m.cfg.Refund == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			m.cfg.Logger.Error("jobs: Refund panicked",
				slog.String("job", j.ID), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		}
	}()
	m.cfg.Refund(j)
}

// id is the job's ID, which never changes.
func (r *record) id() string { return r.job.ID }

// started records where the job runs: it is Submitted there.
func (m *Manager) started(r *record, backend, promptID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.job.State.Final() {
		return
	}
	r.job.Backend, r.job.PromptID = backend, promptID
	r.position = nil
	r.job.QueuePosition = 0
	if r.job.State != Submitted {
		r.job.State = Submitted
		r.publish(EventState, m.cfg.SubscriberBuffer)
	}
	m.queueSave(r)
}

// queued records that the job waits for a GPU slot in the gateway: Queued
// again if it had gone further (its backend was taken out).
func (m *Manager) queued(r *record, position func() int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.job.State.Final() {
		return
	}
	r.position = position
	if r.job.State != Queued {
		r.job.State, r.job.QueuePosition = Queued, 0
		r.publish(EventState, m.cfg.SubscriberBuffer)
		m.queueSave(r)
	}
}

// positioned records a Submitted job's place in its backend's queue.
func (m *Manager) positioned(r *record, position int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.job.State != Submitted || r.job.QueuePosition == position {
		return
	}
	r.job.QueuePosition = position
	r.publish(EventPosition, m.cfg.SubscriberBuffer)
}

// running records that the job's prompt started executing.
func (m *Manager) running(r *record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.markRunning(r) {
		m.queueSave(r)
	}
}

// markRunning makes a job not yet running Running. m.mu is held.
func (m *Manager) markRunning(r *record) bool {
	if r.job.State != Queued && r.job.State != Submitted {
		return false
	}
	r.job.State = Running
	if r.job.Started.IsZero() {
		r.job.Started = m.cfg.Clock.Now()
	}
	r.job.QueuePosition = 0
	r.position = nil
	r.publish(EventState, m.cfg.SubscriberBuffer)
	return true
}

// progress records a progress report; the first makes the job running.
func (m *Manager) progress(r *record, value, max int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.job.State.Final() {
		return
	}
	if m.markRunning(r) {
		m.queueSave(r)
	}
	if max <= 0 && value <= 0 {
		return // only "started"
	}
	r.job.Progress = Progress{Value: value, Max: max}
	r.publish(EventProgress, m.cfg.SubscriberBuffer)
}

// finish records the end of a job, queues the write of its record (unless
// Close ended it: its stored record is then left as it was, for the next
// gateway), forgets the oldest finished jobs beyond the bounds, and
// returns the job as it ended, and whether its quota ticket is refunded
// (see Config.Refund).
func (m *Manager) finish(r *record, res Result, err error, stored bool) (Job, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := &r.job
	j.Finished = m.cfg.Clock.Now()
	j.QueuePosition = 0
	r.position = nil
	switch {
	case err == nil:
		j.State = Succeeded
		j.PromptID, j.Result, j.ContentType = cmp.Or(res.PromptID, j.PromptID), res.Data, res.ContentType
		if stored {
			j.resultKey = j.ID
		}
		if j.Started.IsZero() {
			j.Started = j.Finished
		}
		if j.Progress.Max > 0 {
			j.Progress.Value = j.Progress.Max
		}
	case r.cancelled:
		j.State, j.Error = Cancelled, "cancelled"
	case r.closing:
		j.State, j.Error = Cancelled, "cancelled: the gateway stopped"
	default:
		j.State, j.Error = Failed, err.Error()
	}
	r.publish(EventState, m.cfg.SubscriberBuffer)
	for s := range r.subs {
		s.end()
	}
	r.subs = nil
	r.cancel = nil
	// Close leaves the record of a job it ended to the next gateway when
	// a Store or the Journal keeps it: that one ends the job, and refunds
	// it if it fails there.
	leftForNext := r.closing && !r.cancelled && (m.cfg.Store != nil || r.journaled)
	refund := err != nil && !r.cancelled && !leftForNext && j.Ticket.Units > 0
	if !r.closing || r.cancelled {
		m.queueSave(r)
	}
	for _, old := range m.keepFinished(r) {
		m.queueForget(old)
	}
	return *j, refund
}

// keepFinished adds a finished record to the bounded list and returns the
// records it evicts, marked so. m.mu is held.
func (m *Manager) keepFinished(r *record) []*record {
	m.finished = append(m.finished, r.id())
	m.resultBytes += int64(len(r.job.Result))
	var evicted []*record
	for len(m.finished) > m.cfg.MaxFinished || (m.resultBytes > m.cfg.MaxResultBytes && len(m.finished) > 1) {
		old := m.jobs[m.finished[0]]
		m.finished = m.finished[1:]
		m.resultBytes -= int64(len(old.job.Result))
		delete(m.jobs, old.id())
		old.evicted = true
		evicted = append(evicted, old)
	}
	return evicted
}

// Get returns a snapshot of job id, with its result bytes once it has
// succeeded (read from the ResultStore when they are kept there).
func (m *Manager) Get(id string) (Job, error) {
	j, err := m.Status(id)
	if err != nil || j.State != Succeeded || j.Result != nil || j.resultKey == "" {
		return j, err
	}
	data, ct, err := m.cfg.Results.Get(j.resultKey)
	if err != nil {
		return j, fmt.Errorf("jobs: result of %s: %w", id, err)
	}
	j.Result, j.ContentType = data, ct
	return j, nil
}

// Status returns a snapshot of job id without reading its result from the
// ResultStore: Result is nil when the bytes are kept there.
func (m *Manager) Status(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.jobs[id]
	if !ok {
		return Job{}, ErrNotFound
	}
	j := r.job
	if j.State == Queued && r.position != nil {
		j.QueuePosition = r.position()
	}
	return j, nil
}

// Cancel ends job id's context and returns the job as it is now; it
// becomes cancelled when its run function returns. Cancelling a job twice
// is no error; a finished job gives ErrFinished, with the job.
func (m *Manager) Cancel(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.jobs[id]
	if !ok {
		return Job{}, ErrNotFound
	}
	if r.job.State.Final() {
		return r.job, ErrFinished
	}
	r.cancelled = true
	r.cancel(nil)
	return r.job, nil
}

// Subscribe follows job id until it ends or ctx does. The channel first
// carries the job's current state, then its changes in order, and is
// closed after the final state (at once after it, for a finished job) or
// when ctx ends.
func (m *Manager) Subscribe(ctx context.Context, id string) (<-chan Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.jobs[id]
	if !ok {
		return nil, ErrNotFound
	}
	s := &subscriber{out: make(chan Event), wake: make(chan struct{}, 1)}
	s.push(Event{Type: EventState, Job: strip(r.job)}, m.cfg.SubscriberBuffer)
	if r.job.State.Final() {
		s.end()
	} else {
		if r.subs == nil {
			r.subs = map[*subscriber]struct{}{}
		}
		r.subs[s] = struct{}{}
	}
	go s.pump(ctx, func() {
		m.mu.Lock()
		delete(r.subs, s)
		m.mu.Unlock()
	})
	return s.out, nil
}

// Drain stops taking jobs and waits until the jobs already taken have
// finished, or ctx ends: a graceful shutdown drains first and only then
// closes, so nothing accepted is dropped within the grace.
func (m *Manager) Drain(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close cancels every job not finished, waits for their run functions to
// return, and refuses new jobs. With a Store, the records of the jobs it
// cancels are left as they were saved (queued, submitted or running), so
// that the next gateway's Restore takes them up; in memory they end
// cancelled. It then waits, up to Config.FlushTimeout, for the record
// writes still pending, and gives up those that still fail (logged).
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	for _, r := range m.jobs {
		if r.cancel != nil {
			r.closing = true
			r.cancel(ErrShutdown)
		}
	}
	m.mu.Unlock()
	m.wg.Wait()
	timer, stop := clock.NewTimer(m.cfg.Clock, m.cfg.FlushTimeout)
	defer stop()
	m.mu.Lock()
	idle := m.idle
	m.mu.Unlock()
	select {
	case <-idle:
	case <-timer:
		m.cfg.Logger.Error("jobs: job records not written to the store before the stop; the journal keeps the unfinished ones",
			slog.Duration("waited", m.cfg.FlushTimeout))
	}
	m.mu.Lock()
	select {
	case <-m.stopWrites:
	default:
		close(m.stopWrites)
	}
	idle = m.idle
	m.mu.Unlock()
	<-idle // each writer stops after the write it is in, bounded by the Store
}

// Flush waits until no record write is pending or ctx ends: what has
// changed so far is then in the Store (unless writing it failed and is
// being retried, which Flush waits for too).
func (m *Manager) Flush(ctx context.Context) error {
	m.mu.Lock()
	idle := m.idle
	m.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("jobs: flush: %w", ctx.Err())
	}
}

// publish queues an event of the job as it is now for every subscriber.
// m.mu is held.
func (r *record) publish(t EventType, buf int) {
	for s := range r.subs {
		s.push(Event{Type: t, Job: strip(r.job)}, buf)
	}
}

func strip(j Job) Job {
	j.Result = nil
	return j
}

// subscriber is one follower's queue, drained by its pump goroutine into
// out. The queue holds every state event and as many progress and position
// events as the buffer allows; past that a new one replaces one of its
// type at the tail, so the queue stays bounded and never blocks the job.
type subscriber struct {
	out  chan Event
	wake chan struct{}

	mu      sync.Mutex
	pending []Event
	ended   bool // the job ended: close out once pending is drained
}

func (s *subscriber) push(e Event, buf int) {
	s.mu.Lock()
	n := len(s.pending)
	if e.Type != EventState && n >= buf && s.pending[n-1].Type == e.Type {
		s.pending[n-1] = e
	} else {
		s.pending = append(s.pending, e)
	}
	s.mu.Unlock()
	s.signal()
}

func (s *subscriber) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.signal()
}

func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pump hands the queued events to out in order; leave is called when it
// stops.
func (s *subscriber) pump(ctx context.Context, leave func()) {
	defer close(s.out)
	defer leave()
	for {
		s.mu.Lock()
		var (
			e    Event
			have = len(s.pending) > 0
			done = s.ended
		)
		if have {
			e = s.pending[0]
			s.pending = s.pending[1:]
		}
		s.mu.Unlock()
		switch {
		case have:
			select {
			case s.out <- e:
			case <-ctx.Done():
				return
			}
		case done:
			return
		default:
			select {
			case <-s.wake:
			case <-ctx.Done():
				return
			}
		}
	}
}

// RecoverFunc follows a job found running at Restore on its backend, by
// its Backend and PromptID, to its end.
type RecoverFunc func(ctx context.Context, job Job) (Result, error)

// ClaimFunc takes, for a job Restore takes up on its backend, what the job
// holds there: its GPU slot, its admission token. Restore calls it for each
// such job before it returns (so before the gateway serves anything new),
// and calls the release it returns, if not nil, exactly once when the job
// has ended, whichever way, with the job's error: nil when it succeeded,
// ErrPanicked when its RecoverFunc panicked.
type ClaimFunc func(job Job) (release func(err error))

// ResumeFunc runs again, from its input (Spec.Input, kept by the Journal),
// a job found at Restore that had not reached a backend: like a RunFunc,
// under a context of the Manager's, reporting through report. It takes
// what the job needs (an admission token, a place in the GPU queue) as a
// new job would, and releases it when it returns.
type ResumeFunc func(ctx context.Context, job Job, input []byte, report Report) (Result, error)

// Restore loads the Store's records and the Journal's entries into the
// Manager; call it once, before serving. Finished jobs are kept as they
// were (their results read from the ResultStore when asked for), within
// the bounds. Jobs that had been given to a backend under a prompt ID
// (submitted there or running) are taken up again: claim, if not nil, is
// called for each before Restore returns, then follow runs for each on a
// goroutine of its own, under a context of the Manager's like a run
// function's, and the job ends as it returns. Jobs with no prompt ID yet
// whose input the Journal kept are queued again and run by resume, if not
// nil; the others end failed with LostQueued. A journal entry with no
// record in the Store (the Store did not answer when the job came) is
// taken as the job's record and written to the Store. ctx bounds only the
// loading.
func (m *Manager) Restore(ctx context.Context, follow RecoverFunc, claim ClaimFunc, resume ResumeFunc) error {
	if m.cfg.Store == nil && m.cfg.Journal == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var loaded []Job
	if m.cfg.Store != nil {
		var err error
		loaded, err = m.cfg.Store.Load()
		switch {
		case errors.Is(err, ErrBadRecord):
			m.cfg.Logger.Error("jobs: restore: unreadable job records skipped", slog.Any("error", err))
		case err != nil:
			return fmt.Errorf("jobs: restore: %w", err)
		}
	}
	inputs, err := m.loadJournal(loaded)
	if err != nil {
		return err
	}
	for _, in := range inputs {
		if in.replay {
			loaded = append(loaded, in.job)
		}
	}
	slices.SortFunc(loaded, func(a, b Job) int { return cmp.Or(a.Finished.Compare(b.Finished), a.Created.Compare(b.Created)) })

	var lost []*record
	type resumed struct {
		r      *record
		ctx    context.Context
		cancel context.CancelCauseFunc
		input  []byte
		follow bool
	}
	var restart []resumed
	var done []string // finished jobs whose journal entry is left over
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	for _, j := range loaded {
		if _, dup := m.jobs[j.ID]; dup || j.ID == "" {
			continue
		}
		j.Result, j.QueuePosition = nil, 0
		in, journaled := inputs[j.ID]
		r := &record{job: j, journaled: journaled}
		m.jobs[j.ID] = r
		switch {
		case j.State.Final():
			for _, old := range m.keepFinished(r) {
				m.queueForget(old)
			}
			if journaled && !r.evicted {
				r.journaled = false
				done = append(done, j.ID)
			}
		case j.Backend != "" && j.PromptID != "": // submitted or running there
			ctx, cancel := context.WithCancelCause(context.Background())
			r.cancel = cancel
			m.wg.Add(1)
			restart = append(restart, resumed{r: r, ctx: ctx, cancel: cancel, follow: true})
			if in.replay {
				m.queueSave(r)
			}
		case journaled && resume != nil:
			ctx, cancel := context.WithCancelCause(context.Background())
			r.cancel = cancel
			r.job.State, r.job.Started = Queued, time.Time{}
			m.wg.Add(1)
			restart = append(restart, resumed{r: r, ctx: ctx, cancel: cancel, input: in.input})
			m.queueSave(r)
		default:
			r.cancel = func(error) {} // nothing runs: Cancel and Close have nothing to end
			m.wg.Add(1)
			lost = append(lost, r)
		}
	}
	m.mu.Unlock()

	for _, id := range done {
		m.dropJournal(id)
	}
	for _, r := range lost {
		go func() {
			defer m.wg.Done()
			m.end(r, Result{}, errors.New(LostQueued))
		}()
	}
	// Every job followed on a backend claims its slot there before any
	// queued job resumes: a resumed job must not take a slot that a job
	// still running there holds.
	releases := make([]func(error), len(restart))
	for i, x := range restart {
		if x.follow && claim != nil {
			releases[i] = claim(x.r.job)
		}
	}
	for i, x := range restart {
		job := x.r.job
		if !x.follow {
			go m.run(x.ctx, x.cancel, x.r, func(ctx context.Context, report Report) (Result, error) {
				return resume(ctx, job, x.input, report)
			})
			continue
		}
		release := releases[i]
		input, rerun := inputs[job.ID].input, resume != nil && inputs[job.ID].input != nil
		go m.run(x.ctx, x.cancel, x.r, func(ctx context.Context, report Report) (Result, error) {
			res, err := followClaimed(ctx, job, follow, release)
			if err != nil && rerun && errors.Is(err, ErrRerun) && ctx.Err() == nil {
				m.cfg.Logger.Warn("jobs: restored job gone from its backend; run again from its kept input",
					slog.String("job", job.ID), slog.String("backend", job.Backend), slog.Any("error", err))
				return resume(ctx, job, input, report)
			}
			return res, err
		})
	}
	return nil
}

// ErrRerun is wrapped by the error of a RecoverFunc when the job's backend
// no longer has the job (the backend was restarted, or is no longer
// configured) and it never ran to its end there: Restore then runs the job
// again from its journaled input, when it has one and a ResumeFunc.
var ErrRerun = errors.New("jobs: the job is gone from its backend")

// followClaimed follows job, releasing its claim once follow has returned
// (with ErrPanicked if it panicked; m.call recovers).
func followClaimed(ctx context.Context, job Job, follow RecoverFunc, release func(error)) (res Result, err error) {
	if release == nil {
		return follow(ctx, job)
	}
	ended := false
	defer func() {
		if !ended {
			err = ErrPanicked
		}
		release(err)
	}()
	res, err = follow(ctx, job)
	ended = true
	return res, err
}

// journaledInput is a journal entry as Restore reads it: the job's input,
// and, for a job the Store lacks, its record from the journal (replay).
type journaledInput struct {
	input  []byte
	job    Job
	replay bool
}

// loadJournal reads the Journal's entries, by job ID; an unreadable entry
// is logged and skipped.
func (m *Manager) loadJournal(stored []Job) (map[string]journaledInput, error) {
	if m.cfg.Journal == nil {
		return nil, nil
	}
	raw, err := m.cfg.Journal.Inputs()
	if err != nil {
		return nil, fmt.Errorf("jobs: restore: journal: %w", err)
	}
	inStore := make(map[string]bool, len(stored))
	for _, j := range stored {
		inStore[j.ID] = true
	}
	out := make(map[string]journaledInput, len(raw))
	for id, b := range raw {
		j, input, err := readEntry(b)
		if err != nil || j.ID != id {
			m.cfg.Logger.Error("jobs: restore: unreadable journal entry skipped", slog.String("job", id), slog.Any("error", err))
			continue
		}
		out[id] = journaledInput{input: input, job: j, replay: !inStore[id]}
	}
	return out, nil
}
