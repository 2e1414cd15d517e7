package main

import (
	"encoding/json"
	"net/http"
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

	g1 := startServe(t, "--comfyui", comfy.URL, "--data-dir", dir, "--shutdown-grace", "100ms")
	resp, err := http.Post(g1.base+"/v1/generate?mode=async", "application/json", strings.NewReader(`{"prompt": "a lighthouse", "width": 256, "height": 256}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d", resp.StatusCode)
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
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("result after the restart: %d", resp.StatusCode)
	}
	if n := len(comfy.Prompts()); n != 1 {
		t.Fatalf("ComfyUI ran the job %d times", n)
	}
}
