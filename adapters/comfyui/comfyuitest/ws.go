package comfyuitest

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"

	"github.com/coder/websocket"
	"github.com/google/uuid"
)

// wsClient is one /ws connection. Its frames go through out, in order; a
// client that falls wsBacklog frames behind is disconnected.
type wsClient struct {
	sid    string
	out    chan []byte
	cancel context.CancelFunc
}

const wsBacklog = 1024

type wsMessage struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

func (c *wsClient) push(msg []byte) {
	if msg == nil {
		return
	}
	select {
	case c.out <- msg:
	default:
		c.cancel()
	}
}

// handleWS is /ws?clientId=X: a status greeting with the sid, then the events
// of the prompts queued with that client_id and the status broadcasts.
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "server closed", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept has answered
	}
	defer conn.CloseNow()
	sid := r.URL.Query().Get("clientId")
	if sid == "" {
		sid = strings.ReplaceAll(uuid.NewString(), "-", "")
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	c := &wsClient{sid: sid, out: make(chan []byte, wsBacklog), cancel: cancel}

	s.mu.Lock()
	c.push(encode("status", map[string]any{"status": s.queueInfoLocked(), "sid": sid}))
	if !s.opts.SilentWS {
		if s.running != nil && s.running.clientID == sid && s.lastNode != "" {
			c.push(encode("executing", map[string]any{"node": s.lastNode}))
		}
		s.clients[sid] = c // a reconnect with the same id replaces the old socket
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.clients[sid] == c {
			delete(s.clients, sid)
		}
		s.mu.Unlock()
	}()
	s.log.Debug("comfyuitest: websocket open", slog.String("sid", sid))

	// Read (and drop) what the client sends, so that control frames are
	// answered and a closed connection is noticed.
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer cancel()
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				return
			}
		}
	}()
	defer func() { <-readDone }()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-c.out:
			if err := conn.Write(ctx, websocket.MessageText, msg); err != nil {
				return
			}
		}
	}
}

// encode makes a text frame; nil if data cannot be encoded (a non-finite
// number echoed from a request), and nil frames are not sent.
func encode(typ string, data any) []byte {
	b, err := json.Marshal(wsMessage{Type: typ, Data: data})
	if err != nil {
		return nil
	}
	return b
}

// sendLocked sends an event to client sid, or to every client when sid is
// empty, as ComfyUI's send_sync does.
func (s *Server) sendLocked(sid, typ string, data any) {
	if sid == "" {
		if len(s.clients) == 0 {
			return
		}
		msg := encode(typ, data)
		for _, c := range s.clients {
			c.push(msg)
		}
		return
	}
	if c := s.clients[sid]; c != nil {
		c.push(encode(typ, data))
	}
}

func (s *Server) send(sid, typ string, data any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendLocked(sid, typ, data)
}

// broadcastStatusLocked is ComfyUI's queue_updated: a status to everyone.
func (s *Server) broadcastStatusLocked() {
	s.sendLocked("", "status", map[string]any{"status": s.queueInfoLocked()})
}
