package httpapi

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine/clock"
)

// Defaults of the upload limits.
const (
	defaultMaxUploads    = 16
	defaultUploadMinRate = 16 << 10 // bytes per second
	defaultUploadGrace   = 10 * time.Second
	// defaultUploadTimeout caps an upload's whole time, whatever its rate:
	// a 20 MiB photo then needs about 175 KiB/s.
	defaultUploadTimeout = 2 * time.Minute
)

// uploadSlots bounds the uploads read, checked and prepared at once: over
// all clients, and per client (by origin), so that one client's slow
// uploads cannot take every slot. It is safe for concurrent use.
type uploadSlots struct {
	max, perClient int

	mu    sync.Mutex
	total int
	held  map[string]int // slots held per origin; no entry at 0
}

func newUploadSlots(maxUploads, perClient int) *uploadSlots {
	if maxUploads <= 0 {
		maxUploads = defaultMaxUploads
	}
	if perClient <= 0 {
		perClient = max(maxUploads/4, 1)
	}
	return &uploadSlots{max: maxUploads, perClient: min(perClient, maxUploads), held: make(map[string]int)}
}

// take reserves a slot for origin. It returns the function that gives the
// slot back (safe to call more than once), or, when none is free to
// origin, the problem that answers the request.
func (u *uploadSlots) take(origin, resource string) (release func(), refusal *problem.Problem) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.held[origin] >= u.perClient:
		return nil, &problem.Problem{Type: problem.TypeQuota, Title: "Too Many Requests", Status: http.StatusTooManyRequests,
			Detail: fmt.Sprintf("this client is already sending %d uploads, its share of the gateway's %d; wait for those to finish",
				u.held[origin], u.max),
			Resource: resource, Kind: "uploads", RetryAfter: 1}
	case u.total >= u.max:
		return nil, &problem.Problem{Type: problem.TypeCapacity, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail:   fmt.Sprintf("the gateway is already reading %d uploads; try again shortly", u.max),
			Resource: resource, Kind: "uploads", RetryAfter: 1}
	}
	u.total++
	u.held[origin]++
	return sync.OnceFunc(func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		u.total--
		if u.held[origin]--; u.held[origin] <= 0 {
			delete(u.held, origin)
		}
	}), nil
}

// errTooSlow is what an upload read slower than the minimum rate reads.
var errTooSlow = errors.New("httpapi: the upload is slower than the minimum rate")

// rateReader cuts off a body that arrives slower than minRate bytes per
// second once grace has passed: by time n bytes in, at most
// grace + n/minRate may have passed since the first read. Each read checks
// it on the clock and moves the connection's read deadline to the time the
// next byte is due, so a client that stops sending altogether is cut off
// too, without a read that waits forever.
type rateReader struct {
	r       interface{ Read([]byte) (int, error) }
	clock   clock.Clock
	minRate int64 // <= 0: no minimum rate
	grace   time.Duration
	// limit caps the whole upload's time, whatever its rate; 0: none.
	limit time.Duration
	// setDeadline sets the connection's read deadline in wall time; it
	// fails where the writer has no connection (tests), and is then left.
	setDeadline func(time.Time) error

	start time.Time
	n     int64
	slow  bool // cut off for being too slow
}

// due is when the body must have delivered n bytes.
func (r *rateReader) due(n int64) time.Time {
	d := time.Duration(math.MaxInt64)
	if r.minRate > 0 {
		d = r.grace + time.Duration(float64(n)/float64(r.minRate)*float64(time.Second))
	}
	if r.limit > 0 {
		d = min(d, r.limit)
	}
	return r.start.Add(d)
}

func (r *rateReader) Read(p []byte) (int, error) {
	if r.slow {
		return 0, errTooSlow
	}
	now := r.clock.Now()
	if r.start.IsZero() {
		r.start = now
	}
	if now.After(r.due(r.n)) {
		r.slow = true
		return 0, errTooSlow
	}
	// The next byte is due by due(n+1): a connection that delivers nothing
	// until then times out.
	r.setDeadline(time.Now().Add(r.due(r.n + 1).Sub(now)))
	n, err := r.r.Read(p)
	r.n += int64(n)
	if errors.Is(err, os.ErrDeadlineExceeded) || r.clock.Now().After(r.due(r.n)) {
		r.slow = true
		return n, errTooSlow
	}
	return n, err
}

// limitUpload makes the request body read at least at the minimum rate
// and within the time cap (nil when there is neither). It returns lift,
// which takes the connection's read deadline off once the upload is read
// (a deadline would end the request's context while its job runs), and
// done, for when the handler returns: whatever of the body is left unread
// then (an upload refused half-way) is read off by net/http, and must not
// be read without a deadline, or a client trickling it holds the
// connection for ever.
func (s *Server) limitUpload(c *gin.Context) (rr *rateReader, lift, done func()) {
	if s.uploadMinRate <= 0 && s.uploadTimeout <= 0 {
		return nil, func() {}, func() {}
	}
	rc := http.NewResponseController(c.Writer)
	rr = &rateReader{r: c.Request.Body, clock: s.clock, minRate: s.uploadMinRate, grace: s.uploadGrace, limit: s.uploadTimeout,
		setDeadline: rc.SetReadDeadline}
	c.Request.Body = readCloser{rr, c.Request.Body}
	return rr, func() { rc.SetReadDeadline(time.Time{}) }, func() { rc.SetReadDeadline(time.Now().Add(s.uploadGrace)) }
}

type readCloser struct {
	*rateReader
	body interface{ Close() error }
}

func (r readCloser) Close() error { return r.body.Close() }

// tooSlow answers an upload cut off for its rate, 408, and closes the
// connection: the rest of the body is not waited for.
func (s *Server) tooSlow(c *gin.Context, resource string) {
	c.Header("Connection", "close")
	p := problem.New(http.StatusRequestTimeout, "upload-too-slow",
		fmt.Sprintf("the upload arrived slower than %d bytes/s (after the first %s), or took longer than %s in all, and was cut off; send it faster, or a smaller image",
			s.uploadMinRate, s.uploadGrace, s.uploadTimeout))
	p.Resource = resource
	problem.Write(c, p)
}
