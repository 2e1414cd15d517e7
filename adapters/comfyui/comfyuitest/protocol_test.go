package comfyuitest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

func smallPNG(t testing.TB, w, h int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func start(t *testing.T, opts comfyuitest.Options) *comfyuitest.Server {
	t.Helper()
	s := comfyuitest.NewServer(opts)
	t.Cleanup(s.Close)
	return s
}

// call makes a request and returns the status and the body.
func call(t *testing.T, method, url, contentType string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func postJSON(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	return call(t, http.MethodPost, url, "application/json", []byte(body))
}

// sameJSON compares two JSON texts as values.
func sameJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expectation: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("got  %s\nwant %s", got, compact(want))
	}
}

func compact(s string) string {
	var buf bytes.Buffer
	json.Compact(&buf, []byte(s))
	return buf.String()
}

const ddcolor = `{"1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}},
 "2": {"class_type": "DDColor_Colorize", "inputs": {"image": ["1", 0], "model_input_size": %SIZE%, "checkpoint": %CKPT%}},
 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ddcolor/person"}}}`

func ddcolorPrompt(size, ckpt string) string {
	return strings.NewReplacer("%SIZE%", size, "%CKPT%", ckpt).Replace(ddcolor)
}

func zimagePrompt(width, height, steps, sampler string) string {
	return `{"28": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
 "30": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"}},
 "29": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
 "27": {"class_type": "CLIPTextEncode", "inputs": {"text": "PROMPT", "clip": ["30", 0]}},
 "33": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["27", 0]}},
 "13": {"class_type": "EmptySD3LatentImage", "inputs": {"width": ` + width + `, "height": ` + height + `, "batch_size": 1}},
 "11": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3, "model": ["28", 0]}},
 "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": ` + steps + `, "cfg": 1, "sampler_name": "` + sampler + `", "scheduler": "simple", "denoise": 1, "model": ["11", 0], "positive": ["27", 0], "negative": ["33", 0], "latent_image": ["13", 0]}},
 "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["29", 0]}},
 "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "z-image-turbo"}}}`
}

const (
	ddcolorCkpts = `["ddcolor_paper_tiny.pth", "ddcolor_paper.pth", "ddcolor_modelscope.pth", "ddcolor_artistic.pth"]`
	sizeConfig   = `["INT", {"default": 512, "min": 32, "max": 4096, "step": 32}]`
	widthConfig  = `["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}]`
)

func TestPostPromptValidation(t *testing.T) {
	s := start(t, comfyuitest.Options{})
	if err := s.PutFile("input", "", "upload.png", smallPNG(t, 4, 4)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		body   string
		status int
		want   string // the whole answer; for 200, only node_errors is compared
	}{
		{
			name: "no prompt", body: `{"client_id": "x"}`, status: 400,
			want: `{"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}`,
		},
		{
			name: "unknown class_type", body: `{"prompt": {"1": {"class_type": "Upscale4000", "inputs": {}}}}`, status: 400,
			want: `{"error": {"type": "invalid_prompt", "message": "Cannot execute because node Upscale4000 does not exist.", "details": "Node ID '#1'",
				"extra_info": {}}, "node_errors": {}}`,
		},
		{
			name: "unknown class_type with a title", body: `{"prompt": {"7": {"class_type": "X", "inputs": {}, "_meta": {"title": "Magic"}}}}`, status: 400,
			want: `{"error": {"type": "invalid_prompt", "message": "Cannot execute because node X does not exist.", "details": "Node ID '#7'",
				"extra_info": {}}, "node_errors": {}}`,
		},
		{
			name: "no class_type", body: `{"prompt": {"4": {"inputs": {}}}}`, status: 400,
			want: `{"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.", "details": "Node ID '#4'",
				"extra_info": {}}, "node_errors": {}}`,
		},
		{
			name: "no outputs", body: `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}}}}`, status: 400,
			want: `{"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, "node_errors": {}}`,
		},
		{
			name: "invalid prompt_id", body: `{"prompt": {}, "prompt_id": "9F2C1A4E-0000-4000-8000-000000000000"}`, status: 400,
			want: `{"error": {"type": "invalid_prompt_id", "message": "prompt_id must be a valid UUID",
				"details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one", "extra_info": {}}, "node_errors": {}}`,
		},
		{
			name: "size too big", body: `{"prompt": ` + ddcolorPrompt("5000", `"ddcolor_modelscope.pth"`) + `}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {"2": {"errors": [{"type": "value_bigger_than_max", "message": "Value 5000 bigger than max of 4096", "details": "model_input_size",
					"extra_info": {"input_name": "model_input_size", "input_config": ` + sizeConfig + `, "received_value": 5000}}],
					"dependent_outputs": ["3"], "class_type": "DDColor_Colorize"}}}`,
		},
		{
			name: "size too small, given as a string", body: `{"prompt": ` + ddcolorPrompt(`"16"`, `"ddcolor_modelscope.pth"`) + `}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {"2": {"errors": [{"type": "value_smaller_than_min", "message": "Value 16 smaller than min of 32", "details": "model_input_size",
					"extra_info": {"input_name": "model_input_size", "input_config": ` + sizeConfig + `, "received_value": 16}}],
					"dependent_outputs": ["3"], "class_type": "DDColor_Colorize"}}}`,
		},
		{
			name: "size not a number", body: `{"prompt": ` + ddcolorPrompt(`"big"`, `"ddcolor_modelscope.pth"`) + `}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {"2": {"errors": [{"type": "invalid_input_type", "message": "Failed to convert an input value to a INT value",
					"details": "model_input_size, big, invalid literal for int() with base 10: 'big'",
					"extra_info": {"input_name": "model_input_size", "input_config": ` + sizeConfig + `, "received_value": "big",
						"exception_message": "invalid literal for int() with base 10: 'big'"}}],
					"dependent_outputs": ["3"], "class_type": "DDColor_Colorize"}}}`,
		},
		{
			name: "checkpoint not in list", body: `{"prompt": ` + ddcolorPrompt("512", `"ddcolor_v2.pth"`) + `}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {"2": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
					"details": "checkpoint: 'ddcolor_v2.pth' not in ['ddcolor_paper_tiny.pth', 'ddcolor_paper.pth', 'ddcolor_modelscope.pth', 'ddcolor_artistic.pth']",
					"extra_info": {"input_name": "checkpoint", "input_config": [` + ddcolorCkpts + `, {}], "received_value": "ddcolor_v2.pth"}}],
					"dependent_outputs": ["3"], "class_type": "DDColor_Colorize"}}}`,
		},
		{
			name: "image not uploaded", body: `{"prompt": ` + strings.Replace(ddcolorPrompt("512", `"ddcolor_paper.pth"`), "upload.png", "missing.png", 1) + `}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {"1": {"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
					"details": "image - Invalid image file: missing.png", "extra_info": {"input_name": "image"}}],
					"dependent_outputs": ["3"], "class_type": "LoadImage"}}}`,
		},
		{
			name: "output node's own error", body: `{"prompt": {"3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "Required input is missing: images", "extra_info": {}},
				"node_errors": {"3": {"errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "images", "extra_info": {"input_name": "images"}}],
					"dependent_outputs": ["3"], "class_type": "SaveImage"}}}`,
		},
		{
			name: "link of the wrong type", body: `{"prompt": {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
				"3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "Return type mismatch between linked nodes: images, VAE != IMAGE", "extra_info": {}},
				"node_errors": {"3": {"errors": [{"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes", "details": "images, VAE != IMAGE",
					"extra_info": {"input_name": "images", "input_config": ["IMAGE", {}], "received_type": "VAE", "linked_node": ["1", 0]}}],
					"dependent_outputs": ["3"], "class_type": "SaveImage"}}}`,
		},
		{
			name: "steps and width out of range, sampler unknown", body: `{"prompt": ` + zimagePrompt("20000", "8", "0", "euler_magic") + `}`, status: 400,
			want: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {
					"13": {"errors": [
						{"type": "value_bigger_than_max", "message": "Value 20000 bigger than max of 16384", "details": "width",
							"extra_info": {"input_name": "width", "input_config": ` + widthConfig + `, "received_value": 20000}},
						{"type": "value_smaller_than_min", "message": "Value 8 smaller than min of 16", "details": "height",
							"extra_info": {"input_name": "height", "input_config": ` + widthConfig + `, "received_value": 8}}],
						"dependent_outputs": ["9"], "class_type": "EmptySD3LatentImage"},
					"3": {"errors": [
						{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "steps",
							"extra_info": {"input_name": "steps", "input_config": ["INT", {"default": 20, "min": 1, "max": 10000, "step": 1}], "received_value": 0}},
						{"type": "value_not_in_list", "message": "Value not in list", "details": "sampler_name: 'euler_magic' not in (list of length 37)",
							"extra_info": {"input_name": "sampler_name", "input_config": null, "received_value": "euler_magic"}}],
						"dependent_outputs": ["9"], "class_type": "KSampler"}}}`,
		},
		{
			name: "one good output of two is queued, with the other's errors", status: 200,
			body: `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}},
				"2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
				"3": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
				"4": {"class_type": "DDColor_Colorize", "inputs": {"image": ["1", 0], "model_input_size": 1, "checkpoint": "ddcolor_paper.pth"}}}}`,
			want: `{"node_errors": {"4": {"errors": [{"type": "value_smaller_than_min", "message": "Value 1 smaller than min of 32", "details": "model_input_size",
				"extra_info": {"input_name": "model_input_size", "input_config": ` + sizeConfig + `, "received_value": 1}}],
				"dependent_outputs": ["3"], "class_type": "DDColor_Colorize"}}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, prefix := range []string{"", "/api"} {
				status, body := postJSON(t, s.URL+prefix+"/prompt", tt.body)
				if status != tt.status {
					t.Fatalf("%s/prompt: status %d, want %d: %s", prefix, status, tt.status, body)
				}
				if status == 200 {
					var ok struct {
						PromptID   string          `json:"prompt_id"`
						Number     *int            `json:"number"`
						NodeErrors json.RawMessage `json:"node_errors"`
					}
					json.Unmarshal(body, &ok)
					if ok.PromptID == "" || ok.Number == nil {
						t.Errorf("answer %s", body)
					}
					sameJSON(t, []byte(`{"node_errors": `+string(ok.NodeErrors)+`}`), tt.want)
					<-s.Done(ok.PromptID)
					continue
				}
				sameJSON(t, body, tt.want)
			}
		})
	}
	if status, _ := postJSON(t, s.URL+"/prompt", `{"prompt": [1, 2]}`); status != 500 {
		t.Errorf("a list as prompt: status %d, want ComfyUI's 500", status)
	}
	if status, _ := postJSON(t, s.URL+"/prompt", `{"prompt": `); status != 500 {
		t.Errorf("bad JSON: status %d, want 500", status)
	}
}

func TestPostPromptAnswer(t *testing.T) {
	s := start(t, comfyuitest.Options{})
	id := uuid.NewString()
	status, body := postJSON(t, s.URL+"/prompt", `{"prompt": `+zimagePrompt("64", "64", "2", "euler")+`, "prompt_id": "`+id+`", "client_id": "c1", "extra_data": {"k": "v"}}`)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	sameJSON(t, body, `{"prompt_id": "`+id+`", "number": 0, "node_errors": {}}`)
	_, body = postJSON(t, s.URL+"/prompt", `{"prompt": `+zimagePrompt("64", "64", "2", "euler")+`, "front": true}`)
	var second struct {
		PromptID string `json:"prompt_id"`
		Number   int    `json:"number"`
	}
	json.Unmarshal(body, &second)
	if second.Number != -1 || uuid.MustParse(second.PromptID).String() != second.PromptID {
		t.Errorf("second answer %s", body)
	}
	p := s.Prompts()[0]
	if p.ID != id || p.ClientID != "c1" || p.ExtraData["k"] != "v" || p.ExtraData["client_id"] != "c1" {
		t.Errorf("recorded %+v", p)
	}
	<-s.Done(id)
	<-s.Done(second.PromptID)
}

// wsConn dials /ws and reads its greeting.
func wsConn(t *testing.T, base, clientID string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), base+"/ws?clientId="+clientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	typ, data := readEvent(t, c)
	if typ != "status" {
		t.Fatalf("first frame %s", typ)
	}
	var greet struct {
		Status struct {
			ExecInfo struct {
				QueueRemaining *int `json:"queue_remaining"`
			} `json:"exec_info"`
		} `json:"status"`
		SID string `json:"sid"`
	}
	json.Unmarshal(data, &greet)
	if greet.SID != clientID || greet.Status.ExecInfo.QueueRemaining == nil {
		t.Fatalf("greeting %s", data)
	}
	return c
}

func readEvent(t *testing.T, c *websocket.Conn) (string, json.RawMessage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("reading /ws: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("binary frame")
	}
	var m struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m.Type, m.Data
}

type event struct {
	typ  string
	node *string
	data map[string]any
}

// follow reads events until executing {node: null} for id, skipping status.
func follow(t *testing.T, c *websocket.Conn, id string, atEnd func()) []event {
	t.Helper()
	var evs []event
	for {
		typ, data := readEvent(t, c)
		if typ == "status" {
			continue
		}
		var m map[string]any
		json.Unmarshal(data, &m)
		if m["prompt_id"] != id {
			t.Fatalf("event %s for another prompt: %s", typ, data)
		}
		e := event{typ: typ, data: m}
		if n, ok := m["node"].(string); ok {
			e.node = &n
		}
		evs = append(evs, e)
		if typ == "executing" && m["node"] == nil {
			atEnd()
			return evs
		}
	}
}

func summary(evs []event) string {
	var parts []string
	for _, e := range evs {
		s := e.typ
		if e.node != nil {
			s += ":" + *e.node
		}
		if e.typ == "progress" {
			s += ":" + jsonText(e.data["value"])
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func jsonText(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestWebSocketEventsAndHistory(t *testing.T) {
	s := start(t, comfyuitest.Options{})
	s.PutFile("input", "", "upload.png", smallPNG(t, 20, 10))
	c := wsConn(t, s.URL, "client-a")
	id := uuid.NewString()
	body := `{"prompt": ` + ddcolorPrompt("512", `"ddcolor_paper.pth"`) + `, "client_id": "client-a", "prompt_id": "` + id + `"}`
	if status, b := postJSON(t, s.URL+"/prompt", body); status != 200 {
		t.Fatalf("status %d: %s", status, b)
	}
	var history []byte
	evs := follow(t, c, id, func() { _, history = call(t, "GET", s.URL+"/history/"+id, "", nil) })
	want := "execution_start execution_cached executing:1 executing:2 progress:2:1 progress:2:2 progress:2:3 progress:2:4 progress:2:5 executing:3 executed:3 execution_success executing"
	if got := summary(evs); got != want {
		t.Errorf("events\n got %s\nwant %s", got, want)
	}
	executed := evs[len(evs)-3].data
	sameJSON(t, []byte(jsonText(executed["output"])), `{"images": [{"filename": "person_00001_.png", "subfolder": "ddcolor", "type": "output"}]}`)

	// The history was written before executing {node: null}.
	var h map[string]struct {
		Prompt  []json.RawMessage `json:"prompt"`
		Outputs json.RawMessage   `json:"outputs"`
		Status  struct {
			StatusStr string              `json:"status_str"`
			Completed bool                `json:"completed"`
			Messages  [][]json.RawMessage `json:"messages"`
		} `json:"status"`
	}
	if err := json.Unmarshal(history, &h); err != nil {
		t.Fatal(err)
	}
	e, ok := h[id]
	if !ok {
		t.Fatalf("no history when the prompt ended: %s", history)
	}
	sameJSON(t, e.Outputs, `{"3": {"images": [{"filename": "person_00001_.png", "subfolder": "ddcolor", "type": "output"}]}}`)
	if e.Status.StatusStr != "success" || !e.Status.Completed || len(e.Prompt) != 5 || string(e.Prompt[1]) != `"`+id+`"` {
		t.Errorf("history entry %s", history)
	}
	var names []string
	for _, m := range e.Status.Messages {
		var n string
		json.Unmarshal(m[0], &n)
		names = append(names, n)
	}
	if strings.Join(names, " ") != "execution_start execution_cached execution_success" {
		t.Errorf("status messages %v", names)
	}

	// The output is the input's size.
	status, img := call(t, "GET", s.URL+"/api/view?filename=person_00001_.png&subfolder=ddcolor&type=output", "", nil)
	cfg, err := png.DecodeConfig(bytes.NewReader(img))
	if status != 200 || err != nil || cfg.Width != 20 || cfg.Height != 10 {
		t.Errorf("view: %d %v %+v", status, err, cfg)
	}

	// The same prompt again is served from the cache, with the old file.
	id2 := uuid.NewString()
	postJSON(t, s.URL+"/prompt", strings.Replace(body, id, id2, 1))
	evs = follow(t, c, id2, func() {})
	if got := summary(evs); got != "execution_start execution_cached execution_success executing" {
		t.Errorf("cached run events %s", got)
	}
	if got := jsonText(evs[1].data["nodes"]); got != `["1","2","3"]` {
		t.Errorf("cached nodes %s", got)
	}
	_, history = call(t, "GET", s.URL+"/history/"+id2, "", nil)
	if !strings.Contains(string(history), `"filename":"person_00001_.png"`) {
		t.Errorf("cached history %s", history)
	}

	// A new image under the same name is not served from the cache.
	s.PutFile("input", "", "upload.png", smallPNG(t, 30, 10))
	id3 := uuid.NewString()
	postJSON(t, s.URL+"/prompt", strings.Replace(body, id, id3, 1))
	evs = follow(t, c, id3, func() {})
	if got := jsonText(evs[1].data["nodes"]); got != `[]` {
		t.Errorf("cached nodes after a new upload: %s", got)
	}
}

func TestExecutionError(t *testing.T) {
	s := start(t, comfyuitest.Options{Fail: func(p comfyuitest.Prompt) *comfyuitest.ExecutionFailure {
		return &comfyuitest.ExecutionFailure{NodeID: "8", ExceptionType: "torch.OutOfMemoryError", ExceptionMessage: "Allocation on device"}
	}})
	c := wsConn(t, s.URL, "c")
	id := uuid.NewString()
	postJSON(t, s.URL+"/prompt", `{"prompt": `+zimagePrompt("64", "64", "3", "euler")+`, "client_id": "c", "prompt_id": "`+id+`"}`)
	var history []byte
	evs := follow(t, c, id, func() { _, history = call(t, "GET", s.URL+"/history/"+id, "", nil) })
	want := "execution_start execution_cached executing:28 executing:11 executing:30 executing:27 executing:33 executing:13 executing:3 progress:3:1 progress:3:2 progress:3:3 executing:29 executing:8 execution_error executing"
	if got := summary(evs); got != want {
		t.Errorf("events\n got %s\nwant %s", got, want)
	}
	ee := evs[len(evs)-2].data
	if ee["node_id"] != "8" || ee["node_type"] != "VAEDecode" || ee["exception_type"] != "torch.OutOfMemoryError" ||
		ee["exception_message"] != "Allocation on device" || jsonText(ee["executed"]) != `["28","11","30","27","33","13","3","29"]` {
		t.Errorf("execution_error %v", ee)
	}
	if !strings.Contains(string(history), `"status_str":"error","completed":false`) || !strings.Contains(string(history), `["execution_error",{`) {
		t.Errorf("history %s", history)
	}
}

func TestQueueInterruptAndFIFO(t *testing.T) {
	var order []string
	started := make(chan string, 10)
	release := make(chan struct{})
	s := start(t, comfyuitest.Options{JobTime: func(p comfyuitest.Prompt) time.Duration {
		text, _ := p.String("CLIPTextEncode", "text")
		order = append(order, text) // the executor is one goroutine
		started <- text
		if text == "a" {
			<-release
			return time.Minute // interrupted long before
		}
		return time.Millisecond
	}})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	ids := map[string]string{}
	for _, text := range []string{"a", "b", "c", "d"} {
		p := strings.Replace(zimagePrompt("32", "32", "1", "euler"), "PROMPT", text, 1)
		_, body := postJSON(t, s.URL+"/prompt", `{"prompt": `+p+`}`)
		var ok struct {
			PromptID string `json:"prompt_id"`
		}
		json.Unmarshal(body, &ok)
		ids[text] = ok.PromptID
		if text == "a" {
			<-started // a is running
		}
	}
	_, q := call(t, "GET", s.URL+"/queue", "", nil)
	var queue struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	json.Unmarshal(q, &queue)
	if len(queue.Running) != 1 || len(queue.Pending) != 3 || string(queue.Running[0][1]) != `"`+ids["a"]+`"` || len(queue.Running[0]) != 5 {
		t.Fatalf("queue %s", q)
	}
	_, info := call(t, "GET", s.URL+"/prompt", "", nil)
	sameJSON(t, info, `{"exec_info": {"queue_remaining": 4}}`)

	postJSON(t, s.URL+"/queue", `{"delete": ["`+ids["c"]+`"]}`)
	if n := s.QueueRemaining(); n != 3 {
		t.Errorf("after delete: %d remaining", n)
	}
	// An interrupt naming another prompt leaves the running one alone.
	postJSON(t, s.URL+"/interrupt", `{"prompt_id": "`+ids["b"]+`"}`)
	postJSON(t, s.URL+"/api/interrupt", ``) // global
	close(release)
	<-s.Done(ids["a"])
	<-s.Done(ids["b"])
	<-s.Done(ids["d"])
	if got := strings.Join(order, ""); got != "abd" {
		t.Errorf("ran %s, want abd in queue order", got)
	}
	_, h := call(t, "GET", s.URL+"/history/"+ids["a"], "", nil)
	if !strings.Contains(string(h), `"status_str":"error","completed":false`) || !strings.Contains(string(h), `["execution_interrupted",{`) {
		t.Errorf("interrupted history %s", h)
	}
	if got := s.Interrupts(); len(got) != 2 || got[0].PromptID != ids["b"] || got[0].Running != ids["a"] || got[1].PromptID != "" {
		t.Errorf("interrupts %+v", got)
	}

	// One at a time: each prompt starts after the previous one ended.
	_, all := call(t, "GET", s.URL+"/history", "", nil)
	var hist map[string]struct {
		Status struct {
			Messages [][]json.RawMessage `json:"messages"`
		} `json:"status"`
	}
	json.Unmarshal(all, &hist)
	if len(hist) != 3 {
		t.Fatalf("history has %d entries", len(hist))
	}
	var prevEnd int64
	for _, text := range []string{"a", "b", "d"} {
		msgs := hist[ids[text]].Status.Messages
		first, last := stamp(msgs[0][1]), stamp(msgs[len(msgs)-1][1])
		if first < prevEnd {
			t.Errorf("%s started at %d before the previous ended at %d", text, first, prevEnd)
		}
		prevEnd = last
	}
	_, latest := call(t, "GET", s.URL+"/history?max_items=1", "", nil)
	var one map[string]any
	json.Unmarshal(latest, &one)
	if _, ok := one[ids["d"]]; !ok || len(one) != 1 {
		t.Errorf("max_items=1 gave %s", latest)
	}

}

func stamp(raw json.RawMessage) int64 {
	var d struct {
		Timestamp int64 `json:"timestamp"`
	}
	json.Unmarshal(raw, &d)
	return d.Timestamp
}

func TestQueueClear(t *testing.T) {
	release := make(chan struct{})
	running := make(chan struct{}, 1)
	s := start(t, comfyuitest.Options{JobTime: func(p comfyuitest.Prompt) time.Duration {
		select {
		case running <- struct{}{}:
		default:
		}
		<-release
		return time.Millisecond
	}})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	var first string
	for i := range 3 {
		_, body := postJSON(t, s.URL+"/prompt", `{"prompt": `+zimagePrompt("32", "32", "1", "euler")+`}`)
		if i == 0 {
			var ok struct {
				PromptID string `json:"prompt_id"`
			}
			json.Unmarshal(body, &ok)
			first = ok.PromptID
			<-running
		}
	}
	postJSON(t, s.URL+"/queue", `{"clear": true}`)
	if n := s.QueueRemaining(); n != 1 {
		t.Errorf("after clear %d remaining, want the running one", n)
	}
	close(release)
	<-s.Done(first)
	if n := s.QueueRemaining(); n != 0 {
		t.Errorf("at the end %d remaining", n)
	}
}

func upload(t *testing.T, base string, name string, data []byte, fields map[string]string) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if name != "" {
		fw, _ := mw.CreateFormFile("image", name)
		fw.Write(data)
	}
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	mw.Close()
	status, body := call(t, http.MethodPost, base+"/upload/image", mw.FormDataContentType(), buf.Bytes())
	return status, string(body)
}

func TestUploadImage(t *testing.T) {
	s := start(t, comfyuitest.Options{})
	a, b, c := smallPNG(t, 1, 1), smallPNG(t, 2, 2), smallPNG(t, 3, 3)
	tests := []struct {
		name   string
		file   string
		data   []byte
		fields map[string]string
		status int
		want   string
	}{
		{"first", "a.png", a, nil, 200, `{"name": "a.png", "subfolder": "", "type": "input"}`},
		{"clash is renamed", "a.png", b, nil, 200, `{"name": "a (1).png", "subfolder": "", "type": "input"}`},
		{"identical bytes are not copied", "a.png", a, nil, 200, `{"name": "a.png", "subfolder": "", "type": "input"}`},
		{"identical to the renamed one", "a.png", b, nil, 200, `{"name": "a (1).png", "subfolder": "", "type": "input"}`},
		{"second clash", "a.png", c, nil, 200, `{"name": "a (2).png", "subfolder": "", "type": "input"}`},
		{"overwrite", "a.png", c, map[string]string{"overwrite": "true"}, 200, `{"name": "a.png", "subfolder": "", "type": "input"}`},
		{"overwrite 1", "a.png", b, map[string]string{"overwrite": "1"}, 200, `{"name": "a.png", "subfolder": "", "type": "input"}`},
		{"subfolder and type", "a.png", a, map[string]string{"subfolder": "sluice", "type": "temp"}, 200, `{"name": "a.png", "subfolder": "sluice", "type": "temp"}`},
		{"no image", "", nil, nil, 400, ``},
		{"escaping subfolder", "a.png", a, map[string]string{"subfolder": "../up"}, 400, ``},
		{"escaping file name", "../a.png", a, nil, 400, ``},
		{"unknown type", "a.png", a, map[string]string{"type": "models"}, 500, ``},
	}
	for _, tt := range tests {
		status, body := upload(t, s.URL, tt.file, tt.data, tt.fields)
		if status != tt.status {
			t.Fatalf("%s: status %d, want %d: %s", tt.name, status, tt.status, body)
		}
		if tt.want != "" {
			sameJSON(t, []byte(body), tt.want)
		}
	}
	// What was stored under each name.
	for name, want := range map[string][]byte{"a.png": b, "a (1).png": b, "a (2).png": c} {
		_, got := call(t, "GET", s.URL+"/view?type=input&filename="+strings.ReplaceAll(name, " ", "%20"), "", nil)
		if !bytes.Equal(got, want) {
			t.Errorf("%s holds the wrong bytes", name)
		}
	}
	// A LoadImage node names an upload in a subfolder as subfolder/name.
	upload(t, s.URL, "in.png", a, map[string]string{"subfolder": "sluice"})
	status, body := postJSON(t, s.URL+"/prompt", `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "sluice/in.png"}},
		"2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}`)
	if status != 200 {
		t.Errorf("LoadImage sluice/in.png: %d %s", status, body)
	}
	var ok struct {
		PromptID string `json:"prompt_id"`
	}
	json.Unmarshal(body, &ok)
	<-s.Done(ok.PromptID)
}

func TestView(t *testing.T) {
	s := start(t, comfyuitest.Options{})
	png1 := smallPNG(t, 5, 5)
	s.PutFile("output", "ddcolor", "p_00001_.png", png1)
	s.PutFile("output", "", "top.png", png1)
	s.PutFile("temp", "", "t.png", png1)
	s.PutFile("input", "", "i.png", png1)
	tests := []struct {
		query  string
		status int
	}{
		{"filename=p_00001_.png&subfolder=ddcolor&type=output", 200},
		{"filename=p_00001_.png&subfolder=ddcolor", 200}, // type defaults to output
		{"filename=top.png", 200},
		{"filename=t.png&type=temp", 200},
		{"filename=i.png [input]", 200}, // annotated
		{"filename=x/top.png", 200},     // the base name is served
		{"filename=p_00001_.png&subfolder=ddcolor&type=input", 404},
		{"filename=nope.png", 404},
		{"", 404},
		{"filename=", 400},
		{"filename=../secret.png", 400},
		{"filename=a..png", 400},
		{"filename=/etc/passwd", 400},
		{"filename=top.png&type=models", 400},
		{"filename=top.png&type=", 400},
		{"filename=top.png&subfolder=../input", 403},
		{"filename=top.png&subfolder=/etc", 403},
		{"filename=top.png&subfolder=a/../../x", 403},
	}
	for _, tt := range tests {
		for _, prefix := range []string{"", "/api"} {
			u := s.URL + prefix + "/view?" + strings.ReplaceAll(tt.query, " ", "%20")
			resp, err := http.Get(u)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("%s: status %d, want %d", u, resp.StatusCode, tt.status)
			}
			if tt.status == 200 {
				if !bytes.Equal(got, png1) || resp.Header.Get("Content-Type") != "image/png" ||
					!strings.HasPrefix(resp.Header.Get("Content-Disposition"), `filename="`) {
					t.Errorf("%s: %q %q", u, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"))
				}
			}
		}
	}
}

func TestSystemStats(t *testing.T) {
	s := start(t, comfyuitest.Options{})
	s.SetVRAMFree(0, 1234)
	_, body := call(t, "GET", s.URL+"/api/system_stats", "", nil)
	var st struct {
		System  map[string]any   `json:"system"`
		Devices []map[string]any `json:"devices"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version", "embedded_python", "argv"} {
		if _, ok := st.System[k]; !ok {
			t.Errorf("system lacks %s", k)
		}
	}
	if len(st.Devices) != 1 {
		t.Fatalf("devices %s", body)
	}
	d := st.Devices[0]
	for _, k := range []string{"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"} {
		if _, ok := d[k]; !ok {
			t.Errorf("device lacks %s", k)
		}
	}
	if d["vram_free"] != float64(1234) || d["type"] != "cuda" || d["vram_total"].(float64) < 80e9 {
		t.Errorf("device %v", d)
	}
}

// A silent WebSocket greets, then sends nothing, and stays open.
func TestSilentWebSocket(t *testing.T) {
	s := start(t, comfyuitest.Options{SilentWS: true})
	c := wsConn(t, s.URL, "quiet")
	_, body := postJSON(t, s.URL+"/prompt", `{"prompt": `+zimagePrompt("32", "32", "1", "euler")+`, "client_id": "quiet"}`)
	var ok struct {
		PromptID string `json:"prompt_id"`
	}
	json.Unmarshal(body, &ok)
	<-s.Done(ok.PromptID)
	// Everything the prompt would have sent is sent by now; give the socket
	// a moment to deliver anything queued, then expect nothing.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if typ, b, err := c.Read(ctx); err == nil {
		t.Errorf("silent socket sent %v %s", typ, b)
	}
}

// The simulator can be mounted on a server of the caller's.
func TestNewHandlerMounted(t *testing.T) {
	sim := comfyuitest.NewHandler(comfyuitest.Options{})
	defer sim.Close()
	mux := http.NewServeMux()
	mux.Handle("/", sim)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	c := wsConn(t, hs.URL, "m")
	id := uuid.NewString()
	postJSON(t, hs.URL+"/prompt", `{"prompt": `+zimagePrompt("48", "40", "2", "euler")+`, "client_id": "m", "prompt_id": "`+id+`"}`)
	follow(t, c, id, func() {})
	_, h := call(t, "GET", hs.URL+"/history/"+id, "", nil)
	if !strings.Contains(string(h), `"filename":"z-image-turbo_00001_.png"`) {
		t.Fatalf("history %s", h)
	}
	_, img := call(t, "GET", hs.URL+"/view?filename=z-image-turbo_00001_.png", "", nil)
	cfg, err := png.DecodeConfig(bytes.NewReader(img))
	if err != nil || cfg.Width != 48 || cfg.Height != 40 {
		t.Errorf("generated %+v %v", cfg, err)
	}
}

func TestFieldJobTime(t *testing.T) {
	parse := func(s string) comfyuitest.Prompt {
		var raw map[string]struct {
			ClassType string         `json:"class_type"`
			Inputs    map[string]any `json:"inputs"`
		}
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		if err := dec.Decode(&raw); err != nil {
			t.Fatal(err)
		}
		p := comfyuitest.Prompt{}
		for id, n := range raw {
			p[id] = comfyuitest.Node{ClassType: n.ClassType, Inputs: n.Inputs}
		}
		return p
	}
	tests := []struct {
		prompt   string
		min, max time.Duration
	}{
		{ddcolorPrompt("512", `"x"`), 3 * time.Second, 3 * time.Second},
		{ddcolorPrompt("1280", `"x"`), 5 * time.Second, 6 * time.Second},
		{zimagePrompt("1024", "1024", "8", "euler"), 800 * time.Millisecond, 800 * time.Millisecond},
		{zimagePrompt("512", "512", "8", "euler"), 100 * time.Millisecond, 300 * time.Millisecond},
	}
	for _, tt := range tests {
		if d := comfyuitest.FieldJobTime(parse(tt.prompt)); d < tt.min || d > tt.max {
			t.Errorf("FieldJobTime = %v, want %v..%v", d, tt.min, tt.max)
		}
	}
}

func FuzzPostPrompt(f *testing.F) {
	f.Add(`{"prompt": ` + ddcolorPrompt("512", `"ddcolor_paper.pth"`) + `}`)
	f.Add(`{"prompt": ` + zimagePrompt("64", `"x"`, "-1", "euler") + `}`)
	f.Add(`{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}`)
	f.Add(`{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", "x"]}}, "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 9]}}}}`)
	f.Add(`{"prompt": {"1": 5}}`)
	s := comfyuitest.NewHandler(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return 0 }})
	defer s.Close()
	f.Fuzz(func(t *testing.T, body string) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/prompt", strings.NewReader(body)))
		switch rec.Code {
		case 200, 400, 500:
		default:
			t.Fatalf("status %d", rec.Code)
		}
		if rec.Code != 500 && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %s", rec.Body)
		}
	})
}

// As in ComfyUI 0.3.64: a prompt deleted from the queue gets no event and
// never a history entry; a restart drops the queue, the running prompt and
// the history without an event, closes the WebSockets and keeps the files.
func TestDeleteAndRestartLoseWithoutEvent(t *testing.T) {
	s := start(t, comfyuitest.Options{JobTime: func(p comfyuitest.Prompt) time.Duration {
		if text, _ := p.String("CLIPTextEncode", "text"); text == "c" {
			return time.Hour // ended by the restart
		}
		return time.Millisecond
	}})
	s.Pause()
	c := wsConn(t, s.URL, "w")
	ids := map[string]string{}
	for _, text := range []string{"a", "b"} {
		p := strings.Replace(zimagePrompt("32", "32", "1", "euler"), "PROMPT", text, 1)
		ids[text] = uuid.NewString()
		postJSON(t, s.URL+"/prompt", `{"prompt": `+p+`, "client_id": "w", "prompt_id": "`+ids[text]+`"}`)
	}
	postJSON(t, s.URL+"/queue", `{"delete": ["`+ids["a"]+`"]}`)
	_, q := call(t, "GET", s.URL+"/queue", "", nil)
	var queue struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if err := json.Unmarshal(q, &queue); err != nil || len(queue.Running) != 0 || len(queue.Pending) != 1 ||
		len(queue.Pending[0]) != 5 || string(queue.Pending[0][1]) != `"`+ids["b"]+`"` {
		t.Fatalf("queue after the delete %s", q)
	}
	s.Resume()
	follow(t, c, ids["b"], func() {}) // fails on any event of a
	_, h := call(t, "GET", s.URL+"/history/"+ids["a"], "", nil)
	sameJSON(t, h, `{}`)

	p := strings.Replace(zimagePrompt("32", "32", "1", "euler"), "PROMPT", "c", 1)
	ids["c"] = uuid.NewString()
	postJSON(t, s.URL+"/prompt", `{"prompt": `+p+`, "client_id": "w", "prompt_id": "`+ids["c"]+`"}`)
	for {
		typ, data := readEvent(t, c)
		if typ == "execution_start" && strings.Contains(string(data), ids["c"]) {
			break
		}
	}
	outputs := s.Files("output")
	s.Restart()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		// Frames sent before the restart may still arrive; none after.
		typ, data, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal("the WebSocket stayed open across the restart")
			}
			break
		}
		if typ == websocket.MessageText && (strings.Contains(string(data), "execution_interrupted") || strings.Contains(string(data), "execution_error")) {
			t.Fatalf("the restart sent %s", data)
		}
	}
	_, q = call(t, "GET", s.URL+"/queue", "", nil)
	sameJSON(t, q, `{"queue_running": [], "queue_pending": []}`)
	for _, id := range []string{ids["b"], ids["c"]} {
		_, h := call(t, "GET", s.URL+"/history/"+id, "", nil)
		sameJSON(t, h, `{}`)
	}
	select {
	case <-s.Done(ids["c"]):
		t.Error("the prompt lost in the restart got a history entry")
	default:
	}
	if got := s.Files("output"); !slices.Equal(got, outputs) || len(got) != 1 {
		t.Errorf("output files %v after the restart, want %v", got, outputs)
	}
	// The server takes new connections and prompts at once.
	c2 := wsConn(t, s.URL, "w")
	p = strings.Replace(zimagePrompt("32", "32", "1", "euler"), "PROMPT", "d", 1)
	ids["d"] = uuid.NewString()
	postJSON(t, s.URL+"/prompt", `{"prompt": `+p+`, "client_id": "w", "prompt_id": "`+ids["d"]+`"}`)
	follow(t, c2, ids["d"], func() {})
}
