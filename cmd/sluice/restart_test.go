package main

import (
	"bytes"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

// TestAsyncJobSurvivesRestart stops a gateway while an async job runs on
// ComfyUI and starts another on the same data: the job is taken up again
// from its record and ComfyUI's /history, and completes.
func TestAsyncJobSurvivesRestart(t *testing.T) {
	running := make(chan struct{})
	var once sync.Once
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration {
		once.Do(func() { close(running) })
		return 1500 * time.Millisecond
	}})
	defer comfy.Close()
	dir := t.TempDir()

	g1 := startServe(t, "--comfyui", comfy.URL, "--data-dir", dir, "--shutdown-grace", "100ms", "--rules", rulesWithoutCPU(t))
	resp, err := http.Post(g1.base+"/v1/generate?mode=async", "application/json", strings.NewReader(`{"prompt": "a lighthouse", "width": 256, "height": 256}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %+v", resp.StatusCode, sub)
	}
	<-running
	// The grace is too short for the job: the stop says so and leaves it
	// running on ComfyUI.
	if err := g1.stop(); err == nil || !strings.Contains(err.Error(), "async jobs still running") {
		t.Fatalf("stop: %v", err)
	}
	if n := len(comfy.Interrupts()) + len(comfy.Deletes()); n != 0 {
		t.Fatalf("the stopping gateway removed the job from ComfyUI (%d calls)", n)
	}

	g2 := startServe(t, "--comfyui", comfy.URL, "--data-dir", dir)
	var job struct {
		State string `json:"state"`
		Error string `json:"error"`
	}
	eventually(t, func() bool {
		getJSON(t, g2.base+"/api/jobs/"+sub.ID, &job)
		return job.State == "succeeded" || job.State == "failed"
	})
	if job.State != "succeeded" {
		t.Fatalf("after the restart the job %s: %s", job.State, job.Error)
	}
	resp, err = http.Get(g2.base + "/api/jobs/" + sub.ID + "/result")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("result after the restart: %d %v", resp.StatusCode, err)
	}
	// The payload is the image ComfyUI produced, read from the results
	// folder: not an empty body.
	samePNG(t, got, comfyOutput(t, comfy.URL, resp.Header.Get("X-Sluice-Prompt-Id")), 256, 256)
	if n := len(comfy.Prompts()); n != 1 {
		t.Fatalf("ComfyUI ran the job %d times", n)
	}
}

// comfyOutput fetches what the fake ComfyUI produced for a prompt: the
// first image of its history, through /view.
func comfyOutput(t *testing.T, comfyURL, promptID string) []byte {
	t.Helper()
	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct{ Filename, Subfolder, Type string }
		}
	}
	getJSON(t, comfyURL+"/history/"+url.PathEscape(promptID), &hist)
	for _, out := range hist[promptID].Outputs {
		for _, img := range out.Images {
			q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}
			resp, err := http.Get(comfyURL + "/view?" + q.Encode())
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("/view: %d %v", resp.StatusCode, err)
			}
			return b
		}
	}
	t.Fatalf("ComfyUI has no output for prompt %q", promptID)
	return nil
}

// samePNG decodes got and want and compares their sizes and pixels.
func samePNG(t *testing.T, got, want []byte, w, h int) {
	t.Helper()
	gi, err := png.Decode(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("the result (%d bytes) is not a PNG: %v", len(got), err)
	}
	wi, err := png.Decode(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	if gi.Bounds() != image.Rect(0, 0, w, h) || gi.Bounds() != wi.Bounds() {
		t.Fatalf("result %v, ComfyUI produced %v, want %dx%d", gi.Bounds(), wi.Bounds(), w, h)
	}
	for y := range h {
		for x := range w {
			if gi.At(x, y) != wi.At(x, y) {
				t.Fatalf("pixel (%d,%d): result %v, ComfyUI produced %v", x, y, gi.At(x, y), wi.At(x, y))
			}
		}
	}
}

// rulesWithoutCPU writes the default rules less the system CPU rule, which
// reads the host's load: the test must not depend on what else runs.
func rulesWithoutCPU(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../testdata/rules/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for line := range strings.Lines(string(b)) {
		if !strings.HasPrefix(strings.TrimSpace(line), "cpu_usage:") {
			kept = append(kept, line)
		}
	}
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(kept, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
