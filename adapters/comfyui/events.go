package comfyui

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"time"

	"github.com/coder/websocket"
)

const (
	dialTimeout     = 10 * time.Second
	greetingTimeout = 5 * time.Second
	maxWSMessage    = 64 << 20 // binary preview frames can be large
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

// followed are the event types Run acts on; others are not decoded.
var followed = map[string]bool{
	"execution_start": true, "executing": true, "progress": true,
	"execution_success": true, "execution_error": true, "execution_interrupted": true,
}

// events is one WebSocket session's stream of followed events.
type events struct {
	msgs <-chan wsEvent
	conn *websocket.Conn
	stop context.CancelFunc
	done chan struct{}
}

// subscribe opens /ws?clientId=clientID and waits for the server's greeting
// (a status event), after which the server sends this client's events to this
// socket. It returns nil, after logging why, when no WebSocket can be had:
// Run then follows /history alone.
func (c *Client) subscribe(ctx context.Context, clientID string, log *slog.Logger) *events {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(dctx, c.base+"/ws?clientId="+url.QueryEscape(clientID), &websocket.DialOptions{HTTPClient: c.http})
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("comfyui: no websocket, following /history only", slog.Any("err", err))
		}
		return nil
	}
	conn.SetReadLimit(maxWSMessage)
	rctx, stop := context.WithCancel(ctx)
	msgs := make(chan wsEvent, 64)
	greeted := make(chan struct{})
	ev := &events{msgs: msgs, conn: conn, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(ev.done)
		defer close(msgs)
		greet := greeted
		for {
			typ, data, err := conn.Read(rctx)
			if err != nil {
				if rctx.Err() == nil && websocket.CloseStatus(err) != websocket.StatusNormalClosure && !errors.Is(err, context.Canceled) {
					log.Debug("comfyui: websocket read ended", slog.Any("err", err))
				}
				return
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
				if greet != nil {
					close(greet)
					greet = nil
				}
				continue
			}
			if !followed[m.Type] {
				continue
			}
			e := wsEvent{Type: m.Type}
			if json.Unmarshal(m.Data, &e.Data) != nil {
				continue
			}
			select {
			case msgs <- e:
			case <-rctx.Done():
				return
			}
		}
	}()
	t := time.NewTimer(greetingTimeout)
	defer t.Stop()
	select {
	case <-greeted:
	case <-ev.done:
		log.Warn("comfyui: websocket closed before its greeting, following /history only")
		ev.close()
		return nil
	case <-t.C:
		log.Warn("comfyui: no websocket greeting, events may be missed; /history is polled")
	case <-ctx.Done():
		// Run notices ctx on its own.
	}
	return ev
}

// close ends the session and waits for its reader.
func (e *events) close() {
	e.stop()
	<-e.done
	e.conn.CloseNow()
}
