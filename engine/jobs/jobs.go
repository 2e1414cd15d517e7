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
)

// State is where a job is in its life.
type State string

// The states of a job. Succeeded, Failed and Cancelled are final.
const (
	Queued    State = "queued"
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
	Tenant   string
	Resource string
	Params   Params
	// Webhook, if set, is the URL told when the job ends (Config.OnFinish
	// delivers it).
	Webhook string
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
	// started". Call it from one goroutine at a time; it does not block.
	Progress func(value, max int)
	// Started says where the job runs: the backend and the prompt ID it
	// was given there (it may still wait in that backend's queue; its
	// state is left as it is). It saves the job's record at once, so it
	// may block on the Store: a restarted gateway finds the job again by
	// these two.
	Started func(backend, promptID string)
	// Queued says the job waits for a GPU slot, with a function telling its
	// place in the queue (0 once it no longer waits): the job's
	// QueuePosition while it is queued.
	Queued func(position func() int)
}

// RunFunc runs a job under ctx, reporting through report as it goes.
type RunFunc func(ctx context.Context, report Report) (Result, error)

// Job is a snapshot of a job's record.
type Job struct {
	ID       string    `json:"id"`
	Tenant   string    `json:"-"`
	Resource string    `json:"resource"`
	Params   Params    `json:"params"`
	State    State     `json:"state"`
	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Progress Progress  `json:"progress"`
	// QueuePosition is the job's place in the queue while queued; 0 when
	// unknown.
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

	// resultKey names the job's result in the ResultStore once stored.
	resultKey string
}

// EventType says what an Event reports.
type EventType string

// Event types.
const (
	EventProgress EventType = "progress"
	EventState    EventType = "state"
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
	// Logger receives the Store's and ResultStore's failures, which never
	// fail a job. Default: discard.
	Logger *slog.Logger
}

// Store keeps job records. Save is called on every state change and when a
// job is started on its backend (not on progress), Delete when a finished
// job is forgotten, Load once by Restore. Save is never called for one job
// from two goroutines at once. A Load that meets records it cannot read
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

// LostQueued is the error of a job found queued at Restore: it had not
// reached a backend, and its input is not kept, so it cannot be run.
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

	saveMu sync.Mutex // orders the record's saves and its deletion
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, jobs: map[string]*record{}}
}

// Submit records a queued job and starts run on a goroutine of its own. It
// returns ErrClosed, without calling run, once Close has begun.
func (m *Manager) Submit(spec Spec, run RunFunc) (Job, error) {
	ctx, cancel := context.WithCancelCause(context.Background())
	r := &record{
		job: Job{
			ID: uuid.NewString(), Tenant: spec.Tenant, Resource: spec.Resource, Params: spec.Params, Webhook: spec.Webhook,
			State: Queued, Created: m.cfg.Clock.Now(),
		},
		cancel: cancel,
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cancel(ErrClosed)
		return Job{}, ErrClosed
	}
	m.jobs[r.job.ID] = r
	m.wg.Add(1)
	snap := r.job
	m.mu.Unlock()

	m.save(r)
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
	return run(ctx, Report{
		Progress: func(value, max int) { m.progress(r, value, max) },
		Started:  func(backend, promptID string) { m.started(r, backend, promptID) },
		Queued: func(position func() int) {
			m.mu.Lock()
			r.position = position
			m.mu.Unlock()
		},
	})
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

// end records the end of a job, stores its result and its record, forgets
// what the bounds evict, and tells OnFinish.
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
	final, evicted, keep := m.finish(r, res, err, stored)
	final.Result = data
	if !keep {
		m.save(r)
	}
	for _, old := range evicted {
		m.forget(old)
	}
	m.notify(final)
}

// id is the job's ID, which never changes.
func (r *record) id() string { return r.job.ID }

// started records where the job runs and saves it.
func (m *Manager) started(r *record, backend, promptID string) {
	m.mu.Lock()
	if r.job.State.Final() {
		m.mu.Unlock()
		return
	}
	r.job.Backend, r.job.PromptID = backend, promptID
	m.mu.Unlock()
	m.save(r)
}

// markRunning makes a queued job running. m.mu is held.
func (m *Manager) markRunning(r *record) bool {
	if r.job.State != Queued {
		return false
	}
	r.job.State = Running
	r.job.Started = m.cfg.Clock.Now()
	r.job.QueuePosition = 0
	r.publish(EventState, m.cfg.SubscriberBuffer)
	return true
}

// save writes the record as it is now to the Store. Saves of one record
// are serialised and each writes the latest state, so an older state never
// overwrites a newer one; a forgotten record is never saved again.
func (m *Manager) save(r *record) {
	if m.cfg.Store == nil {
		return
	}
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	m.mu.Lock()
	j, gone := r.job, r.evicted
	m.mu.Unlock()
	if gone {
		return
	}
	j.Result = nil
	if err := m.cfg.Store.Save(j); err != nil {
		m.cfg.Logger.Error("jobs: saving a job record failed", slog.String("job", j.ID), slog.Any("error", err))
	}
}

// forget deletes an evicted job's record and result.
func (m *Manager) forget(r *record) {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	if m.cfg.Store != nil {
		if err := m.cfg.Store.Delete(r.id()); err != nil {
			m.cfg.Logger.Error("jobs: deleting a job record failed", slog.String("job", r.id()), slog.Any("error", err))
		}
	}
	if m.cfg.Results != nil && r.job.resultKey != "" {
		if err := m.cfg.Results.Delete(r.job.resultKey); err != nil {
			m.cfg.Logger.Error("jobs: deleting a result failed", slog.String("job", r.id()), slog.Any("error", err))
		}
	}
}

// progress records a progress report; the first makes the job running.
func (m *Manager) progress(r *record, value, max int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.job.State.Final() {
		return
	}
	if m.markRunning(r) && m.cfg.Store != nil {
		// Saved off the caller's goroutine: progress does not block.
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.save(r)
		}()
	}
	if max <= 0 && value <= 0 {
		return // only "started"
	}
	r.job.Progress = Progress{Value: value, Max: max}
	r.publish(EventProgress, m.cfg.SubscriberBuffer)
}

// finish records the end of a job, forgets the oldest finished jobs beyond
// the bounds, and returns the job as it ended, the records evicted, and
// whether its stored record is to be kept as it was (Close ended it).
func (m *Manager) finish(r *record, res Result, err error, stored bool) (Job, []*record, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := &r.job
	j.Finished = m.cfg.Clock.Now()
	j.QueuePosition = 0
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
	return *j, m.keepFinished(r), r.closing && !r.cancelled && m.cfg.Store != nil
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
// cancels are left as they were saved (queued or running), so that the
// next gateway's Restore takes them up; in memory they end cancelled.
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
// out. The queue holds every state event and as many progress events as the
// buffer allows; past that a new progress event replaces a progress event
// at the tail, so the queue stays bounded and never blocks the job.
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
	if e.Type == EventProgress && n >= buf && s.pending[n-1].Type == EventProgress {
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

// Restore loads the Store's records into the Manager; call it once, before
// serving. Finished jobs are kept as they were (their results read from
// the ResultStore when asked for), within the bounds. Jobs that had been
// given to a backend under a prompt ID (queued there or running) are taken
// up again: claim, if not nil, is called for each before Restore returns,
// then follow runs for each on a goroutine of its own, under a context of
// the Manager's like a run function's, and the job ends as it returns.
// Jobs with no prompt ID yet end failed with LostQueued: their input (an
// uploaded image) was never stored. ctx bounds only the loading.
func (m *Manager) Restore(ctx context.Context, follow RecoverFunc, claim ClaimFunc) error {
	if m.cfg.Store == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	loaded, err := m.cfg.Store.Load()
	switch {
	case errors.Is(err, ErrBadRecord):
		m.cfg.Logger.Error("jobs: restore: unreadable job records skipped", slog.Any("error", err))
	case err != nil:
		return fmt.Errorf("jobs: restore: %w", err)
	}
	slices.SortFunc(loaded, func(a, b Job) int { return cmp.Or(a.Finished.Compare(b.Finished), a.Created.Compare(b.Created)) })

	var evicted, lost []*record
	type resumed struct {
		r      *record
		ctx    context.Context
		cancel context.CancelCauseFunc
	}
	var resume []resumed
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
		r := &record{job: j}
		m.jobs[j.ID] = r
		switch {
		case j.State.Final():
			evicted = append(evicted, m.keepFinished(r)...)
		case j.Backend != "" && j.PromptID != "": // queued or running there
			ctx, cancel := context.WithCancelCause(context.Background())
			r.cancel = cancel
			m.wg.Add(1)
			resume = append(resume, resumed{r, ctx, cancel})
		default:
			r.cancel = func(error) {} // nothing runs: Cancel and Close have nothing to end
			m.wg.Add(1)
			lost = append(lost, r)
		}
	}
	m.mu.Unlock()

	for _, r := range evicted {
		m.forget(r)
	}
	for _, r := range lost {
		go func() {
			defer m.wg.Done()
			m.end(r, Result{}, errors.New(LostQueued))
		}()
	}
	for _, x := range resume {
		job := x.r.job
		var release func(error)
		if claim != nil {
			release = claim(job)
		}
		go m.run(x.ctx, x.cancel, x.r, func(ctx context.Context, _ Report) (res Result, err error) {
			if release != nil {
				ended := false
				defer func() {
					if !ended {
						err = ErrPanicked // follow panicked; m.call recovers
					}
					release(err)
				}()
				res, err = follow(ctx, job)
				ended = true
				return res, err
			}
			return follow(ctx, job)
		})
	}
	return nil
}
