package jobs

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/uuid"
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

// RunFunc runs a job under ctx, calling progress as it goes (from any one
// goroutine at a time; it does not block).
type RunFunc func(ctx context.Context, progress func(value, max int)) (Result, error)

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

// Clock tells the time.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config configures a Manager; the zero value is usable.
type Config struct {
	// Clock stamps the jobs' times; the system clock by default.
	Clock Clock
	// MaxFinished is how many finished jobs are kept (default 1000).
	MaxFinished int
	// MaxResultBytes bounds the result bytes kept in all (default 512 MiB).
	MaxResultBytes int64
	// SubscriberBuffer is how many events a subscriber may fall behind
	// before its intermediate progress events are dropped (default 16).
	SubscriberBuffer int
	// OnFinish, if set, is called with every job that reaches its final
	// state, on the job's own goroutine, outside the Manager's lock (the
	// webhook is sent from here). Drain and Close wait for it.
	OnFinish func(Job)
}

// Errors of Get, Cancel, Subscribe and Submit.
var (
	ErrNotFound = errors.New("jobs: no such job")
	ErrFinished = errors.New("jobs: job already finished")
	ErrClosed   = errors.New("jobs: manager closed")
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
	cancel    context.CancelFunc
	cancelled bool // Cancel was called
	subs      map[*subscriber]struct{}
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.MaxFinished <= 0 {
		cfg.MaxFinished = 1000
	}
	if cfg.MaxResultBytes <= 0 {
		cfg.MaxResultBytes = 512 << 20
	}
	if cfg.SubscriberBuffer <= 0 {
		cfg.SubscriberBuffer = 16
	}
	return &Manager{cfg: cfg, jobs: map[string]*record{}}
}

// Submit records a queued job and starts run on a goroutine of its own. It
// returns ErrClosed, without calling run, once Close has begun.
func (m *Manager) Submit(spec Spec, run RunFunc) (Job, error) {
	ctx, cancel := context.WithCancel(context.Background())
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
		cancel()
		return Job{}, ErrClosed
	}
	m.jobs[r.job.ID] = r
	m.wg.Add(1)
	snap := r.job
	m.mu.Unlock()

	go func() {
		defer m.wg.Done()
		defer cancel()
		res, err := run(ctx, func(value, max int) { m.progress(r, value, max) })
		final := m.finish(r, res, err)
		if m.cfg.OnFinish != nil {
			m.cfg.OnFinish(final)
		}
	}()
	return snap, nil
}

// progress records a progress report; the first makes the job running.
func (m *Manager) progress(r *record, value, max int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.job.State.Final() {
		return
	}
	if r.job.State == Queued {
		r.job.State = Running
		r.job.Started = m.cfg.Clock.Now()
		r.job.QueuePosition = 0
		r.publish(EventState, m.cfg.SubscriberBuffer)
	}
	if max <= 0 && value <= 0 {
		return // only "started"
	}
	r.job.Progress = Progress{Value: value, Max: max}
	r.publish(EventProgress, m.cfg.SubscriberBuffer)
}

// finish records the end of a job, forgets the oldest finished jobs beyond
// the bounds, and returns the job as it ended.
func (m *Manager) finish(r *record, res Result, err error) Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := &r.job
	j.Finished = m.cfg.Clock.Now()
	j.QueuePosition = 0
	switch {
	case err == nil:
		j.State = Succeeded
		j.PromptID, j.Result, j.ContentType = res.PromptID, res.Data, res.ContentType
		if j.Started.IsZero() {
			j.Started = j.Finished
		}
		if j.Progress.Max > 0 {
			j.Progress.Value = j.Progress.Max
		}
	case r.cancelled:
		j.State, j.Error = Cancelled, "cancelled"
	default:
		j.State, j.Error = Failed, err.Error()
	}
	r.publish(EventState, m.cfg.SubscriberBuffer)
	for s := range r.subs {
		s.end()
	}
	r.subs = nil
	r.cancel = nil

	m.finished = append(m.finished, j.ID)
	m.resultBytes += int64(len(j.Result))
	final := *j
	for len(m.finished) > m.cfg.MaxFinished || (m.resultBytes > m.cfg.MaxResultBytes && len(m.finished) > 1) {
		old := m.finished[0]
		m.finished = m.finished[1:]
		m.resultBytes -= int64(len(m.jobs[old].job.Result))
		delete(m.jobs, old)
	}
	return final
}

// Get returns a snapshot of job id.
func (m *Manager) Get(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.jobs[id]
	if !ok {
		return Job{}, ErrNotFound
	}
	return r.job, nil
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
	r.cancel()
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
// return, and refuses new jobs.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	for _, r := range m.jobs {
		if r.cancel != nil {
			r.cancelled = true
			r.cancel()
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
