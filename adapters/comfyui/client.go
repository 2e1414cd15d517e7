package comfyui

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/sluicehq/sluice/engine/clock"
)

// Config configures a Client. Only BaseURL is required.
type Config struct {
	// BaseURL is the ComfyUI server, e.g. http://127.0.0.1:8188.
	BaseURL string
	// HTTPClient makes every request, the WebSocket handshake included.
	// Default http.DefaultClient. Leave its Timeout at zero: jobs run long
	// and every call is bounded by its context.
	HTTPClient *http.Client
	// Logger receives warnings about degraded operation (no WebSocket,
	// failed polls, failed clean-up, lost prompts). Default: discard.
	Logger *slog.Logger
	// PollInterval is how often /history is polled as the fallback to the
	// WebSocket. Default 1s.
	PollInterval time.Duration
	// QueueCheckInterval is how long the WebSocket may say nothing about a
	// prompt before GET /queue is asked whether the prompt is still there:
	// ComfyUI sends no event for a prompt deleted from its queue or lost in
	// a restart. Default 3s.
	QueueCheckInterval time.Duration
	// OnConnection, if set, is called when the client's WebSocket connects
	// (up, nil err) or breaks or cannot connect (not up, with why): a health
	// signal. It is called on state changes only, from the client's
	// WebSocket goroutine, and must return quickly.
	OnConnection func(up bool, err error)
	// Clock times polls, queue checks and reconnects. Default the system
	// clock; tests pass a *clock.Fake.
	Clock clock.Clock
	// Workflows are the templates jobs are bound to. Default DefaultWorkflows().
	Workflows *Workflows
}

// Client runs jobs on one ComfyUI server. It is safe for concurrent use.
// All its jobs share one WebSocket to the server, opened by the first Run
// under one client_id and reconnected with backoff until Close; each
// event goes to the Run waiting for its prompt.
type Client struct {
	base      string
	http      *http.Client
	log       *slog.Logger
	poll      time.Duration
	quiet     time.Duration
	clock     clock.Clock
	onConn    func(up bool, err error)
	workflows *Workflows
	clientID  string

	wsCtx  context.Context // ends at Close
	wsStop context.CancelFunc
	ready  chan struct{} // closed once the first connection attempt greeted or failed

	mu        sync.Mutex
	waiters   map[string]*waiter // by prompt id
	executing string             // the prompt of this client ComfyUI runs, from its events
	wsStarted bool
	wsDone    chan struct{}
	wsState   wsState
	closed    bool
}

// NewClient checks cfg and returns a Client. It does not contact the server:
// the WebSocket opens with the first Run. Close the client when done.
func NewClient(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("comfyui: base URL %q: %w", cfg.BaseURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("comfyui: base URL %q: want http://host:port or https://host:port", cfg.BaseURL)
	}
	if cfg.PollInterval < 0 {
		return nil, fmt.Errorf("comfyui: poll interval must be > 0, got %s", cfg.PollInterval)
	}
	if cfg.QueueCheckInterval < 0 {
		return nil, fmt.Errorf("comfyui: queue check interval must be > 0, got %s", cfg.QueueCheckInterval)
	}
	c := &Client{
		base:      strings.TrimSuffix(u.String(), "/"),
		http:      cfg.HTTPClient,
		log:       cfg.Logger,
		poll:      cfg.PollInterval,
		quiet:     cfg.QueueCheckInterval,
		clock:     clock.Or(cfg.Clock),
		onConn:    cfg.OnConnection,
		workflows: cfg.Workflows,
		clientID:  uuid.NewString(),
		ready:     make(chan struct{}),
		waiters:   map[string]*waiter{},
	}
	c.wsCtx, c.wsStop = context.WithCancel(context.Background())
	if c.http == nil {
		c.http = http.DefaultClient
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.poll == 0 {
		c.poll = time.Second
	}
	if c.quiet == 0 {
		c.quiet = 3 * time.Second
	}
	if c.workflows == nil {
		c.workflows = DefaultWorkflows()
	}
	return c, nil
}

// Workflows returns the templates the client binds jobs to.
func (c *Client) Workflows() *Workflows { return c.workflows }

// Job is one image job. Resource selects the workflow template; a zero
// parameter keeps the template's value (see Workflows.Bind).
type Job struct {
	Resource       string // "ddcolor_person", "ddcolor_building", "zimage_generate"
	Image          []byte // input image for DDColor; nil for Z-Image
	ImageName      string // upload file name; default UploadName(Image)
	Size           int    // DDColor model_input_size
	Prompt         string
	NegativePrompt string // ignored by the Z-Image-Turbo template; recorded in extra_data
	Width, Height  int
	Steps          int
	Seed           int64

	// The callbacks below, if set, are called from Run's goroutine and
	// must return quickly.

	// OnProgress is called with each progress event of the prompt.
	OnProgress func(value, max int)
	// OnExecuted is called once the prompt has finished executing, before
	// its output is fetched: from then on ComfyUI is free for its next
	// prompt.
	OnExecuted func()
	// OnQueued is called once ComfyUI has accepted the prompt, with its
	// ID: Recover follows it from there. It is called again with the new
	// ID when a lost prompt is queued again.
	OnQueued func(promptID string)
	// OnQueuePosition is called with the prompt's place in ComfyUI's own
	// queue whenever it changes while the prompt waits there: 1 when
	// nothing is ahead of it, the prompts running or queued before it
	// (in ComfyUI's number order) counting as ahead. It is read from
	// GET /queue right after queueing and whenever ComfyUI's queue
	// changes.
	OnQueuePosition func(position int)
	// OnRunning is called once, when the prompt starts executing (or,
	// if that was not seen, when it is found finished).
	OnRunning func()
}

// UploadName is the name Run uploads an image under when Job.ImageName is
// empty: "sluice-" and the first 128 bits of the SHA-256 of its bytes in
// hex, with the extension of its type. The same image has the same name, so
// it is stored once on each ComfyUI however often it is sent (uploads
// overwrite).
func UploadName(image []byte) string {
	sum := sha256.Sum256(image)
	ext := ".bin"
	switch http.DetectContentType(image) {
	case "image/png":
		ext = ".png"
	case "image/jpeg":
		ext = ".jpg"
	case "image/webp":
		ext = ".webp"
	case "image/gif":
		ext = ".gif"
	case "image/bmp":
		ext = ".bmp"
	}
	return "sluice-" + hex.EncodeToString(sum[:16]) + ext
}

// Result is a finished job: the first output image and its timings.
type Result struct {
	PromptID    string
	Image       []byte
	ContentType string
	Filename    string
	Subfolder   string
	Queued      time.Time // POST /prompt accepted
	Started     time.Time // execution began (zero if never seen)
	Finished    time.Time // completion seen
}

// Run uploads the job's image, queues its workflow and waits for it to finish,
// following the client's WebSocket, checking GET /queue when it is quiet
// and polling /history, then fetches the first output image. A prompt that
// leaves ComfyUI's queue without a history entry (deleted, or lost in a
// restart) is queued once more if it had not started, else Run returns
// ErrPromptLost. Errors are *PromptError (refused), *ExecutionError (failed
// while running), ErrInterrupted, ErrPromptLost, *HTTPError, or transport
// errors, all wrapped with context. When ctx ends after the prompt may have
// been queued, Run removes it from the queue and interrupts it, then
// returns ctx.Err() wrapped.
func (c *Client) Run(ctx context.Context, job Job) (*Result, error) {
	name := job.ImageName
	if job.Image != nil && name == "" {
		name = UploadName(job.Image)
	}
	// Bind before uploading, so that a bad job costs nothing.
	wf, err := c.workflows.Bind(job, name)
	if err != nil {
		return nil, err
	}
	if job.Image != nil {
		ref, err := c.upload(ctx, name, job.Image)
		if err != nil {
			return nil, err
		}
		if ref != name {
			if wf, err = c.workflows.Bind(job, ref); err != nil {
				return nil, err
			}
		}
	}
	extra := map[string]any{"sluice": map[string]any{"resource": job.Resource}}
	if job.NegativePrompt != "" {
		extra["sluice"].(map[string]any)["negative_prompt"] = job.NegativePrompt
	}
	c.connect(ctx)
	for attempt := 1; ; attempt++ {
		res, started, err := c.runOnce(ctx, &job, wf, extra)
		if attempt == 1 && !started && errors.Is(err, ErrPromptLost) && ctx.Err() == nil {
			c.log.Warn("comfyui: prompt lost before it started, queueing it again", slog.String("resource", job.Resource), slog.Any("err", err))
			continue
		}
		return res, err
	}
}

// runOnce queues wf and follows it; started reports whether the prompt was
// seen running.
func (c *Client) runOnce(ctx context.Context, job *Job, wf Workflow, extra map[string]any) (_ *Result, started bool, _ error) {
	promptID := uuid.NewString()
	log := c.log.With(slog.String("resource", job.Resource), slog.String("prompt_id", promptID))
	w := c.register(promptID, job.OnQueuePosition != nil)
	defer func() { c.unregister(promptID, w) }()

	id, err := c.queue(ctx, promptID, c.clientID, wf, extra, log)
	if err != nil {
		if ctx.Err() != nil {
			c.abandonUnlessDetached(ctx, promptID, log)
			return nil, false, fmt.Errorf("comfyui: prompt %s: %w", promptID, ctx.Err())
		}
		return nil, false, err
	}
	if id != promptID {
		c.rekey(promptID, id, w)
		promptID = id
		log = c.log.With(slog.String("resource", job.Resource), slog.String("prompt_id", id))
	}
	f := &follow{id: id, w: w, job: job, res: &Result{PromptID: id, Queued: c.clock.Now()}, log: log, checkFirst: job.OnQueuePosition != nil}
	if job.OnQueued != nil {
		job.OnQueued(id)
	}
	img, err := c.await(ctx, f)
	if err != nil {
		if ctx.Err() != nil {
			c.abandonUnlessDetached(ctx, id, log)
			return nil, f.started, fmt.Errorf("comfyui: prompt %s: %w", id, ctx.Err())
		}
		return nil, f.started, err
	}
	res, err := c.fetch(ctx, f, img)
	return res, true, err
}

// fetch ends a prompt that finished: the callbacks not made yet, then its
// output image.
func (c *Client) fetch(ctx context.Context, f *follow, img imageRef) (*Result, error) {
	f.running()
	f.executed()
	res := f.res
	var err error
	if res.Image, res.ContentType, err = c.view(ctx, img); err != nil {
		return nil, fmt.Errorf("comfyui: prompt %s: %w", f.id, err)
	}
	res.Filename, res.Subfolder = img.Filename, img.Subfolder
	return res, nil
}

// Recover follows a prompt queued earlier, perhaps by another process (a
// gateway before its restart), polling /history and checking /queue until
// it has finished or ctx ends, then fetches its first output image. A
// prompt in neither the queue nor the history is ErrPromptLost at once.
// Unlike Run it never removes or interrupts the prompt when ctx ends, nor
// queues a lost one again. Errors are those of Run.
func (c *Client) Recover(ctx context.Context, promptID string) (*Result, error) {
	log := c.log.With(slog.String("prompt_id", promptID))
	f := &follow{id: promptID, job: &Job{}, res: &Result{PromptID: promptID}, log: log, checkFirst: true}
	img, err := c.await(ctx, f)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("comfyui: prompt %s: %w", promptID, ctx.Err())
		}
		return nil, err
	}
	return c.fetch(ctx, f, img)
}

// follow is the state of one wait for a prompt.
type follow struct {
	id         string
	w          *waiter // nil: no events (Recover)
	job        *Job    // its callbacks
	res        *Result
	log        *slog.Logger
	checkFirst bool // check /queue before the first wait
	started    bool // seen running
	place      int  // last place reported
	done       bool // OnExecuted called
}

// running records that the prompt runs, once.
func (f *follow) running() {
	if f.started {
		return
	}
	f.started = true
	if f.job.OnRunning != nil {
		f.job.OnRunning()
	}
}

// executed calls OnExecuted, once.
func (f *follow) executed() {
	if f.done {
		return
	}
	f.done = true
	if f.job.OnExecuted != nil {
		f.job.OnExecuted()
	}
}

// await follows prompt f.id to its end and returns its first output image.
func (c *Client) await(ctx context.Context, f *follow) (imageRef, error) {
	pollC, stopPoll := clock.NewTimer(c.clock, c.poll)
	quietC, stopQuiet := clock.NewTimer(c.clock, c.quiet)
	defer func() { stopPoll(); stopQuiet() }()
	var msgs <-chan wsEvent
	var kick <-chan struct{}
	if f.w != nil {
		msgs, kick = f.w.events, f.w.kick
	}
	last := c.clock.Now() // of the last event of the prompt
	if f.checkFirst {
		if img, done, err := c.checkQueue(ctx, f); done {
			return img, err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return imageRef{}, ctx.Err()
		case <-pollC:
			pollC, stopPoll = clock.NewTimer(c.clock, c.poll)
			if img, done, err := c.pollHistory(ctx, f); done {
				return img, err
			}
			continue
		case <-quietC:
			if idle := c.clock.Now().Sub(last); idle < c.quiet {
				quietC, stopQuiet = clock.NewTimer(c.clock, c.quiet-idle)
				continue
			}
			quietC, stopQuiet = clock.NewTimer(c.clock, c.quiet)
			if img, done, err := c.checkQueue(ctx, f); done {
				return img, err
			}
			continue
		case <-kick:
			if img, done, err := c.checkQueue(ctx, f); done {
				return img, err
			}
			continue
		case m := <-msgs:
			now := c.clock.Now()
			last = now
			switch m.Type {
			case "execution_start", "progress":
				c.started(f, now)
				if m.Type == "progress" && f.job.OnProgress != nil {
					f.job.OnProgress(m.Data.Value, m.Data.Max)
				}
				continue
			case "executing":
				if m.Data.Node != nil {
					c.started(f, now)
					continue
				}
				setOnce(&f.res.Finished, now)
				f.running()
				f.executed()
			case "execution_success":
				setOnce(&f.res.Finished, now)
				f.running()
				f.executed()
			case "execution_error":
				setOnce(&f.res.Finished, now)
				return imageRef{}, m.Data.executionError(f.id)
			case "execution_interrupted":
				setOnce(&f.res.Finished, now)
				return imageRef{}, fmt.Errorf("%w (prompt %s)", ErrInterrupted, f.id)
			default:
				continue
			}
		}
		// The prompt has ended. After execution_success ComfyUI writes the
		// history entry, then announces a queue change and sends executing
		// {node: null}: read the history now, and if it is not there yet,
		// again at the next of those.
		if img, done, err := c.pollHistory(ctx, f); done {
			return img, err
		}
		if f.w != nil {
			c.setEnded(f.w)
		}
	}
}

// started records that f's prompt runs, seen at now.
func (c *Client) started(f *follow, now time.Time) {
	if f.started {
		return
	}
	setOnce(&f.res.Started, now)
	if f.w != nil {
		c.setStarted(f.w)
	}
	f.running()
}

// pollHistory reads /history; done reports that the prompt has ended.
func (c *Client) pollHistory(ctx context.Context, f *follow) (img imageRef, done bool, err error) {
	h, err := c.history(ctx, f.id)
	if err != nil {
		if ctx.Err() != nil {
			return img, true, ctx.Err()
		}
		f.log.Warn("comfyui: polling history failed", slog.Any("err", err))
		return img, false, nil
	}
	if h == nil {
		return img, false, nil
	}
	img, err = h.outcome(f.id, f.res)
	return img, true, err
}

// checkQueue asks GET /queue where f's prompt is: it reports its place or
// that it runs; a prompt in neither the queue nor the history is lost. done
// reports that the prompt has ended.
func (c *Client) checkQueue(ctx context.Context, f *follow) (img imageRef, done bool, err error) {
	q, err := c.queueState(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return img, true, ctx.Err()
		}
		f.log.Warn("comfyui: checking the queue failed", slog.Any("err", err))
		return img, false, nil
	}
	running, place, ok := q.place(f.id)
	switch {
	case ok && running:
		c.started(f, c.clock.Now())
		return img, false, nil
	case ok:
		if place != f.place && !f.started {
			f.place = place
			if f.job.OnQueuePosition != nil {
				f.job.OnQueuePosition(place)
			}
		}
		return img, false, nil
	}
	// Gone from the queue: ComfyUI writes the history entry in the same
	// step, so a prompt that ran has one now.
	h, err := c.history(ctx, f.id)
	if err != nil {
		if ctx.Err() != nil {
			return img, true, ctx.Err()
		}
		f.log.Warn("comfyui: reading history failed", slog.Any("err", err))
		return img, false, nil
	}
	if h != nil {
		img, err = h.outcome(f.id, f.res)
		return img, true, err
	}
	f.log.Warn("comfyui: prompt lost: in neither the queue nor the history")
	return img, true, fmt.Errorf("%w (prompt %s is in neither the queue nor the history of %s)", ErrPromptLost, f.id, c.base)
}

// queueEntry is the start of an entry of GET /queue: [number, prompt_id, ...].
type queueEntry struct {
	number float64
	id     string
}

// queueSnapshot is GET /queue: the prompts running and those pending.
type queueSnapshot struct {
	running []queueEntry
	pending []queueEntry
}

// place finds prompt id: whether it runs, else its place (1 + the prompts
// running or pending before it, by number then id as ComfyUI's heap orders
// them); ok is false when it is in neither list.
func (q *queueSnapshot) place(id string) (running bool, place int, ok bool) {
	for _, e := range q.running {
		if e.id == id {
			return true, 0, true
		}
	}
	i := slices.IndexFunc(q.pending, func(e queueEntry) bool { return e.id == id })
	if i < 0 {
		return false, 0, false
	}
	me := q.pending[i]
	place = 1 + len(q.running)
	for _, e := range q.pending {
		if e.number < me.number || e.number == me.number && e.id < me.id {
			place++
		}
	}
	return false, place, true
}

// queueState reads GET /queue.
func (c *Client) queueState(ctx context.Context) (*queueSnapshot, error) {
	var raw struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if err := c.getJSON(ctx, "/queue", &raw); err != nil {
		return nil, err
	}
	entries := func(list [][]json.RawMessage) ([]queueEntry, error) {
		out := make([]queueEntry, 0, len(list))
		for _, item := range list {
			var e queueEntry
			if len(item) < 2 || json.Unmarshal(item[0], &e.number) != nil || json.Unmarshal(item[1], &e.id) != nil {
				return nil, fmt.Errorf("comfyui: GET /queue: an entry is not [number, prompt_id, ...]")
			}
			out = append(out, e)
		}
		return out, nil
	}
	var q queueSnapshot
	var err error
	if q.running, err = entries(raw.Running); err != nil {
		return nil, err
	}
	if q.pending, err = entries(raw.Pending); err != nil {
		return nil, err
	}
	return &q, nil
}

func setOnce(t *time.Time, now time.Time) {
	if t.IsZero() {
		*t = now
	}
}

// abandon removes prompt id from the queue and interrupts it if it runs. It
// uses its own short deadline: ctx has ended.
// ErrDetached, as the cause of a cancelled context, tells Run to leave the
// prompt queued or running on ComfyUI instead of removing it: the caller
// (a gateway going down with a job store) will take it up again with
// Recover.
var ErrDetached = errors.New("comfyui: detached; the prompt is left to run")

func (c *Client) abandonUnlessDetached(ctx context.Context, id string, log *slog.Logger) {
	if errors.Is(context.Cause(ctx), ErrDetached) {
		log.Info("comfyui: prompt left to run for a later recovery")
		return
	}
	c.abandon(ctx, id, log)
}

func (c *Client) abandon(ctx context.Context, id string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := c.postJSON(ctx, "/queue", map[string]any{"delete": []string{id}}, nil); err != nil {
		log.Warn("comfyui: deleting abandoned prompt failed", slog.Any("err", err))
	}
	if err := c.postJSON(ctx, "/interrupt", map[string]any{"prompt_id": id}, nil); err != nil {
		log.Warn("comfyui: interrupting abandoned prompt failed", slog.Any("err", err))
	}
}

const (
	cleanupTimeout = 5 * time.Second
	maxJSONBody    = 64 << 20
	maxImageBody   = 256 << 20
)

// upload posts an image to /upload/image, overwriting a file of the same
// name, and returns the name a LoadImage node uses for it.
func (c *Client) upload(ctx context.Context, name string, data []byte) (string, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="image"; filename="%s"`, quoteEscaper.Replace(name)))
	h.Set("Content-Type", http.DetectContentType(data))
	part, err := mw.CreatePart(h)
	if err != nil {
		return "", err
	}
	part.Write(data) // a bytes.Buffer does not fail
	mw.WriteField("overwrite", "true")
	mw.WriteField("type", "input")
	mw.Close()

	var out struct {
		Name      string `json:"name"`
		Subfolder string `json:"subfolder"`
		Type      string `json:"type"`
	}
	status, _, body, err := c.do(ctx, http.MethodPost, "/upload/image", nil, mw.FormDataContentType(), buf.Bytes(), maxJSONBody)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", &HTTPError{Method: http.MethodPost, Endpoint: "/upload/image", StatusCode: status, Body: excerpt(body)}
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Name == "" {
		return "", fmt.Errorf("comfyui: POST /upload/image: unexpected answer %q", excerpt(body))
	}
	ref := out.Name
	if out.Subfolder != "" {
		ref = out.Subfolder + "/" + ref
	}
	if out.Type != "" && out.Type != "input" {
		ref += " [" + out.Type + "]"
	}
	return ref, nil
}

var quoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// queue posts the prompt and returns the id ComfyUI runs it under.
func (c *Client) queue(ctx context.Context, promptID, clientID string, wf Workflow, extra map[string]any, log *slog.Logger) (string, error) {
	payload, err := json.Marshal(map[string]any{
		"prompt":     wf,
		"client_id":  clientID,
		"prompt_id":  promptID,
		"extra_data": extra,
	})
	if err != nil {
		return "", fmt.Errorf("comfyui: encoding prompt: %w", err)
	}
	status, _, body, err := c.do(ctx, http.MethodPost, "/prompt", nil, "application/json", payload, maxJSONBody)
	if err != nil {
		return "", err
	}
	switch status {
	case http.StatusOK:
		var out struct {
			PromptID   string          `json:"prompt_id"`
			NodeErrors json.RawMessage `json:"node_errors"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return "", fmt.Errorf("comfyui: POST /prompt: unexpected answer %q", excerpt(body))
		}
		if n := bytes.TrimSpace(out.NodeErrors); len(n) > 0 && string(n) != "{}" && string(n) != "[]" {
			log.Warn("comfyui: prompt queued with node errors", slog.String("node_errors", excerpt(n)))
		}
		if out.PromptID == "" {
			return promptID, nil
		}
		return out.PromptID, nil
	case http.StatusBadRequest:
		if pe, ok := decodePromptError(status, body); ok {
			return "", pe
		}
	}
	return "", &HTTPError{Method: http.MethodPost, Endpoint: "/prompt", StatusCode: status, Body: excerpt(body)}
}

// imageRef names an output file as /history and /view do.
type imageRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

type historyEntry struct {
	Outputs map[string]struct {
		Images []imageRef `json:"images"`
	} `json:"outputs"`
	Status *struct {
		StatusStr string              `json:"status_str"`
		Completed bool                `json:"completed"`
		Messages  [][]json.RawMessage `json:"messages"`
	} `json:"status"`
}

// history returns the history entry of prompt id, nil while it has none.
func (c *Client) history(ctx context.Context, id string) (*historyEntry, error) {
	endpoint := "/history/" + url.PathEscape(id)
	status, _, body, err := c.do(ctx, http.MethodGet, endpoint, nil, "", nil, maxJSONBody)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, &HTTPError{Method: http.MethodGet, Endpoint: endpoint, StatusCode: status, Body: excerpt(body)}
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(body, &all); err != nil {
		return nil, fmt.Errorf("comfyui: GET %s: %w", endpoint, err)
	}
	raw, ok := all[id]
	if !ok {
		return nil, nil
	}
	var h historyEntry
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("comfyui: GET %s: %w", endpoint, err)
	}
	return &h, nil
}

// outcome turns a finished prompt's history into its first output image or
// its error, and fills in res's timings the WebSocket did not give.
func (h *historyEntry) outcome(id string, res *Result) (imageRef, error) {
	var execErr *ExecutionError
	interrupted := false
	if h.Status != nil {
		for _, m := range h.Status.Messages {
			if len(m) != 2 {
				continue
			}
			var name string
			var data wsData
			if json.Unmarshal(m[0], &name) != nil || json.Unmarshal(m[1], &data) != nil {
				continue
			}
			ts := time.UnixMilli(int64(data.Timestamp))
			switch name {
			case "execution_start":
				if data.Timestamp > 0 {
					setOnce(&res.Started, ts)
				}
			case "execution_success":
				if data.Timestamp > 0 {
					setOnce(&res.Finished, ts)
				}
			case "execution_error":
				execErr = data.executionError(id)
			case "execution_interrupted":
				interrupted = true
			}
		}
		if h.Status.StatusStr == "error" || (h.Status.StatusStr != "success" && !h.Status.Completed) {
			switch {
			case execErr != nil:
				return imageRef{}, execErr
			case interrupted:
				return imageRef{}, fmt.Errorf("%w (prompt %s)", ErrInterrupted, id)
			default:
				return imageRef{}, fmt.Errorf("comfyui: prompt %s ended with status %q", id, h.Status.StatusStr)
			}
		}
	}
	ids := sortedKeys(h.Outputs)
	sortNodeIDs(ids)
	var first *imageRef
	for _, nid := range ids {
		for i, img := range h.Outputs[nid].Images {
			if img.Type == "output" || img.Type == "" {
				return img, nil
			}
			if first == nil {
				first = &h.Outputs[nid].Images[i]
			}
		}
	}
	if first != nil {
		return *first, nil
	}
	return imageRef{}, fmt.Errorf("comfyui: prompt %s finished without an output image", id)
}

// view fetches an output file.
func (c *Client) view(ctx context.Context, img imageRef) ([]byte, string, error) {
	typ := img.Type
	if typ == "" {
		typ = "output"
	}
	q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {typ}}
	status, hdr, body, err := c.do(ctx, http.MethodGet, "/view", q, "", nil, maxImageBody)
	if err != nil {
		return nil, "", err
	}
	if status != http.StatusOK {
		return nil, "", &HTTPError{Method: http.MethodGet, Endpoint: "/view?" + q.Encode(), StatusCode: status, Body: excerpt(body)}
	}
	ct := hdr.Get("Content-Type")
	if ct == "" || strings.HasPrefix(ct, "application/octet-stream") {
		ct = http.DetectContentType(body)
	}
	return body, ct, nil
}

// QueueRemaining reads GET /prompt: the prompts queued or running.
func (c *Client) QueueRemaining(ctx context.Context) (int, error) {
	var out struct {
		ExecInfo struct {
			QueueRemaining int `json:"queue_remaining"`
		} `json:"exec_info"`
	}
	if err := c.getJSON(ctx, "/prompt", &out); err != nil {
		return 0, err
	}
	return out.ExecInfo.QueueRemaining, nil
}

func (c *Client) getJSON(ctx context.Context, endpoint string, out any) error {
	status, _, body, err := c.do(ctx, http.MethodGet, endpoint, nil, "", nil, maxJSONBody)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return &HTTPError{Method: http.MethodGet, Endpoint: endpoint, StatusCode: status, Body: excerpt(body)}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("comfyui: GET %s: %w", endpoint, err)
	}
	return nil
}

func (c *Client) postJSON(ctx context.Context, endpoint string, in, out any) error {
	payload, err := json.Marshal(in)
	if err != nil {
		return err
	}
	status, _, body, err := c.do(ctx, http.MethodPost, endpoint, nil, "application/json", payload, maxJSONBody)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return &HTTPError{Method: http.MethodPost, Endpoint: endpoint, StatusCode: status, Body: excerpt(body)}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("comfyui: POST %s: %w", endpoint, err)
		}
	}
	return nil
}

// do makes one request and reads at most limit bytes of the answer.
func (c *Client) do(ctx context.Context, method, endpoint string, q url.Values, contentType string, body []byte, limit int64) (int, http.Header, []byte, error) {
	u := c.base + endpoint
	if q != nil {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("comfyui: %s %s: %w", method, endpoint, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, nil, nil, fmt.Errorf("comfyui: %s %s: %w", method, endpoint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("comfyui: %s %s: reading answer: %w", method, endpoint, err)
	}
	if int64(len(data)) > limit {
		return 0, nil, nil, fmt.Errorf("comfyui: %s %s: answer larger than %d bytes", method, endpoint, limit)
	}
	return resp.StatusCode, resp.Header, data, nil
}
