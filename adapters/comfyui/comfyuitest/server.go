package comfyuitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Options configure a fake server. The zero value is a fast, always
// successful ComfyUI with one 80 GiB GPU.
type Options struct {
	// JobTime is how long a prompt runs, from its start to its end, when at
	// least one of its nodes is not served from the cache (longer only if
	// the fake's own image work takes longer). Default: 50ms. FieldJobTime
	// gives the times seen on real GPUs. JobTime and Fail are called on the executor goroutine when
	// the prompt starts running; Close waits for them to return.
	JobTime func(p Prompt) time.Duration
	// Fail, if set, decides for each prompt that runs whether it fails, and
	// how. A nil result means success.
	Fail func(p Prompt) *ExecutionFailure
	// SilentWS makes /ws accept connections and send the greeting status,
	// then nothing more, without closing: a WebSocket gone silent.
	SilentWS bool
	// Devices are reported by /system_stats. Default: one NVIDIA H100 80GB.
	Devices []Device
	// Logger receives a debug line per prompt queued, refused and done.
	// Default: discard.
	Logger *slog.Logger
}

// ExecutionFailure describes a simulated execution_error.
type ExecutionFailure struct {
	NodeID           string // default: the DDColor_Colorize or KSampler node
	ExceptionType    string // default "RuntimeError"
	ExceptionMessage string
}

// Device is a GPU as /system_stats reports it; sizes in bytes.
type Device struct {
	Name      string
	Type      string // default "cuda"
	Index     int
	VRAMTotal int64
	VRAMFree  int64
}

// Prompt is a workflow in API format as the server accepted it. Literal
// numbers are json.Number; links are [node id, output index].
type Prompt map[string]Node

// Node is one node of a Prompt.
type Node struct {
	ClassType string
	Inputs    map[string]any
}

// NodesOf returns the ids of the nodes of class, in id order.
func (p Prompt) NodesOf(class string) []string {
	var ids []string
	for id, n := range p {
		if n.ClassType == class {
			ids = append(ids, id)
		}
	}
	sortIDs(ids)
	return ids
}

// Int returns a literal integer input of the first node of class.
func (p Prompt) Int(class, input string) (int64, bool) {
	ids := p.NodesOf(class)
	if len(ids) == 0 {
		return 0, false
	}
	n, err := pyInt(p[ids[0]].Inputs[input])
	if err != nil || !n.IsInt64() {
		return 0, false
	}
	return n.Int64(), true
}

// String returns a literal string input of the first node of class.
func (p Prompt) String(class, input string) (string, bool) {
	ids := p.NodesOf(class)
	if len(ids) == 0 {
		return "", false
	}
	s, ok := p[ids[0]].Inputs[input].(string)
	return s, ok
}

// FieldJobTime approximates a data-centre GPU: DDColor 3 s at
// model_input_size 512 growing with the square of the size (about 5.6 s at
// 1280); Z-Image-Turbo 0.8 s for 1024×1024 at 8 steps, in proportion to
// pixels × steps.
func FieldJobTime(p Prompt) time.Duration {
	if size, ok := p.Int("DDColor_Colorize", "model_input_size"); ok {
		r := float64(size) / 512
		return time.Duration((2.5 + 0.5*r*r) * float64(time.Second))
	}
	if len(p.NodesOf("KSampler")) > 0 {
		w, h, steps := int64(1024), int64(1024), int64(8)
		for _, class := range []string{"EmptySD3LatentImage", "EmptyLatentImage"} {
			if v, ok := p.Int(class, "width"); ok {
				w = v
			}
			if v, ok := p.Int(class, "height"); ok {
				h = v
			}
		}
		if v, ok := p.Int("KSampler", "steps"); ok {
			steps = v
		}
		d := time.Duration(0.8 * float64(w*h) / (1024 * 1024) * float64(steps) / 8 * float64(time.Second))
		return max(d, 100*time.Millisecond)
	}
	return 50 * time.Millisecond
}

// QueuedPrompt is a prompt the server accepted.
type QueuedPrompt struct {
	ID        string
	Number    float64
	ClientID  string
	Prompt    Prompt
	ExtraData map[string]any
}

// Upload is a file received on /upload/image, under the name it was stored as.
type Upload struct {
	Name, Subfolder, Type string
	Overwrite             bool
	Data                  []byte
}

// Interrupt is a POST /interrupt.
type Interrupt struct {
	PromptID string // as asked; empty for a global interrupt
	Running  string // the prompt running then; empty if none
}

// Server is a fake ComfyUI: the HTTP and WebSocket API of
// comfyui-protocol.md, one prompt at a time from a FIFO queue. It is an
// http.Handler; NewServer also listens.
type Server struct {
	// URL is the base URL, e.g. http://127.0.0.1:41234, for a server made by
	// NewServer; empty for NewHandler.
	URL string

	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	files   *files
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	httpSrv *http.Server

	// cache maps node signatures to their outputs, from the last prompt run.
	// Only the executor touches it.
	cache map[string]cacheEntry
	// tail is how long the last prompt took after its heavy nodes: the
	// fake's own image work, taken out of the next prompt's sleep. Only
	// the executor touches it.
	tail time.Duration

	mu          sync.Mutex
	closed      bool
	wake        chan struct{}
	counter     int
	pending     []*queueItem
	running     *queueItem
	interrupt   chan struct{} // closed to interrupt the running prompt
	interrupted bool
	paused      bool
	freshCache  bool // a Restart emptied the node cache; the executor drops it
	lastNode    string
	history     map[string]*historyEntry
	histOrder   []string
	done        map[string]chan struct{}
	clients     map[string]*wsClient
	devices     []Device
	prompts     []QueuedPrompt
	uploads     []Upload
	interrupts  []Interrupt
	deletes     []string
}

const (
	maxHistory = 10000
	maxRecords = 4096
)

// NewServer starts a fake ComfyUI on 127.0.0.1 at a free port, like
// httptest.NewServer. It panics if it cannot listen. Close stops it.
func NewServer(opts Options) *Server {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic("comfyuitest: listen: " + err.Error())
	}
	s := NewHandler(opts)
	s.Serve(l)
	return s
}

// NewHandler returns a fake ComfyUI that serves no listener of its own: mount
// it (it is an http.Handler) on a server, or call Serve. Its executor runs
// until Close.
func NewHandler(opts Options) *Server {
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		files:     newFiles(),
		wake:      make(chan struct{}, 1),
		history:   map[string]*historyEntry{},
		done:      map[string]chan struct{}{},
		clients:   map[string]*wsClient{},
		devices:   slices.Clone(opts.Devices),
		cache:     map[string]cacheEntry{},
		interrupt: make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if len(s.devices) == 0 {
		s.devices = []Device{{Name: "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync", VRAMTotal: 85_520_809_984, VRAMFree: 84_386_643_968}}
	}
	for i := range s.devices {
		if s.devices[i].Type == "" {
			s.devices[i].Type = "cuda"
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.routes()
	s.wg.Add(1)
	go s.executor()
	return s
}

// Serve serves the fake on l in the background and sets URL; call it at most
// once, before using URL. Close stops it.
func (s *Server) Serve(l net.Listener) {
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.URL = "http://" + l.Addr().String()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.httpSrv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("comfyuitest: serve", slog.Any("err", err))
		}
	}()
}

// Close interrupts the running prompt, closes every WebSocket, stops the
// executor and, for NewServer, the listener, and waits for all of it.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			s.httpSrv.Close()
		}
		cancel()
	}
	s.wg.Wait()
}

// ServeHTTP serves the ComfyUI API, every route also under /api.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		http.Error(w, "server closed", http.StatusServiceUnavailable)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	for _, prefix := range []string{"", "/api"} {
		s.mux.HandleFunc("GET "+prefix+"/ws", s.handleWS)
		s.mux.HandleFunc("POST "+prefix+"/prompt", s.handlePostPrompt)
		s.mux.HandleFunc("GET "+prefix+"/prompt", s.handleGetPrompt)
		s.mux.HandleFunc("GET "+prefix+"/queue", s.handleGetQueue)
		s.mux.HandleFunc("POST "+prefix+"/queue", s.handlePostQueue)
		s.mux.HandleFunc("POST "+prefix+"/interrupt", s.handleInterrupt)
		s.mux.HandleFunc("POST "+prefix+"/free", s.handleFree)
		s.mux.HandleFunc("GET "+prefix+"/history", s.handleGetHistory)
		s.mux.HandleFunc("GET "+prefix+"/history/{prompt_id}", s.handleGetHistoryItem)
		s.mux.HandleFunc("POST "+prefix+"/history", s.handlePostHistory)
		s.mux.HandleFunc("GET "+prefix+"/view", s.handleView)
		s.mux.HandleFunc("POST "+prefix+"/upload/image", s.handleUpload)
		s.mux.HandleFunc("GET "+prefix+"/system_stats", s.handleSystemStats)
	}
}

type queueItem struct {
	number   any     // as answered: the counter, or the float the client gave
	order    float64 // number as a float, for ordering
	id       string
	prompt   map[string]any
	extra    map[string]any
	outputs  []string
	clientID string
	typed    Prompt
	// lost is set, under Server.mu, when a Restart drops the prompt while it
	// runs: from then on its execution sends nothing and leaves no history.
	lost bool
}

func (q *queueItem) tuple() []any {
	return []any{q.number, q.id, q.prompt, q.extra, q.outputs}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		serverError(w)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

// serverError is aiohttp's answer to an exception in a handler.
func serverError(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	io.WriteString(w, "500 Internal Server Error\n\nServer got itself in trouble")
}

// readJSON decodes a JSON request body, keeping numbers as json.Number.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<20))
	dec.UseNumber()
	return dec.Decode(v)
}

func (s *Server) handlePostPrompt(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := readJSON(r, &body); err != nil || body == nil {
		serverError(w)
		return
	}
	raw, has := body["prompt"]
	if !has {
		writeJSON(w, http.StatusBadRequest, map[string]any{
			"error":       reason{Type: "no_prompt", Message: "No prompt provided", Details: "No prompt provided", ExtraInfo: map[string]any{}},
			"node_errors": map[string]any{},
		})
		return
	}
	id := uuid.NewString()
	if v, ok := body["prompt_id"]; ok && v != nil {
		given, _ := v.(string)
		if u, err := uuid.Parse(given); err != nil || u.String() != given {
			writeJSON(w, http.StatusBadRequest, map[string]any{
				"error": reason{
					Type: "invalid_prompt_id", Message: "prompt_id must be a valid UUID",
					Details:   "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one",
					ExtraInfo: map[string]any{},
				},
				"node_errors": map[string]any{},
			})
			return
		}
		id = given
	}
	prompt, ok := raw.(map[string]any)
	if !ok {
		serverError(w)
		return
	}
	var partial []string
	if targets, ok := body["partial_execution_targets"].([]any); ok {
		partial = []string{}
		for _, t := range targets {
			if s, ok := t.(string); ok {
				partial = append(partial, s)
			}
		}
	}
	outputs, top, nodeErrs, err := validatePrompt(s, prompt, partial)
	if err != nil {
		serverError(w)
		return
	}
	if top != nil {
		s.log.Debug("comfyuitest: prompt refused", slog.String("prompt_id", id), slog.String("type", top.Type))
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": top, "node_errors": nodeErrs})
		return
	}

	extra := map[string]any{}
	if e, ok := body["extra_data"].(map[string]any); ok {
		for k, v := range e {
			extra[k] = v
		}
	}
	clientID := ""
	if c, ok := body["client_id"]; ok {
		extra["client_id"] = c
		clientID, _ = c.(string)
	}
	extra["create_time"] = time.Now().UnixMilli()
	item := &queueItem{id: id, prompt: prompt, extra: extra, outputs: outputs, clientID: clientID, typed: typed(prompt)}

	s.mu.Lock()
	if n, ok := body["number"]; ok {
		f, err := pyFloat(n)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			s.mu.Unlock()
			serverError(w)
			return
		}
		item.number, item.order = json.Number(pyFloatRepr(f)), f
	} else {
		number := s.counter
		if front, _ := body["front"].(bool); front {
			number = -number
		}
		s.counter++
		item.number, item.order = number, float64(number)
	}
	s.pending = append(s.pending, item)
	sort.SliceStable(s.pending, func(i, j int) bool { return s.pending[i].order < s.pending[j].order })
	s.prompts = appendCapped(s.prompts, QueuedPrompt{ID: id, Number: item.order, ClientID: clientID, Prompt: item.typed, ExtraData: extra})
	s.broadcastStatusLocked()
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	s.log.Debug("comfyuitest: prompt queued", slog.String("prompt_id", id), slog.Any("number", item.number))
	writeJSON(w, http.StatusOK, map[string]any{"prompt_id": id, "number": item.number, "node_errors": nodeErrs})
}

func typed(p map[string]any) Prompt {
	t := make(Prompt, len(p))
	for id, v := range p {
		node, _ := v.(map[string]any)
		ct, _ := node["class_type"].(string)
		in, _ := node["inputs"].(map[string]any)
		t[id] = Node{ClassType: ct, Inputs: in}
	}
	return t
}

func appendCapped[T any](s []T, v T) []T {
	if len(s) >= maxRecords {
		s = slices.Delete(s, 0, len(s)-maxRecords+1)
	}
	return append(s, v)
}

func (s *Server) queueInfoLocked() map[string]any {
	n := len(s.pending)
	if s.running != nil {
		n++
	}
	return map[string]any{"exec_info": map[string]any{"queue_remaining": n}}
}

func (s *Server) handleGetPrompt(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	info := s.queueInfoLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) handleGetQueue(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	running := []any{}
	if s.running != nil {
		running = append(running, s.running.tuple())
	}
	pending := []any{}
	for _, it := range s.pending {
		pending = append(pending, it.tuple())
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"queue_running": running, "queue_pending": pending})
}

func (s *Server) handlePostQueue(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := readJSON(r, &body); err != nil {
		serverError(w)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if clear, _ := body["clear"].(bool); clear {
		s.pending = nil
		s.broadcastStatusLocked()
	}
	// As in ComfyUI, a deleted prompt gets no event of its own (only the
	// status broadcast every queue change makes) and never a history entry.
	if del, ok := body["delete"].([]any); ok {
		for _, d := range del {
			id, _ := d.(string)
			s.deletes = appendCapped(s.deletes, id)
			if i := slices.IndexFunc(s.pending, func(it *queueItem) bool { return it.id == id }); i >= 0 {
				s.pending = slices.Delete(s.pending, i, i+1)
				s.broadcastStatusLocked()
			}
		}
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if readJSON(r, &body) != nil {
		body = nil
	}
	id, _ := body["prompt_id"].(string)
	s.mu.Lock()
	rec := Interrupt{PromptID: id}
	if s.running != nil {
		rec.Running = s.running.id
		if id == "" || id == s.running.id {
			s.interruptLocked()
		}
	}
	s.interrupts = appendCapped(s.interrupts, rec)
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) interruptLocked() {
	if !s.interrupted {
		s.interrupted = true
		close(s.interrupt)
	}
}

func (s *Server) handleFree(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleGetHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	maxItems, offset := -1, -1
	if v := q.Get("max_items"); v != "" {
		maxItems, _ = strconv.Atoi(v)
	}
	if v := q.Get("offset"); v != "" {
		offset, _ = strconv.Atoi(v)
	}
	s.mu.Lock()
	out := map[string]any{}
	if offset < 0 && maxItems >= 0 {
		offset = len(s.histOrder) - maxItems
	}
	for i, id := range s.histOrder {
		if i < offset {
			continue
		}
		out[id] = s.history[id]
		if maxItems >= 0 && len(out) >= maxItems {
			break
		}
	}
	b, err := json.Marshal(out)
	s.mu.Unlock()
	writeRaw(w, b, err)
}

func (s *Server) handleGetHistoryItem(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("prompt_id")
	s.mu.Lock()
	out := map[string]any{}
	if h, ok := s.history[id]; ok {
		out[id] = h
	}
	b, err := json.Marshal(out)
	s.mu.Unlock()
	writeRaw(w, b, err)
}

func writeRaw(w http.ResponseWriter, b []byte, err error) {
	if err != nil {
		serverError(w)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Write(b)
}

func (s *Server) handlePostHistory(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := readJSON(r, &body); err != nil {
		serverError(w)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if clear, _ := body["clear"].(bool); clear {
		s.history = map[string]*historyEntry{}
		s.histOrder = nil
	}
	// As in ComfyUI, a deleted prompt gets no event of its own (only the
	// status broadcast every queue change makes) and never a history entry.
	if del, ok := body["delete"].([]any); ok {
		for _, d := range del {
			id, _ := d.(string)
			delete(s.history, id)
			s.histOrder = slices.DeleteFunc(s.histOrder, func(h string) bool { return h == id })
		}
	}
	w.WriteHeader(http.StatusOK)
}

// handleView serves a file as ComfyUI's /view does: 400 for a file name with
// ".." or a leading "/" or an unknown type, 403 for a subfolder that leaves
// its folder, 404 for a missing file.
func (s *Server) handleView(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("filename") {
		http.NotFound(w, r)
		return
	}
	filename, typ := splitAnnotation(q.Get("filename"))
	if filename == "" || filename[0] == '/' || strings.Contains(filename, "..") {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if typ == "" {
		typ = "output"
		if q.Has("type") {
			typ = q.Get("type")
		}
	}
	if !slices.Contains(folderTypes, typ) {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	sub := q.Get("subfolder")
	if !within(sub) {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	filename = path.Base(filename)
	data, ok := s.files.get(typ, path.Join(sub, filename))
	if !ok {
		http.NotFound(w, r)
		return
	}
	ct := mime.TypeByExtension(path.Ext(filename))
	if ct == "" || strings.HasPrefix(ct, "text/html") || strings.HasPrefix(ct, "text/javascript") || strings.HasPrefix(ct, "text/css") {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Disposition", fmt.Sprintf("filename=%q", filename))
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

// handleUpload stores an image as ComfyUI's /upload/image does: a clash
// without overwrite is renamed "name (1).ext" unless the bytes are identical.
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	form, err := readUploadForm(w, r)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if form.filename == "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	typ := "input"
	if v, ok := form.fields["type"]; ok {
		typ = v
	}
	if !slices.Contains(folderTypes, typ) {
		serverError(w) // ComfyUI fails on an unknown type
		return
	}
	subfolder, filename := form.fields["subfolder"], form.filename
	if _, ok := key(typ, path.Join(subfolder, filename)); !ok || !within(subfolder) || strings.HasPrefix(filename, "/") {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	overwrite := form.fields["overwrite"] == "true" || form.fields["overwrite"] == "1"
	name := filename
	duplicate := false
	if !overwrite {
		ext := path.Ext(filename)
		stem := strings.TrimSuffix(filename, ext)
		for i := 1; s.files.exists(typ, path.Join(subfolder, name)); i++ {
			if s.files.same(typ, path.Join(subfolder, name), form.data) {
				duplicate = true
				break
			}
			name = fmt.Sprintf("%s (%d)%s", stem, i, ext)
		}
	}
	if !duplicate {
		s.files.put(typ, path.Join(subfolder, name), form.data)
	}
	s.mu.Lock()
	s.uploads = appendCapped(s.uploads, Upload{Name: name, Subfolder: subfolder, Type: typ, Overwrite: overwrite, Data: form.data})
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "subfolder": subfolder, "type": typ})
}

type uploadForm struct {
	filename string // as sent: not reduced to its base name
	data     []byte
	fields   map[string]string
}

// readUploadForm reads the multipart form of /upload/image. It keeps the
// image's file name as sent (mime/multipart's FileName would strip a path,
// which ComfyUI refuses instead).
func readUploadForm(w http.ResponseWriter, r *http.Request) (*uploadForm, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, err
	}
	r.Body = http.MaxBytesReader(w, r.Body, 128<<20)
	form := &uploadForm{fields: map[string]string{}}
	haveImage := false
	for {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(io.LimitReader(part, 128<<20))
		if err != nil {
			return nil, err
		}
		name := params["name"]
		if _, isFile := params["filename"]; isFile && name == "image" && !haveImage {
			form.filename, form.data, haveImage = params["filename"], data, true
		} else if _, set := form.fields[name]; !set {
			form.fields[name] = string(data)
		}
	}
	if !haveImage {
		return nil, errors.New("no image")
	}
	return form, nil
}

func (s *Server) handleSystemStats(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	devices := make([]any, len(s.devices))
	for i, d := range s.devices {
		devices[i] = map[string]any{
			"name": d.Name, "type": d.Type, "index": d.Index,
			"vram_total": d.VRAMTotal, "vram_free": d.VRAMFree,
			"torch_vram_total": 0, "torch_vram_free": 0,
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"system": map[string]any{
			"os":                        "linux",
			"ram_total":                 int64(135_089_471_488),
			"ram_free":                  int64(120_259_084_288),
			"comfyui_version":           "0.3.66",
			"required_frontend_version": "1.28.7",
			"python_version":            "3.12.3 (main, Jun 18 2025, 17:59:45) [GCC 13.3.0]",
			"pytorch_version":           "2.8.0+cu128",
			"embedded_python":           false,
			"argv":                      []string{"main.py", "--listen", "0.0.0.0"},
		},
		"devices": devices,
	})
}

// SetVRAMUsed sets every device's VRAM in use to ratio (0–1) of its total.
func (s *Server) SetVRAMUsed(ratio float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ratio = min(max(ratio, 0), 1)
	for i := range s.devices {
		s.devices[i].VRAMFree = s.devices[i].VRAMTotal - int64(ratio*float64(s.devices[i].VRAMTotal))
	}
}

// VRAMUsed returns each device's VRAM in use as a fraction of its total.
func (s *Server) VRAMUsed() []float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]float64, len(s.devices))
	for i, d := range s.devices {
		if d.VRAMTotal > 0 {
			out[i] = float64(d.VRAMTotal-d.VRAMFree) / float64(d.VRAMTotal)
		}
	}
	return out
}

// SetVRAMFree sets the free memory /system_stats reports for the device at
// index (its position in Options.Devices).
func (s *Server) SetVRAMFree(index int, free int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index >= 0 && index < len(s.devices) {
		s.devices[index].VRAMFree = free
	}
}

// Prompts returns the prompts accepted so far (the latest 4096), oldest
// first. Their maps are the server's own: read them, do not modify them.
func (s *Server) Prompts() []QueuedPrompt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.prompts)
}

// Uploads returns the uploads received so far (the latest 4096).
func (s *Server) Uploads() []Upload {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.uploads)
}

// Interrupts returns the POST /interrupt calls received so far (the latest 4096).
func (s *Server) Interrupts() []Interrupt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.interrupts)
}

// Deletes returns the prompt ids asked to be deleted with POST /queue (the
// latest 4096), whether or not they were still pending.
func (s *Server) Deletes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.deletes)
}

// QueueRemaining returns the number of prompts pending or running.
func (s *Server) QueueRemaining() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queueInfoLocked()["exec_info"].(map[string]any)["queue_remaining"].(int)
}

// Restart simulates ComfyUI restarting: the pending prompts and the one
// running are dropped without an event or a history entry, the history and
// the node cache (both in memory in ComfyUI) are emptied, and every
// WebSocket is closed, as the process ending closes them. Files stay: they
// are on disk. Clients may reconnect at once.
func (s *Server) Restart() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = nil
	if s.running != nil {
		s.running.lost = true
		s.running = nil
		s.interruptLocked()
	}
	s.lastNode = ""
	s.history = map[string]*historyEntry{}
	s.histOrder = nil
	s.freshCache = true
	for sid, c := range s.clients {
		c.cancel()
		delete(s.clients, sid)
	}
}

// Pause stops the executor from taking the next prompt (the one running
// goes on), so that a test can queue several and watch their places.
func (s *Server) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = true
}

// Resume undoes Pause.
func (s *Server) Resume() {
	s.mu.Lock()
	s.paused = false
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Files returns the names (with their subfolders) of the files in the
// input, output or temp folder, in the order they were last written.
func (s *Server) Files(typ string) []string {
	return s.files.list(typ)
}

// Done returns a channel closed once prompt id has its history entry (it
// succeeded, failed or was interrupted). A prompt deleted from the queue
// never gets one.
func (s *Server) Done(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.done[id]
	if !ok {
		ch = make(chan struct{})
		if _, finished := s.history[id]; finished {
			close(ch)
			return ch
		}
		s.done[id] = ch
	}
	return ch
}

// PutFile stores a file in the input, output or temp folder, as if placed
// there on disk.
func (s *Server) PutFile(typ, subfolder, name string, data []byte) error {
	if _, ok := key(typ, path.Join(subfolder, name)); !ok {
		return fmt.Errorf("comfyuitest: bad file %s/%s/%s", typ, subfolder, name)
	}
	s.files.put(typ, path.Join(subfolder, name), bytes.Clone(data))
	return nil
}

func sortIDs(ids []string) {
	slices.SortFunc(ids, func(a, b string) int {
		if len(a) != len(b) && isDigits(a) && isDigits(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
}

func sortedIDs[V any](m map[string]V) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sortIDs(ids)
	return ids
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// OutputImage returns the first image a finished prompt produced, as a
// client reads it: from its /history entry, then through /view. Tests
// compare what the gateway returned with it.
func (s *Server) OutputImage(promptID string) ([]byte, error) {
	get := func(target string) ([]byte, error) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		if rec.Code != http.StatusOK {
			return nil, fmt.Errorf("comfyuitest: GET %s: %d %s", target, rec.Code, rec.Body)
		}
		return rec.Body.Bytes(), nil
	}
	body, err := get("/history/" + url.PathEscape(promptID))
	if err != nil {
		return nil, err
	}
	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct{ Filename, Subfolder, Type string }
		}
	}
	if err := json.Unmarshal(body, &hist); err != nil {
		return nil, fmt.Errorf("comfyuitest: history of %s: %w", promptID, err)
	}
	for _, out := range hist[promptID].Outputs {
		for _, img := range out.Images {
			q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}
			return get("/view?" + q.Encode())
		}
	}
	return nil, fmt.Errorf("comfyuitest: prompt %s has no output image", promptID)
}

// CheckOutput decodes got, an image a client received for prompt promptID,
// and reports as an error where it differs from what the prompt produced:
// not a PNG, another size, or the first pixel that differs. It returns the
// decoded image's size.
func (s *Server) CheckOutput(got []byte, promptID string) (image.Rectangle, error) {
	gi, err := png.Decode(bytes.NewReader(got))
	if err != nil {
		return image.Rectangle{}, fmt.Errorf("the result (%d bytes) is not a PNG: %w", len(got), err)
	}
	want, err := s.OutputImage(promptID)
	if err != nil {
		return gi.Bounds(), err
	}
	wi, err := png.Decode(bytes.NewReader(want))
	if err != nil {
		return gi.Bounds(), fmt.Errorf("comfyuitest: output of %s: %w", promptID, err)
	}
	if gi.Bounds() != wi.Bounds() {
		return gi.Bounds(), fmt.Errorf("the result is %v; ComfyUI produced %v", gi.Bounds(), wi.Bounds())
	}
	b := gi.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if g, w := gi.At(x, y), wi.At(x, y); g != w {
				return b, fmt.Errorf("pixel (%d,%d): the result has %v, ComfyUI produced %v", x, y, g, w)
			}
		}
	}
	return b, nil
}
