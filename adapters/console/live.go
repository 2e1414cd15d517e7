package console

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/dispatch"
)

// liveWriteTimeout bounds one write of an event to a viewer: a viewer that
// takes longer is dropped (its browser reconnects).
const liveWriteTimeout = 10 * time.Second

// liveRetry is the reconnection delay the stream asks browsers for.
const liveRetry = "retry: 2000\n\n"

// hub samples the statistics every interval on its clock into one encoded
// SSE event that every viewer of /api/live writes as it is: a viewer costs
// the hub nothing (publishing is one pointer swap and one channel close,
// whatever the viewers), and a slow viewer skips to the latest event.
type hub struct {
	src      Source
	backends func() dispatch.Stats
	clock    clock.Clock
	interval time.Duration
	log      *slog.Logger

	cur     atomic.Pointer[frame]
	viewers atomic.Int64
	done    chan struct{} // closed by close: streams end
	stopped chan struct{} // closed when run returns
	once    sync.Once
}

// frame is one published event; next is closed when a newer one is
// published.
type frame struct {
	data []byte
	next chan struct{}
}

// liveResource is one resource in the live snapshot: its statistics and
// the jobs it has waiting for a GPU slot (null: the farm's queue does not
// tell resources apart; the snapshot's "waiting" counts them all).
type liveResource struct {
	engine.ResourceStats
	Waiting *int `json:"waiting"`
}

// snapshot is the data of one event of /api/live.
type snapshot struct {
	Time      time.Time           `json:"time"`
	Resources []liveResource      `json:"resources"`
	System    engine.SystemStatus `json:"system"`
	// Backends is GET /api/backends's body; null without a farm.
	Backends gin.H `json:"backends"`
	// Waiting counts the jobs waiting for a GPU slot, over the farm.
	Waiting int `json:"waiting"`
}

func newHub(src Source, backends func() dispatch.Stats, c clock.Clock, interval time.Duration, log *slog.Logger) *hub {
	h := &hub{src: src, backends: backends, clock: c, interval: interval, log: log,
		done: make(chan struct{}), stopped: make(chan struct{})}
	h.cur.Store(&frame{data: h.sample(), next: make(chan struct{})})
	go h.run()
	return h
}

func (h *hub) run() {
	defer close(h.stopped)
	for {
		tick, stop := clock.NewTimer(h.clock, h.interval)
		select {
		case <-tick:
		case <-h.done:
			stop()
			return
		}
		h.publish(h.sample())
	}
}

// publish makes data the latest event and wakes every viewer.
func (h *hub) publish(data []byte) {
	old := h.cur.Swap(&frame{data: data, next: make(chan struct{})})
	close(old.next)
}

// sample gathers the statistics and encodes them as one SSE event.
func (h *hub) sample() []byte {
	s := snapshot{Time: h.clock.Now().UTC(), System: h.src.System()}
	stats := h.src.Stats()
	s.Resources = make([]liveResource, len(stats))
	for i, r := range stats {
		s.Resources[i] = liveResource{ResourceStats: r}
	}
	if h.backends != nil {
		st := h.backends()
		s.Backends, s.Waiting = dashboardapi.BackendsBody(st), st.Queued
	}
	body, err := json.Marshal(s)
	if err != nil { // only a NaN or an infinity among the figures
		h.log.Error("console: encoding the live statistics", slog.Any("error", err))
		body = fmt.Appendf(nil, `{"time":%q,"error":"the statistics could not be encoded"}`, s.Time.Format(time.RFC3339Nano))
	}
	out := make([]byte, 0, len(body)+32)
	out = append(out, "event: stats\ndata: "...)
	out = append(out, body...)
	return append(out, "\n\n"...)
}

// close ends every stream and stops sampling; it waits for the sampler.
func (h *hub) close() {
	h.once.Do(func() { close(h.done) })
	<-h.stopped
}

// stream serves /api/live: the latest event at once, then each new one;
// it returns when the viewer goes, a write fails or times out, or the hub
// closes (so a server's graceful shutdown need not wait for viewers), or
// end fires (the session that authorized it expired or logged out).
func (h *hub) stream(c *gin.Context, end liveEnd) {
	w := c.Writer
	rc := http.NewResponseController(w)
	// The server's ReadTimeout would cancel a stream that outlives it.
	_ = rc.SetReadDeadline(time.Time{})
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no") // nginx: pass events on at once
	w.WriteHeader(http.StatusOK)
	h.viewers.Add(1)
	defer h.viewers.Add(-1)
	if _, err := w.Write([]byte(liveRetry)); err != nil {
		return
	}
	defer rc.SetWriteDeadline(time.Time{}) // the connection may serve another request
	ctx := c.Request.Context()
	f := h.cur.Load()
	for {
		_ = rc.SetWriteDeadline(time.Now().Add(liveWriteTimeout)) // a network deadline: the real clock
		if _, err := w.Write(f.data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-f.next:
			f = h.cur.Load() // the latest: a slow viewer skips those between
		case <-ctx.Done():
			return
		case <-h.done:
			return
		case <-end.expired:
			return
		case <-end.out:
			return
		}
	}
}
