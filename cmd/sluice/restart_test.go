package main

import (
	"bytes"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
	samePNG(t, got, comfyOutput(t, comfy, resp.Header.Get("X-Sluice-Prompt-Id")), 256, 256)
	if n := len(comfy.Prompts()); n != 1 {
		t.Fatalf("ComfyUI ran the job %d times", n)
	}
}

// comfyOutput is what the fake ComfyUI produced for a prompt: the first
// image of its history, through /view.
func comfyOutput(t *testing.T, comfy *comfyuitest.Server, promptID string) []byte {
	t.Helper()
	b, err := comfy.OutputImage(promptID)
	if err != nil {
		t.Fatal(err)
	}
	return b
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

// TestRecoveredJobHoldsItsSlot restarts the gateway while an async job runs
// on a one-slot backend: the recovered job holds that slot, so a new job
// waits in the gateway's queue (place 1) instead of being sent to a backend
// still busy, and runs once the recovered one has ended.
func TestRecoveredJobHoldsItsSlot(t *testing.T) {
	running, release := make(chan struct{}), make(chan struct{})
	var n atomic.Int64
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration {
		if n.Add(1) == 1 {
			close(running)
			<-release // the first job runs until the test lets it end
		}
		return 10 * time.Millisecond
	}})
	defer comfy.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	dir, rules := t.TempDir(), rulesWithoutCPU(t)
	submit := func(base string) string {
		t.Helper()
		resp, err := http.Post(base+"/v1/generate?mode=async", "application/json", strings.NewReader(`{"prompt": "a lighthouse", "width": 256, "height": 256}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sub struct{ ID string }
		json.NewDecoder(resp.Body).Decode(&sub)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("submit: %d", resp.StatusCode)
		}
		return sub.ID
	}

	// GPU sampling is slowed so that a loaded machine cannot take the
	// backend out (and re-run a job) in the middle of the test.
	g1 := startServe(t, "--comfyui", comfy.URL, "--data-dir", dir, "--shutdown-grace", "100ms", "--rules", rules, "--slots", "1", "--gpu-interval", "1m")
	old := submit(g1.base)
	<-running
	if err := g1.stop(); err == nil || !strings.Contains(err.Error(), "async jobs still running") {
		t.Fatalf("stop: %v", err)
	}

	g2 := startServe(t, "--comfyui", comfy.URL, "--data-dir", dir, "--rules", rules, "--slots", "1", "--gpu-interval", "1m")
	fresh := submit(g2.base)
	type jobView struct {
		State         string `json:"state"`
		Error         string `json:"error"`
		QueuePosition int    `json:"queue_position"`
	}
	var job jobView
	// Either the new job waits for the slot, or (the bug) it is sent to
	// the backend at once.
	eventually(t, func() bool {
		getJSON(t, g2.base+"/api/jobs/"+fresh, &job)
		return job.QueuePosition > 0 || len(comfy.Prompts()) > 1
	})
	if job.QueuePosition != 1 || len(comfy.Prompts()) != 1 {
		t.Fatalf("the new job is at place %d, with %d prompts sent to the one-slot backend; want place 1 and 1 prompt",
			job.QueuePosition, len(comfy.Prompts()))
	}
	if in := farmInUse(t, g2.base); in != 1 {
		t.Fatalf("%d slots in use while the recovered job runs, want 1", in)
	}
	close(release) // the recovered job ends ...
	for _, id := range []string{old, fresh} {
		eventually(t, func() bool {
			getJSON(t, g2.base+"/api/jobs/"+id, &job)
			return job.State == "succeeded" || job.State == "failed"
		})
		if job.State != "succeeded" {
			t.Fatalf("job %s %s: %s", id, job.State, job.Error)
		}
	}
	if n := len(comfy.Prompts()); n != 2 { // ... and the new one ran after it
		t.Fatalf("ComfyUI got %d prompts, want 2", n)
	}
	if in := farmInUse(t, g2.base); in != 0 {
		t.Fatalf("%d slots still in use after both jobs ended", in)
	}
}

// farmInUse is the number of backend slots in use, from /api/backends.
func farmInUse(t *testing.T, base string) int {
	t.Helper()
	var farm struct {
		Backends []struct {
			InUse int `json:"in_use"`
		} `json:"backends"`
	}
	getJSON(t, base+"/api/backends", &farm)
	n := 0
	for _, b := range farm.Backends {
		n += b.InUse
	}
	return n
}
