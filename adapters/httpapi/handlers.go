package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
)

// Sizes is the allowed set of DDColor model input sizes.
var Sizes = []int{256, 512, 768, 1024, 1280}

// Bounds of /v1/generate's parameters.
const (
	maxPromptRunes = 2000
	minSide        = 256
	maxSide        = 2048
	sideStep       = 16
	defaultSide    = 1024
	maxSteps       = 50
	defaultSteps   = 8
	maxJSONBytes   = 64 << 10
)

// colorize serves a DDColor endpoint: multipart image and optional size.
func (s *Server) colorize(resource string, defaultSize int) gin.HandlerFunc {
	return func(c *gin.Context) {
		// Who calls is known before the upload is read: a bad credential,
		// or a tier that may not use the resource, costs no upload.
		who, ok := s.guarded(c, resource)
		if !ok {
			return
		}
		async, ok := s.asyncMode(c)
		if !ok {
			return
		}
		ip := who.origin
		// A banned client is turned away before its upload is read.
		if call := who.call(resource, 0); s.refused(c, call, s.eng.Precheck(call)) {
			return
		}
		// Reading an upload holds a connection and memory: only so many at
		// once, and a share of them per client. The slot is held while the
		// upload is read and its header checked — not while the request
		// waits for admission (a throttle may pace it), nor while its job
		// runs; decoding it is bounded by the image memory budget.
		release, refusal := s.uploads.take(ip, resource)
		if refusal != nil {
			problem.Write(c, *refusal)
			return
		}
		defer release()
		rate, lift, done := s.limitUpload(c)
		defer done()
		c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, s.image.MaxBytes+formSlack)
		up, size, ok := s.readColorize(c, resource, defaultSize, rate)
		if !ok {
			return
		}
		release()
		lift()
		if !s.allowSize(c, who, resource, size) {
			return
		}
		s.admit(c, who, who.call(resource, size), async, func(tok *engine.Token, ch *charge) (comfyui.Job, bool) {
			img, err := up.PrepareContext(c.Request.Context())
			if err != nil {
				var ie *imageinput.Error
				switch {
				case errors.Is(err, context.Canceled):
					// The client left while its image waited for memory:
					// no job, no admission spent; its quota is (it left).
					tok.Cancel()
					ch.keep()
				case errors.As(err, &ie) && ie.Code == imageinput.CodeBusy:
					// The gateway's own memory was short: no job, nothing
					// charged (the quota is refunded).
					tok.Cancel()
					ch.settle()
				default:
					// The caller's bad data: its admission and its quota
					// are spent, though no job ran.
					ch.keep()
				}
				imageProblem(c, err)
				return comfyui.Job{}, false
			}
			return comfyui.Job{Resource: resource, Image: img.PNG, Size: size}, true
		})
	}
}

// admit guards call and, once admitted, charges the caller's daily quota,
// builds the job (false: build has answered; the token exits without an
// error unless build cancelled it) and runs it, synchronously or as an
// async job. The token is exited on every path: by the job where it ends,
// with its outcome and time; here, with jobs.ErrPanicked, should anything
// panic before; by the async job once handed off. The quota charge is
// refunded on every path that does not keep it (see charge): kept when the
// job ran, its caller left or sent bad data, or an async job took it over.
func (s *Server) admit(c *gin.Context, who *caller, call engine.Call, async bool, build func(*engine.Token, *charge) (comfyui.Job, bool)) {
	tok := s.guard(c, call)
	if tok == nil {
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			tok.Exit(jobs.ErrPanicked) // no-op after the job's own Exit
		}
	}()
	// A farm that would refuse the caller now (its in-flight share is
	// full) says so before the quota is charged: a refused call costs no
	// quota write. The farm can still refuse later (a race), then the
	// charge is refunded.
	if pc, ok := s.runner.(Prechecker); ok {
		if err := pc.Precheck(who.job(comfyui.Job{Resource: call.Resource, Size: call.Size}, max(tok.Cost, 1))); err != nil {
			tok.Exit(nil) // never ran
			s.jobError(c, call.Resource, who, err)
			return
		}
	}
	ch, ok := s.take(c, who, call, tok)
	if !ok {
		return
	}
	defer ch.settle()
	job, ok := build(tok, ch)
	if !ok {
		tok.Exit(nil)
		return
	}
	if async {
		handedOff = s.submit(c, tok, who, job, ch)
		return
	}
	defer s.inFlight.add(who.id.Tenant)()
	s.run(c, tok, who, job, ch)
}

// readColorize reads the multipart form, checking the image's bytes, format
// and declared dimensions but not decoding it yet.
func (s *Server) readColorize(c *gin.Context, resource string, defaultSize int, rate *rateReader) (*imageinput.Upload, int, bool) {
	tooSlow := func() bool {
		if rate != nil && rate.slow {
			s.tooSlow(c, resource)
			return true
		}
		return false
	}
	mr, err := c.Request.MultipartReader()
	if err != nil {
		problem.Answer(c, http.StatusUnsupportedMediaType, "not-multipart",
			"send multipart/form-data with the photo in field image (curl -F image=@photo.jpg)")
		return nil, 0, false
	}
	var (
		up   *imageinput.Upload
		size = defaultSize
	)
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if !tooSlow() {
				formError(c, err)
			}
			return nil, 0, false
		}
		switch part.FormName() {
		case "image":
			if up != nil {
				problem.Answer(c, http.StatusBadRequest, "bad-form", "field image appears twice; send one image")
				return nil, 0, false
			}
			if up, err = imageinput.Inspect(part, s.image); err != nil {
				if !tooSlow() {
					imageProblem(c, err)
				}
				return nil, 0, false
			}
		case "size":
			raw, err := io.ReadAll(io.LimitReader(part, 16))
			if err != nil {
				if !tooSlow() {
					formError(c, err)
				}
				return nil, 0, false
			}
			n, err := strconv.Atoi(strings.TrimSpace(string(raw)))
			if err != nil || !slices.Contains(Sizes, n) {
				problem.Answer(c, http.StatusBadRequest, "bad-size", fmt.Sprintf("size must be one of %s; got %q", sizesText(), raw))
				return nil, 0, false
			}
			size = n
		default:
			problem.Answer(c, http.StatusBadRequest, "bad-form", fmt.Sprintf("unknown form field %q; the fields are image and size", part.FormName()))
			return nil, 0, false
		}
	}
	if up == nil {
		problem.Answer(c, http.StatusBadRequest, "missing-image", "the form has no field image: send the photo as -F image=@photo.jpg")
		return nil, 0, false
	}
	return up, size, true
}

func formError(c *gin.Context, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		problem.Answer(c, http.StatusRequestEntityTooLarge, "too-large", fmt.Sprintf("the request body is larger than %d bytes", mbe.Limit))
		return
	}
	problem.Answer(c, http.StatusBadRequest, "bad-form", "the multipart body is malformed: "+err.Error())
}

func imageProblem(c *gin.Context, err error) {
	var ie *imageinput.Error
	switch {
	case errors.Is(err, context.Canceled): // the client left while its image waited for memory
		c.AbortWithStatus(statusClientClosed)
		return
	case errors.As(err, &ie):
		p := problem.New(ie.Status, "image-"+strings.ReplaceAll(ie.Code, "_", "-"), ie.Msg)
		if ie.RetryAfter > 0 {
			p.RetryAfter = problem.RetrySeconds(ie.RetryAfter)
		}
		problem.Write(c, p)
		return
	}
	problem.Answer(c, http.StatusBadRequest, "bad-image", err.Error())
}

func sizesText() string {
	parts := make([]string, len(Sizes))
	for i, n := range Sizes {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ", ")
}

// generateRequest is the body of POST /v1/generate; parseGenerate names
// its JSON keys.
type generateRequest struct {
	Prompt         string
	NegativePrompt string
	Width          *int
	Height         *int
	Steps          *int
	Seed           *int64
}

func (s *Server) generate(c *gin.Context) {
	const resource = "zimage_generate"
	who, ok := s.guarded(c, resource)
	if !ok {
		return
	}
	async, ok := s.asyncMode(c)
	if !ok {
		return
	}
	if ct := c.GetHeader("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			problem.Answer(c, http.StatusUnsupportedMediaType, "not-json", fmt.Sprintf("send application/json, got %q", ct))
			return
		}
	}
	job, err := parseGenerate(http.MaxBytesReader(c.Writer, c.Request.Body, maxJSONBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			formError(c, err)
			return
		}
		problem.Answer(c, http.StatusBadRequest, "bad-request", err.Error())
		return
	}
	size := max(job.Width, job.Height)
	if !s.allowSize(c, who, resource, size) {
		return
	}
	s.admit(c, who, who.call(resource, size), async, func(*engine.Token, *charge) (comfyui.Job, bool) {
		c.Header("X-Sluice-Seed", strconv.FormatInt(job.Seed, 10))
		return job, true
	})
}

// parseGenerate decodes and checks a generate request strictly: keys match
// exactly, and a wrong type is named by field and JSON type. Its error is
// an *http.MaxBytesError (wrapped) for a body over the cap, else a message
// saying what is wrong.
func parseGenerate(body io.Reader) (comfyui.Job, error) {
	var req generateRequest
	if err := problem.DecodeObject(body,
		problem.Field{Name: "prompt", Into: &req.Prompt},
		problem.Field{Name: "negative_prompt", Into: &req.NegativePrompt},
		problem.Field{Name: "width", Into: &req.Width},
		problem.Field{Name: "height", Into: &req.Height},
		problem.Field{Name: "steps", Into: &req.Steps},
		problem.Field{Name: "seed", Into: &req.Seed},
	); err != nil {
		return comfyui.Job{}, err
	}
	job, msg := checkGenerate(&req)
	if msg != "" {
		return job, errors.New(msg)
	}
	return job, nil
}

// checkGenerate checks a decoded request's values; msg says what is wrong.
func checkGenerate(req *generateRequest) (job comfyui.Job, msg string) {
	prompt := strings.TrimSpace(req.Prompt)
	switch n := utf8.RuneCountInString(prompt); {
	case !utf8.ValidString(req.Prompt) || !utf8.ValidString(req.NegativePrompt):
		return job, "prompt and negative_prompt must be UTF-8 text"
	case n == 0:
		return job, "prompt is required"
	case n > maxPromptRunes:
		return job, fmt.Sprintf("prompt is %d characters; the limit is %d", n, maxPromptRunes)
	}
	if n := utf8.RuneCountInString(req.NegativePrompt); n > maxPromptRunes {
		return job, fmt.Sprintf("negative_prompt is %d characters; the limit is %d", n, maxPromptRunes)
	}
	side := func(name string, v *int) (int, string) {
		if v == nil {
			return defaultSide, ""
		}
		if *v < minSide || *v > maxSide || *v%sideStep != 0 {
			return 0, fmt.Sprintf("%s must be a multiple of %d between %d and %d; got %d", name, sideStep, minSide, maxSide, *v)
		}
		return *v, ""
	}
	job = comfyui.Job{Resource: "zimage_generate", Prompt: prompt, NegativePrompt: req.NegativePrompt, Steps: defaultSteps}
	if job.Width, msg = side("width", req.Width); msg != "" {
		return job, msg
	}
	if job.Height, msg = side("height", req.Height); msg != "" {
		return job, msg
	}
	if req.Steps != nil {
		if *req.Steps < 1 || *req.Steps > maxSteps {
			return job, fmt.Sprintf("steps must be between 1 and %d; got %d", maxSteps, *req.Steps)
		}
		job.Steps = *req.Steps
	}
	if req.Seed != nil {
		if *req.Seed < 0 {
			return job, fmt.Sprintf("seed must be >= 0; got %d", *req.Seed)
		}
		job.Seed = *req.Seed
	} else {
		job.Seed = rand.Int64N(1 << 53)
	}
	return job, ""
}
