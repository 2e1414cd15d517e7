package comfyuitest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"slices"
	"time"
)

// cacheEntry is a node's outputs (and UI output), reused when a later prompt
// has a node with the same signature, as ComfyUI's cache does.
type cacheEntry struct {
	values []any
	ui     map[string]any
}

// execution is the run of one prompt.
type execution struct {
	s        *Server
	item     *queueItem
	stop     <-chan struct{} // closed by /interrupt
	values   map[string][]any
	executed []string
	messages []any // [event, data] pairs for the history's status
}

const defaultJobTime = 50 * time.Millisecond

// executor runs queued prompts one at a time until Close.
func (s *Server) executor() {
	defer s.wg.Done()
	for {
		item, stop := s.take()
		if item == nil {
			return
		}
		s.execute(item, stop)
	}
}

// take waits for the next pending prompt and marks it running.
func (s *Server) take() (*queueItem, <-chan struct{}) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, nil
		}
		if len(s.pending) > 0 && !s.paused {
			if s.freshCache {
				s.cache = map[string]cacheEntry{}
				s.freshCache = false
			}
			item := s.pending[0]
			s.pending = slices.Delete(s.pending, 0, 1)
			s.running = item
			s.interrupt = make(chan struct{})
			s.interrupted = false
			s.lastNode = ""
			s.broadcastStatusLocked()
			stop := s.interrupt
			s.mu.Unlock()
			return item, stop
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-s.ctx.Done():
			return nil, nil
		}
	}
}

// add records a status message for the history and sends it to the
// prompt's client (to everyone if broadcast and the prompt has none).
func (x *execution) add(event string, data map[string]any, broadcast bool) {
	data["timestamp"] = time.Now().UnixMilli()
	x.messages = append(x.messages, []any{event, data})
	if x.item.clientID != "" || broadcast {
		x.send(event, data)
	}
}

// send sends an event of the prompt to its client (to everyone when it has
// none), unless a Restart lost the prompt.
func (x *execution) send(event string, data map[string]any) {
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	if !x.item.lost {
		x.s.sendLocked(x.item.clientID, event, data)
	}
}

// sendToClient sends an event only when the prompt has a client, as
// ComfyUI does for executing and executed.
func (x *execution) sendToClient(event string, data map[string]any) {
	if x.item.clientID != "" {
		x.send(event, data)
	}
}

// sleep waits d, or less if the prompt is interrupted or the server closes;
// it reports whether the whole time passed.
func (x *execution) sleep(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-x.stop:
			return false
		case <-x.s.ctx.Done():
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-x.stop:
		return false
	case <-x.s.ctx.Done():
		return false
	}
}

func (s *Server) execute(item *queueItem, stop <-chan struct{}) {
	id := item.id
	x := &execution{s: s, item: item, stop: stop, values: map[string][]any{}}
	log := s.log.With(slog.String("prompt_id", id))
	x.add("execution_start", map[string]any{"prompt_id": id}, false)

	order := executionOrder(item.prompt, item.outputs)
	sigs := s.signatures(item.prompt, order)
	cached, todo := []string{}, []string{}
	for _, nid := range order {
		if _, ok := s.cache[sigs[nid]]; ok {
			cached = append(cached, nid)
		} else {
			todo = append(todo, nid)
		}
	}
	x.add("execution_cached", map[string]any{"nodes": cached, "prompt_id": id}, false)

	var heavy []string
	var jobTime time.Duration
	var failure *ExecutionFailure
	if len(todo) > 0 {
		for _, nid := range todo {
			if nodeSpecs[classOf(item.prompt, nid)].heavy {
				heavy = append(heavy, nid)
			}
		}
		if len(heavy) == 0 {
			heavy = todo[len(todo)-1:]
		}
		jobTime = defaultJobTime
		if s.opts.JobTime != nil {
			jobTime = s.opts.JobTime(item.typed)
		}
		if s.opts.Fail != nil {
			failure = s.opts.Fail(item.typed)
		}
	}
	failNode := ""
	if failure != nil {
		failNode = failure.NodeID
		if failNode == "" {
			failNode = heavy[0]
		}
	}

	// The prompt takes jobTime in all: the heavy nodes' sleeps leave room
	// for the fake's own image work after them (PNG encoding, a few ms on
	// a busy host), as measured on the previous prompt.
	begin := time.Now()
	budget := max(jobTime-s.tail, 0)
	var heavyDone int
	var heavyEnd time.Time

	newCache := map[string]cacheEntry{}
	ui := map[string]map[string]any{}
	ok := true
	for _, nid := range order {
		if c, hit := s.cache[sigs[nid]]; hit {
			x.values[nid] = c.values
			if c.ui != nil {
				ui[nid] = c.ui
			}
			newCache[sigs[nid]] = c
			continue
		}
		class := classOf(item.prompt, nid)
		if !x.sleep(0) {
			x.interrupted(nid, class)
			ok = false
			break
		}
		s.mu.Lock()
		if !item.lost {
			s.lastNode = nid
		}
		s.mu.Unlock()
		x.sendToClient("executing", map[string]any{"node": nid, "display_node": nid, "prompt_id": id})
		if slices.Contains(heavy, nid) {
			heavyDone++
			end := begin.Add(budget * time.Duration(heavyDone) / time.Duration(len(heavy)))
			if !x.work(nid, time.Until(end)) {
				x.interrupted(nid, class)
				ok = false
				break
			}
			heavyEnd = time.Now()
		}
		if nid == failNode {
			x.failed(nid, class, &pyException{Type: or(failure.ExceptionType, "RuntimeError"), Message: or(failure.ExceptionMessage, "simulated failure")})
			ok = false
			break
		}
		vals, out, err := nodeSpecs[class].run(x, args{x: x, inputs: inputsOf(item.prompt, nid)})
		if err != nil {
			x.failed(nid, class, err)
			ok = false
			break
		}
		x.values[nid] = vals
		newCache[sigs[nid]] = cacheEntry{values: vals, ui: out}
		x.executed = append(x.executed, nid)
		if out != nil {
			ui[nid] = out
			x.sendToClient("executed", map[string]any{"node": nid, "display_node": nid, "output": out, "prompt_id": id})
		}
	}
	if ok {
		x.add("execution_success", map[string]any{"prompt_id": id}, false)
	}
	s.cache = newCache // a Restart meanwhile has the next take drop it
	if ok && !heavyEnd.IsZero() {
		s.tail = min(time.Since(heavyEnd), jobTime/2)
	}
	s.finish(x, ok, ui)
	log.Debug("comfyuitest: prompt done", slog.Bool("success", ok), slog.Int("cached", len(cached)), slog.Int("executed", len(x.executed)))
}

// work spends a heavy node's share of the job time, reporting progress.
func (x *execution) work(nid string, d time.Duration) bool {
	steps := 0
	switch classOf(x.item.prompt, nid) {
	case "KSampler":
		n, err := pyInt(inputsOf(x.item.prompt, nid)["steps"])
		steps = 1
		if err == nil && n.IsInt64() {
			steps = int(min(max(n.Int64(), 1), 20))
		}
	case "DDColor_Colorize":
		steps = 5
	}
	if steps == 0 {
		return x.sleep(d)
	}
	for i := 1; i <= steps; i++ {
		if !x.sleep(d / time.Duration(steps)) {
			return false
		}
		data := map[string]any{"value": i, "max": steps, "prompt_id": x.item.id, "node": nid}
		x.send("progress", data) // ComfyUI sends progress even without a client
	}
	return true
}

func (x *execution) interrupted(nid, class string) {
	x.add("execution_interrupted", map[string]any{
		"prompt_id": x.item.id, "node_id": nid, "node_type": class, "executed": append([]string{}, x.executed...),
	}, true)
}

func (x *execution) failed(nid, class string, err error) {
	ex, ok := err.(*pyException)
	if !ok {
		ex = &pyException{Type: "Exception", Message: err.Error()}
	}
	current := map[string]any{}
	for name, v := range inputsOf(x.item.prompt, nid) {
		if _, isLink := v.([]any); !isLink {
			current[name] = []any{v}
		}
	}
	outputs := []string{}
	for nid := range x.values {
		outputs = append(outputs, nid)
	}
	sortIDs(outputs)
	x.add("execution_error", map[string]any{
		"prompt_id":         x.item.id,
		"node_id":           nid,
		"node_type":         class,
		"executed":          append([]string{}, x.executed...),
		"exception_message": ex.Message,
		"exception_type":    ex.Type,
		"traceback":         []string{"  File \"execution.py\", line 496, in execute\n"},
		"current_inputs":    current,
		"current_outputs":   outputs,
	}, false)
}

// historyEntry is one prompt's /history entry, fields in ComfyUI's order.
type historyEntry struct {
	Prompt  []any          `json:"prompt"`
	Outputs map[string]any `json:"outputs"`
	Status  historyStatus  `json:"status"`
	Meta    map[string]any `json:"meta"`
}

type historyStatus struct {
	StatusStr string `json:"status_str"`
	Completed bool   `json:"completed"`
	Messages  []any  `json:"messages"`
}

// finish writes the history entry, then sends executing {node: null}.
func (s *Server) finish(x *execution, ok bool, ui map[string]map[string]any) {
	item := x.item
	outputs := map[string]any{}
	meta := map[string]any{}
	for nid, out := range ui {
		outputs[nid] = out
		meta[nid] = map[string]any{"node_id": nid, "display_node": nid, "parent_node": nil, "real_node_id": nid}
	}
	status := "success"
	if !ok {
		status = "error"
	}
	entry := &historyEntry{
		Prompt:  item.tuple(),
		Outputs: outputs,
		Status:  historyStatus{StatusStr: status, Completed: ok, Messages: x.messages},
		Meta:    meta,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if item.lost {
		return // dropped by a Restart: no history, no event
	}
	if len(s.histOrder) >= maxHistory {
		delete(s.history, s.histOrder[0])
		s.histOrder = slices.Delete(s.histOrder, 0, 1)
	}
	if _, exists := s.history[item.id]; !exists {
		s.histOrder = append(s.histOrder, item.id)
	}
	s.history[item.id] = entry
	s.running = nil
	s.lastNode = ""
	s.broadcastStatusLocked()
	s.sendLocked(item.clientID, "executing", map[string]any{"node": nil, "prompt_id": item.id})
	if ch, ok := s.done[item.id]; ok {
		close(ch)
		delete(s.done, item.id)
	}
}

// executionOrder lists the nodes the outputs need, each after its inputs.
func executionOrder(p map[string]any, outputs []string) []string {
	seen := map[string]bool{}
	var out []string
	var visit func(id string)
	visit = func(id string) {
		if seen[id] {
			return
		}
		seen[id] = true
		in := inputsOf(p, id)
		for _, spec := range nodeSpecs[classOf(p, id)].inputs {
			if target, ok := linkTarget(in[spec.name]); ok {
				if _, exists := p[target]; exists {
					visit(target)
				}
			}
		}
		out = append(out, id)
	}
	outs := slices.Clone(outputs)
	sortIDs(outs)
	for _, o := range outs {
		visit(o)
	}
	return out
}

// signatures hash each node with its literal inputs and the signatures of
// the nodes it links to; LoadImage also hashes its file, like ComfyUI's
// IS_CHANGED.
func (s *Server) signatures(p map[string]any, order []string) map[string]string {
	sigs := make(map[string]string, len(order))
	for _, nid := range order {
		in := map[string]any{}
		for name, v := range inputsOf(p, nid) {
			if target, ok := linkTarget(v); ok {
				in[name] = []any{sigs[target], v.([]any)[1]}
			} else {
				in[name] = v
			}
		}
		class := classOf(p, nid)
		m := map[string]any{"class_type": class, "inputs": in}
		if class == "LoadImage" {
			name, _ := in["image"].(string)
			data, _ := s.files.lookupAnnotated(name)
			sum := sha256.Sum256(data)
			m["file"] = hex.EncodeToString(sum[:])
		}
		b, _ := json.Marshal(m)
		sum := sha256.Sum256(b)
		sigs[nid] = hex.EncodeToString(sum[:])
	}
	return sigs
}

func inputsOf(p map[string]any, id string) map[string]any {
	node, _ := p[id].(map[string]any)
	in, _ := node["inputs"].(map[string]any)
	return in
}

func linkTarget(v any) (string, bool) {
	l, ok := v.([]any)
	if !ok || len(l) != 2 {
		return "", false
	}
	id, ok := l[0].(string)
	return id, ok
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
