package comfyui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/sluicehq/sluice/engine/clock"
)

const (
	dialTimeout     = 10 * time.Second
	greetingTimeout = 5 * time.Second
	maxWSMessage    = 64 << 20 // binary preview frames can be large
	// reconnectMin and reconnectMax bound the wait between WebSocket
	// connection attempts: the first retry after a break is immediate, then
	// the wait doubles from reconnectMin up to reconnectMax.
	reconnectMin = 250 * time.Millisecond
	reconnectMax = 30 * time.Second
	// stableSession is how long a WebSocket must have lived for its break
	// to be retried at once.
	stableSession = time.Second
	// waiterBacklog is how many events a waiting Run may fall behind before
	// further ones are dropped; its /history and /queue checks catch up.
	waiterBacklog = 256
)

// wsEvent is one text frame of /ws.
type wsEvent struct {
	Type string
	Data wsData
}

// wsData holds the fields sluice reads from the events it follows; the
// history's status messages share it.
type wsData struct {
	PromptID         string   `json:"prompt_id"`
	Node             *string  `json:"node"` // executing: null when the prompt is done
	Value            int      `json:"value"`
	Max              int      `json:"max"`
	Timestamp        float64  `json:"timestamp"` // ms since the epoch
	NodeID           string   `json:"node_id"`
	NodeType         string   `json:"node_type"`
	ExceptionType    string   `json:"exception_type"`
	ExceptionMessage string   `json:"exception_message"`
	Traceback        []string `json:"traceback"`
}

func (d *wsData) executionError(id string) *ExecutionError {
	if d.PromptID != "" {
		id = d.PromptID
	}
	return &ExecutionError{
		PromptID:         id,
		NodeID:           d.NodeID,
		NodeType:         d.NodeType,
		ExceptionType:    d.ExceptionType,
		ExceptionMessage: d.ExceptionMessage,
		Traceback:        d.Traceback,
	}
}

// followed reports whether Run acts on events of type typ; others are not
// decoded.
func followed(typ string) bool {
	switch typ {
	case "execution_start", "executing", "progress",
		"execution_success", "execution_error", "execution_interrupted":
		return true
	}
	return false
}

// waiter is a Run waiting for its prompt: the WebSocket reader hands it the
// prompt's events and tells it when to look at /queue.
type waiter struct {
	events chan wsEvent
	// kick asks the waiter to check /queue now: after a reconnect (events
	// may have been missed) or, for a waiter that reports its place, when
	// ComfyUI's queue changed.
	kick chan struct{}
	// wantsPlace, started and ended are guarded by Client.mu.
	wantsPlace bool
	started    bool
	ended      bool // its end was seen before its history entry
}

func (w *waiter) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// register makes the waiter of prompt id and starts the WebSocket if it is
// not running yet.
func (c *Client) register(id string, wantsPlace bool) *waiter {
	w := &waiter{events: make(chan wsEvent, waiterBacklog), kick: make(chan struct{}, 1), wantsPlace: wantsPlace}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiters[id] = w
	return w
}

// unregister forgets prompt id's waiter, if it is still w.
func (c *Client) unregister(id string, w *waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiters[id] == w {
		delete(c.waiters, id)
	}
}

// rekey files w under the id ComfyUI answered (old servers choose their own).
func (c *Client) rekey(from, to string, w *waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiters[from] == w {
		delete(c.waiters, from)
	}
	c.waiters[to] = w
}

// setStarted records that w's prompt runs: it no longer needs its place.
func (c *Client) setStarted(w *waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w.started = true
}

// setEnded records that w's prompt has ended but its history entry was not
// there yet: the next queue change pokes it.
func (c *Client) setEnded(w *waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w.ended = true
}

// connect starts the client's WebSocket once, unless the client is closed,
// and waits (within ctx and greetingTimeout+dialTimeout on the client's
// clock) for its first attempt to greet or fail, so that a first prompt's
// events are not missed. Later calls return at once.
func (c *Client) connect(ctx context.Context) {
	c.mu.Lock()
	if !c.wsStarted && !c.closed {
		c.wsStarted = true
		c.wsDone = make(chan struct{})
		go c.runWS(c.wsCtx, c.wsDone)
	}
	ready := c.ready
	c.mu.Unlock()
	select {
	case <-ready:
		return
	default:
	}
	t, stop := clock.NewTimer(c.clock, dialTimeout+greetingTimeout)
	defer stop()
	select {
	case <-ready:
	case <-ctx.Done():
	case <-c.wsCtx.Done():
	case <-t:
	}
}

// Close stops the client's WebSocket and waits for it. Runs in progress go
// on following /history; Close does not cancel them.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	done := c.wsDone
	c.mu.Unlock()
	c.wsStop()
	if done != nil {
		<-done
	}
}

// runWS keeps one WebSocket to /ws?clientId=<the client's id> open until ctx
// ends, reconnecting with a capped exponential backoff.
func (c *Client) runWS(ctx context.Context, done chan struct{}) {
	defer close(done)
	markReady := sync.OnceFunc(func() { close(c.ready) })
	defer markReady()
	fails := 0
	for connects := 0; ; {
		began := c.clock.Now()
		greeted, err := c.session(ctx, connects > 0, markReady)
		if ctx.Err() != nil {
			return
		}
		markReady()
		if greeted {
			connects++
			// A socket that lived a while starts the backoff afresh; one
			// closed right after its greeting counts as a failure, so
			// that such a server is not hammered.
			if c.clock.Now().Sub(began) >= stableSession {
				fails = 0
			}
		}
		c.report(false, err)
		wait := time.Duration(0)
		if fails > 0 {
			wait = min(reconnectMin<<min(fails-1, 16), reconnectMax)
		}
		fails++
		if wait > 0 {
			c.log.Debug("comfyui: websocket reconnecting", slog.Duration("in", wait), slog.Any("err", err))
			t, stop := clock.NewTimer(c.clock, wait)
			select {
			case <-t:
			case <-ctx.Done():
				stop()
				return
			}
		}
	}
}

// report tells Config.OnConnection about a change of the WebSocket's state.
func (c *Client) report(up bool, err error) {
	c.mu.Lock()
	changed := c.wsState != wsUp && up || c.wsState != wsDown && !up
	if up {
		c.wsState = wsUp
	} else {
		c.wsState = wsDown
	}
	c.mu.Unlock()
	if !changed {
		return
	}
	if up {
		c.log.Info("comfyui: websocket connected", slog.String("client_id", c.clientID))
	} else {
		c.log.Warn("comfyui: websocket down, following /history and /queue", slog.Any("err", err))
	}
	if c.onConn != nil {
		c.onConn(up, err)
	}
}

// wsState is the WebSocket's state as last reported.
type wsState int

const (
	wsUnknown wsState = iota
	wsUp
	wsDown
)

// session dials /ws and reads it until it breaks or ctx ends. greeted
// reports whether the server's greeting (its first status) came: from then
// on the server sends this client's events to this socket.
func (c *Client) session(ctx context.Context, reconnect bool, onGreeting func()) (greeted bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	conn, _, err := websocket.Dial(dctx, c.base+"/ws?clientId="+url.QueryEscape(c.clientID), &websocket.DialOptions{HTTPClient: c.http})
	cancel()
	if err != nil {
		return false, fmt.Errorf("comfyui: websocket: %w", err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxWSMessage)
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure || errors.Is(err, context.Canceled) {
				return greeted, fmt.Errorf("comfyui: websocket closed: %w", err)
			}
			return greeted, fmt.Errorf("comfyui: websocket: %w", err)
		}
		if typ != websocket.MessageText {
			continue // previews
		}
		var m struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		if m.Type == "status" {
			if !greeted {
				greeted = true
				c.report(true, nil)
				onGreeting()
				c.pokeAll(reconnect)
				continue
			}
			c.pokeAll(false)
			continue
		}
		if !followed(m.Type) {
			continue
		}
		e := wsEvent{Type: m.Type}
		if json.Unmarshal(m.Data, &e.Data) != nil {
			continue
		}
		c.route(e)
	}
}

// pokeAll asks waiters to check /queue: all of them after a reconnect, else
// (a queue change) those that report their place and have not started and
// those whose prompt ended before its history entry was written.
func (c *Client) pokeAll(all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.waiters {
		if all || w.ended || (w.wantsPlace && !w.started) {
			w.poke()
		}
	}
}

// route hands an event to the Run waiting for its prompt. An event without
// a prompt_id goes to the prompt of this client that is executing.
func (c *Client) route(e wsEvent) {
	id := e.Data.PromptID
	c.mu.Lock()
	switch e.Type {
	case "execution_start":
		c.executing = id
	case "executing":
		if e.Data.Node != nil && id != "" {
			c.executing = id
		} else if e.Data.Node == nil && id == c.executing {
			c.executing = ""
		}
	case "execution_success", "execution_error", "execution_interrupted":
		if id == c.executing {
			c.executing = ""
		}
	}
	if id == "" {
		id = c.executing
	}
	w := c.waiters[id]
	c.mu.Unlock()
	if w == nil {
		return
	}
	select {
	case w.events <- e:
	default:
		c.log.Debug("comfyui: event dropped, the waiter is behind", slog.String("prompt_id", id), slog.String("type", e.Type))
	}
}
