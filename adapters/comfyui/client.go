package comfyui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
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
	// failed polls, failed clean-up). Default: discard.
	Logger *slog.Logger
	// PollInterval is how often /history is polled as the fallback to the
	// WebSocket. Default 1s.
	PollInterval time.Duration
	// Workflows are the templates jobs are bound to. Default DefaultWorkflows().
	Workflows *Workflows
	// OnConnection, if set, is called when the client's long-lived
	// WebSocket to its backend connects (true) or breaks (false, with why).
	OnConnection func(up bool, err error)
}

// Client runs jobs on one ComfyUI server. It is safe for concurrent use; each
// Run uses its own WebSocket session.
type Client struct {
	base      string
	http      *http.Client
	log       *slog.Logger
	poll      time.Duration
	workflows *Workflows
}

// NewClient checks cfg and returns a Client. It does not contact the server.
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
	c := &Client{
		base:      strings.TrimSuffix(u.String(), "/"),
		http:      cfg.HTTPClient,
		log:       cfg.Logger,
		poll:      cfg.PollInterval,
		workflows: cfg.Workflows,
	}
	if c.http == nil {
		c.http = http.DefaultClient
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.poll == 0 {
		c.poll = time.Second
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
	ImageName      string // upload file name; default "sluice-<uuid>.png"
	Size           int    // DDColor model_input_size
	Prompt         string
	NegativePrompt string // ignored by the Z-Image-Turbo template; recorded in extra_data
	Width, Height  int
	Steps          int
	Seed           int64

	// OnProgress, if set, is called from Run's goroutine with each progress
	// event of the prompt. It must return quickly.
	OnProgress func(value, max int)
	// OnExecuted, if set, is called once the prompt has finished executing,
	// before its output is fetched: from then on ComfyUI is free for its
	// next prompt.
	OnExecuted func()
	// OnQueued, if set, is called from Run's goroutine once ComfyUI has
	// accepted the prompt, with its ID: Recover follows it from there.
	OnQueued func(promptID string)
	// OnQueuePosition, if set, is called with the prompt's place in
	// ComfyUI's own queue (1 = next to run) when it changes.
	OnQueuePosition func(position int)
	// OnRunning, if set, is called once, when the prompt starts executing.
	OnRunning func()
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
// following the WebSocket and polling /history, then fetches the first output
// image. Errors are *PromptError (refused), *ExecutionError (failed while
// running), ErrInterrupted, *HTTPError, or transport errors, all wrapped
// with context. When ctx ends after the prompt may have been queued, Run
// removes it from the queue and interrupts it, then returns ctx.Err() wrapped.
func (c *Client) Run(ctx context.Context, job Job) (*Result, error) {
	name := job.ImageName
	if job.Image != nil && name == "" {
		name = "sluice-" + uuid.NewString() + ".png"
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

	clientID := uuid.NewString()
	promptID := uuid.NewString()
	log := c.log.With(slog.String("resource", job.Resource), slog.String("prompt_id", promptID))
	ev := c.subscribe(ctx, clientID, log)
	if ev != nil {
		defer ev.close()
	}

	extra := map[string]any{"sluice": map[string]any{"resource": job.Resource}}
	if job.NegativePrompt != "" {
		extra["sluice"].(map[string]any)["negative_prompt"] = job.NegativePrompt
	}
	id, err := c.queue(ctx, promptID, clientID, wf, extra, log)
	if err != nil {
		if ctx.Err() != nil {
			c.abandonUnlessDetached(ctx, promptID, log)
			return nil, fmt.Errorf("comfyui: prompt %s: %w", promptID, ctx.Err())
		}
		return nil, err
	}
	res := &Result{PromptID: id, Queued: time.Now()}
	if job.OnQueued != nil {
		job.OnQueued(id)
	}
	img, err := c.await(ctx, id, ev, job.OnProgress, res, log)
	if err != nil {
		if ctx.Err() != nil {
			c.abandonUnlessDetached(ctx, id, log)
			return nil, fmt.Errorf("comfyui: prompt %s: %w", id, ctx.Err())
		}
		return nil, err
	}
	if res.Finished.IsZero() {
		res.Finished = time.Now()
	}
	if job.OnExecuted != nil {
		job.OnExecuted()
	}
	if res.Image, res.ContentType, err = c.view(ctx, img); err != nil {
		return nil, fmt.Errorf("comfyui: prompt %s: %w", id, err)
	}
	res.Filename, res.Subfolder = img.Filename, img.Subfolder
	return res, nil
}

// Recover follows a prompt queued earlier, perhaps by another process (a
// gateway before its restart), polling /history until it has finished or
// ctx ends, then fetches its first output image. Unlike Run it never
// removes or interrupts the prompt when ctx ends. Errors are those of Run.
func (c *Client) Recover(ctx context.Context, promptID string) (*Result, error) {
	log := c.log.With(slog.String("prompt_id", promptID))
	res := &Result{PromptID: promptID}
	img, err := c.await(ctx, promptID, nil, nil, res, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("comfyui: prompt %s: %w", promptID, ctx.Err())
		}
		return nil, err
	}
	if res.Finished.IsZero() {
		res.Finished = time.Now()
	}
	if res.Image, res.ContentType, err = c.view(ctx, img); err != nil {
		return nil, fmt.Errorf("comfyui: prompt %s: %w", promptID, err)
	}
	res.Filename, res.Subfolder = img.Filename, img.Subfolder
	return res, nil
}

// await follows prompt id to its end and returns its first output image.
func (c *Client) await(ctx context.Context, id string, ev *events, onProgress func(int, int), res *Result, log *slog.Logger) (imageRef, error) {
	tick := time.NewTicker(c.poll)
	defer tick.Stop()
	var msgs <-chan wsEvent
	if ev != nil {
		msgs = ev.msgs
	}
	// poll reads /history; done reports that the prompt has ended.
	poll := func() (img imageRef, done bool, err error) {
		h, err := c.history(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return img, true, ctx.Err()
			}
			log.Warn("comfyui: polling history failed", slog.Any("err", err))
			return img, false, nil
		}
		if h == nil {
			return img, false, nil
		}
		img, err = h.outcome(id, res)
		return img, true, err
	}
	for {
		select {
		case <-ctx.Done():
			return imageRef{}, ctx.Err()
		case <-tick.C:
		case m, ok := <-msgs:
			if !ok {
				log.Warn("comfyui: websocket closed, following /history only")
				msgs = nil
				continue
			}
			running := !res.Started.IsZero() && res.Finished.IsZero()
			if m.Data.PromptID != id && !(m.Data.PromptID == "" && m.Type == "progress" && running) {
				continue
			}
			now := time.Now()
			switch m.Type {
			case "execution_start":
				setOnce(&res.Started, now)
				continue
			case "progress":
				setOnce(&res.Started, now)
				if onProgress != nil {
					onProgress(m.Data.Value, m.Data.Max)
				}
				continue
			case "executing":
				if m.Data.Node != nil {
					setOnce(&res.Started, now)
					continue
				}
				setOnce(&res.Finished, now) // history is written: check it now
			case "execution_success":
				setOnce(&res.Finished, now) // history is written right after
			case "execution_error":
				setOnce(&res.Finished, now)
				return imageRef{}, m.Data.executionError(id)
			case "execution_interrupted":
				setOnce(&res.Finished, now)
				return imageRef{}, fmt.Errorf("%w (prompt %s)", ErrInterrupted, id)
			default:
				continue
			}
		}
		if img, done, err := poll(); done {
			return img, err
		}
	}
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
