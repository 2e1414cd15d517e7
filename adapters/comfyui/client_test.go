package comfyui_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

func testPNG(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			g := uint8((x*7 + y*3) % 256)
			img.Set(x, y, color.NRGBA{g, g, g, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newFake(t *testing.T, opts comfyuitest.Options) *comfyuitest.Server {
	t.Helper()
	s := comfyuitest.NewServer(opts)
	t.Cleanup(s.Close)
	return s
}

func newClient(t *testing.T, baseURL string, poll time.Duration) *comfyui.Client {
	t.Helper()
	c, err := comfyui.NewClient(comfyui.Config{BaseURL: baseURL, PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func decodePNG(t *testing.T, b []byte) image.Image {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("output is not a PNG: %v", err)
	}
	return img
}

func TestRunDDColor(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	// A long poll interval: completion must come from the WebSocket.
	c := newClient(t, s.URL, time.Minute)
	var mu sync.Mutex
	var progress [][2]int
	res, err := c.Run(t.Context(), comfyui.Job{
		Resource: "ddcolor_person", Image: testPNG(t, 96, 64), ImageName: "sluice-test.png", Size: 256,
		OnProgress: func(v, m int) { mu.Lock(); progress = append(progress, [2]int{v, m}); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	img := decodePNG(t, res.Image)
	if b := img.Bounds(); b.Dx() != 96 || b.Dy() != 64 {
		t.Errorf("output is %v, want the input's 96x64", b)
	}
	r, g, bl, _ := img.At(10, 10).RGBA()
	if r == g && g == bl {
		t.Error("output is still grey: not colourised")
	}
	if res.ContentType != "image/png" || res.Filename != "person_00001_.png" || res.Subfolder != "ddcolor" {
		t.Errorf("result %q %q %q", res.ContentType, res.Subfolder, res.Filename)
	}
	if res.Queued.IsZero() || res.Started.Before(res.Queued) || res.Finished.Before(res.Started) {
		t.Errorf("timings queued %v started %v finished %v", res.Queued, res.Started, res.Finished)
	}
	if want := [][2]int{{1, 5}, {2, 5}, {3, 5}, {4, 5}, {5, 5}}; !slices.Equal(progress, want) {
		t.Errorf("progress %v, want %v", progress, want)
	}

	prompts := s.Prompts()
	if len(prompts) != 1 {
		t.Fatalf("%d prompts queued", len(prompts))
	}
	p := prompts[0]
	if p.ID != res.PromptID || p.ClientID == "" {
		t.Errorf("queued %q with client %q, result %q", p.ID, p.ClientID, res.PromptID)
	}
	if got := p.Prompt["1"].Inputs["image"]; got != "sluice-test.png" {
		t.Errorf("LoadImage.image = %v", got)
	}
	if got, _ := p.Prompt.Int("DDColor_Colorize", "model_input_size"); got != 256 {
		t.Errorf("model_input_size = %v", got)
	}
	up := s.Uploads()
	if len(up) != 1 || up[0].Name != "sluice-test.png" || !up[0].Overwrite || up[0].Type != "input" {
		t.Errorf("uploads %+v", up)
	}
}

func TestRunZImage(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	c := newClient(t, s.URL, time.Minute)
	res, err := c.Run(t.Context(), comfyui.Job{
		Resource: "zimage_generate", Prompt: "a lighthouse at dusk", NegativePrompt: "blurry",
		Width: 128, Height: 96, Steps: 4, Seed: 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	if b := decodePNG(t, res.Image).Bounds(); b.Dx() != 128 || b.Dy() != 96 {
		t.Errorf("output is %v, want 128x96", b)
	}
	p := s.Prompts()[0]
	if got, _ := p.Prompt.String("CLIPTextEncode", "text"); got != "a lighthouse at dusk" {
		t.Errorf("prompt text %q", got)
	}
	sl, _ := p.ExtraData["sluice"].(map[string]any)
	if sl["negative_prompt"] != "blurry" || sl["resource"] != "zimage_generate" {
		t.Errorf("extra_data %v", p.ExtraData)
	}
	if len(s.Uploads()) != 0 {
		t.Error("a text-to-image job uploaded something")
	}
}

// An identical prompt is served from ComfyUI's cache with the old file.
func TestRunCached(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	c := newClient(t, s.URL, time.Minute)
	job := comfyui.Job{Resource: "zimage_generate", Prompt: "same", Width: 64, Height: 64, Seed: 3}
	first, err := c.Run(t.Context(), job)
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Run(t.Context(), job)
	if err != nil {
		t.Fatal(err)
	}
	if first.Filename != second.Filename || !bytes.Equal(first.Image, second.Image) {
		t.Errorf("second run gave %s, first %s", second.Filename, first.Filename)
	}
}

func TestRunPromptError(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	c := newClient(t, s.URL, time.Minute)
	_, err := c.Run(t.Context(), comfyui.Job{Resource: "ddcolor_person", Image: testPNG(t, 8, 8), Size: 5000})
	var pe *comfyui.PromptError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v (%T), want *PromptError", err, err)
	}
	if pe.Type != "prompt_outputs_failed_validation" || pe.StatusCode != 400 {
		t.Errorf("type %q status %d", pe.Type, pe.StatusCode)
	}
	ne, ok := pe.NodeErrors["2"]
	if !ok || ne.ClassType != "DDColor_Colorize" || len(ne.Errors) != 1 || !slices.Equal(ne.DependentOutputs, []string{"3"}) {
		t.Fatalf("node errors %+v", pe.NodeErrors)
	}
	ie := ne.Errors[0]
	if ie.Type != "value_bigger_than_max" || ie.InputName != "model_input_size" || ie.ReceivedValue != float64(5000) ||
		ie.Message != "Value 5000 bigger than max of 4096" {
		t.Errorf("input error %+v", ie)
	}
	if !strings.Contains(err.Error(), "node 2 (DDColor_Colorize) model_input_size: Value 5000 bigger than max of 4096") {
		t.Errorf("Error() = %q", err)
	}
	if len(s.Prompts()) != 0 {
		t.Error("a refused prompt was queued")
	}
}

func TestRunExecutionError(t *testing.T) {
	for _, silent := range []bool{false, true} {
		name := "websocket"
		if silent {
			name = "history"
		}
		t.Run(name, func(t *testing.T) {
			s := newFake(t, comfyuitest.Options{
				SilentWS: silent,
				Fail: func(comfyuitest.Prompt) *comfyuitest.ExecutionFailure {
					return &comfyuitest.ExecutionFailure{ExceptionType: "torch.OutOfMemoryError", ExceptionMessage: "CUDA out of memory. Tried to allocate 2.00 GiB"}
				},
			})
			c := newClient(t, s.URL, 10*time.Millisecond)
			_, err := c.Run(t.Context(), comfyui.Job{Resource: "ddcolor_building", Image: testPNG(t, 16, 16)})
			var ee *comfyui.ExecutionError
			if !errors.As(err, &ee) {
				t.Fatalf("err = %v (%T), want *ExecutionError", err, err)
			}
			if ee.NodeID != "2" || ee.NodeType != "DDColor_Colorize" || ee.ExceptionType != "torch.OutOfMemoryError" ||
				!strings.HasPrefix(ee.ExceptionMessage, "CUDA out of memory") || ee.PromptID != s.Prompts()[0].ID {
				t.Errorf("execution error %+v", ee)
			}
		})
	}
}

// A WebSocket that greets and then says nothing more: the job must finish
// through /history polling alone.
func TestRunSilentWebSocket(t *testing.T) {
	s := newFake(t, comfyuitest.Options{SilentWS: true})
	c := newClient(t, s.URL, 10*time.Millisecond)
	res, err := c.Run(t.Context(), comfyui.Job{Resource: "ddcolor_person", Image: testPNG(t, 40, 30), Size: 512})
	if err != nil {
		t.Fatal(err)
	}
	if b := decodePNG(t, res.Image).Bounds(); b.Dx() != 40 || b.Dy() != 30 {
		t.Errorf("output is %v", b)
	}
	// Timings come from the history's status messages.
	if res.Started.IsZero() || res.Finished.Before(res.Started) {
		t.Errorf("started %v finished %v", res.Started, res.Finished)
	}
}

// No WebSocket at all (a proxy that does not pass upgrades): polling alone.
func TestRunWithoutWebSocket(t *testing.T) {
	sim := comfyuitest.NewHandler(comfyuitest.Options{})
	t.Cleanup(sim.Close)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			http.NotFound(w, r)
			return
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	c := newClient(t, hs.URL, 10*time.Millisecond)
	res, err := c.Run(t.Context(), comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32})
	if err != nil {
		t.Fatal(err)
	}
	decodePNG(t, res.Image)
}

// The caller gives up while the prompt runs: the client deletes it from the
// queue, interrupts it and returns the context's error.
func TestRunCancelWhileRunning(t *testing.T) {
	// JobTime is asked when the prompt starts running: that is the signal
	// to give up.
	running := make(chan struct{})
	var once sync.Once
	s := newFake(t, comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration {
		once.Do(func() { close(running) })
		return time.Minute
	}})
	c := newClient(t, s.URL, time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		select {
		case <-running:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := c.Run(ctx, comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	id := s.Prompts()[0].ID
	if !strings.Contains(err.Error(), id) {
		t.Errorf("error %q does not name the prompt", err)
	}
	if got := s.Interrupts(); len(got) != 1 || got[0].PromptID != id || got[0].Running != id {
		t.Errorf("interrupts %+v, want one for running %s", got, id)
	}
	if got := s.Deletes(); !slices.Equal(got, []string{id}) {
		t.Errorf("deletes %v", got)
	}
	<-s.Done(id) // the interrupt ends the minute-long job at once
	if n := s.QueueRemaining(); n != 0 {
		t.Errorf("queue remaining %d", n)
	}
}

// The caller gives up while its prompt waits behind another: it is deleted
// from the queue and never runs.
func TestRunCancelWhilePending(t *testing.T) {
	firstRunning, release := make(chan struct{}), make(chan struct{})
	sim := comfyuitest.NewHandler(comfyuitest.Options{JobTime: func(p comfyuitest.Prompt) time.Duration {
		if text, _ := p.String("CLIPTextEncode", "text"); text == "first" {
			close(firstRunning)
			<-release // hold the GPU until the second prompt is dealt with
		}
		return time.Millisecond
	}})
	t.Cleanup(sim.Close)
	var releaseOnce sync.Once
	releaseFirst := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseFirst) // runs before sim.Close, even when the test fails early
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sim.ServeHTTP(w, r)
		if r.Method == http.MethodPost && r.URL.Path == "/prompt" && len(sim.Prompts()) == 2 {
			cancel() // the second prompt is queued: its caller gives up
		}
	}))
	t.Cleanup(hs.Close)
	c := newClient(t, hs.URL, time.Minute)

	firstDone := make(chan error, 1)
	go func() {
		_, err := c.Run(t.Context(), comfyui.Job{Resource: "zimage_generate", Prompt: "first", Width: 32, Height: 32})
		firstDone <- err
	}()
	<-firstRunning
	_, err := c.Run(ctx, comfyui.Job{Resource: "zimage_generate", Prompt: "second", Width: 32, Height: 32})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	second := sim.Prompts()[1].ID
	if got := sim.Deletes(); !slices.Equal(got, []string{second}) {
		t.Errorf("deletes %v, want [%s]", got, second)
	}
	if n := sim.QueueRemaining(); n != 1 {
		t.Errorf("queue remaining %d, want only the running first prompt", n)
	}
	if got := sim.Interrupts(); len(got) != 1 || got[0].PromptID != second || got[0].Running == second {
		t.Errorf("interrupts %+v: the running first prompt must not be interrupted", got)
	}
	releaseFirst()
	if err := <-firstDone; err != nil {
		t.Fatalf("first job: %v", err)
	}
}

func TestSystemStatsAndQueue(t *testing.T) {
	s := newFake(t, comfyuitest.Options{Devices: []comfyuitest.Device{
		{Name: "cuda:0 NVIDIA GeForce RTX 4070 : cudaMallocAsync", VRAMTotal: 12 << 30, VRAMFree: 11 << 30},
		{Name: "cuda:1 NVIDIA GeForce RTX 4070 : cudaMallocAsync", Index: 1, VRAMTotal: 12 << 30, VRAMFree: 12 << 30},
	}})
	s.SetVRAMFree(1, 1<<30)
	c := newClient(t, s.URL, time.Minute)
	st, err := c.SystemStats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Devices) != 2 || st.Devices[0].VRAMTotal != 12<<30 || st.Devices[0].VRAMFree != 11<<30 ||
		st.Devices[1].VRAMFree != 1<<30 || st.Devices[1].Index == nil || *st.Devices[1].Index != 1 || st.Devices[1].Type != "cuda" {
		t.Errorf("devices %+v", st.Devices)
	}
	if st.System.ComfyUIVersion == "" || st.System.RAMTotal == 0 {
		t.Errorf("system %+v", st.System)
	}
	n, err := c.QueueRemaining(t.Context())
	if err != nil || n != 0 {
		t.Errorf("QueueRemaining = %d, %v", n, err)
	}
}

func TestHTTPErrors(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream exploded", http.StatusBadGateway)
	}))
	t.Cleanup(hs.Close)
	c := newClient(t, hs.URL, time.Minute)

	_, err := c.Run(t.Context(), comfyui.Job{Resource: "ddcolor_person", Image: testPNG(t, 4, 4)})
	var he *comfyui.HTTPError
	if !errors.As(err, &he) || he.Endpoint != "/upload/image" || he.StatusCode != 502 || he.Body != "upstream exploded" {
		t.Errorf("upload: err = %v", err)
	}
	_, err = c.Run(t.Context(), comfyui.Job{Resource: "zimage_generate", Prompt: "x"})
	if !errors.As(err, &he) || he.Endpoint != "/prompt" || he.StatusCode != 502 {
		t.Errorf("prompt: err = %v", err)
	}
	if _, err := c.SystemStats(t.Context()); !errors.As(err, &he) || he.Endpoint != "/system_stats" {
		t.Errorf("system_stats: err = %v", err)
	}

	hs.Close()
	_, err = c.SystemStats(t.Context())
	if err == nil || !strings.HasPrefix(err.Error(), "comfyui: GET /system_stats: ") {
		t.Errorf("transport error %v", err)
	}
}

func TestNewClientChecksConfig(t *testing.T) {
	for _, cfg := range []comfyui.Config{
		{BaseURL: ""},
		{BaseURL: "127.0.0.1:8188"},
		{BaseURL: "ftp://host"},
		{BaseURL: "http://host", PollInterval: -time.Second},
		{BaseURL: "http://host", QueueCheckInterval: -time.Second},
	} {
		if _, err := comfyui.NewClient(cfg); err == nil {
			t.Errorf("NewClient(%+v) accepted", cfg)
		}
	}
}
