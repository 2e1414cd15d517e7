package main

import (
	"image"
	"io"
	"net"
	"net/http"
	"path/filepath"
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

	g1 := startServe(t, "--comfyui", comfy.URL, "--data-dir", dir, "--shutdown-grace", "100ms")
	id := submitAsync(t, g1.base)
	<-running
	// The grace is too short for the job: the stop leaves it running on
	// ComfyUI, and is a clean stop all the same.
	if err := g1.stop(); err != nil {
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
		getJSON(t, g2.base+"/api/jobs/"+id, &job)
		return job.State == "succeeded" || job.State == "failed"
	})
	if job.State != "succeeded" {
		t.Fatalf("after the restart the job %s: %s", job.State, job.Error)
	}
	resp, err := http.Get(g2.base + "/api/jobs/" + id + "/result")
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
	if size, err := comfy.CheckOutput(got, resp.Header.Get("X-Sluice-Prompt-Id")); err != nil || size != image.Rect(0, 0, 256, 256) {
		t.Fatalf("the result (256x256 expected, got %v): %v", size, err)
	}
	if n := len(comfy.Prompts()); n != 1 {
		t.Fatalf("ComfyUI ran the job %d times", n)
	}
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
	dir := t.TempDir()

	// GPU sampling is slowed so that a loaded machine cannot take the
	// backend out (and re-run a job) in the middle of the test.
	tiers := anonymousInFlight(t, 2) // the recovered job and the new one
	g1 := startServe(t, append(tiers, "--comfyui", comfy.URL, "--data-dir", dir, "--shutdown-grace", "100ms", "--slots", "1", "--gpu-interval", "1m")...)
	old := submitAsync(t, g1.base)
	<-running
	if err := g1.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	g2 := startServe(t, append(tiers, "--comfyui", comfy.URL, "--data-dir", dir, "--slots", "1", "--gpu-interval", "1m")...)
	fresh := submitAsync(t, g2.base)
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

// TestQueuedAsyncJobResumesAfterRestart stops a gateway while one async
// job runs on its one-slot backend and another waits for that slot: after
// the restart the first is followed on ComfyUI and the second, which never
// reached ComfyUI, is queued again from its journaled input and runs (it
// used to end "lost at restart before it started").
func TestQueuedAsyncJobResumesAfterRestart(t *testing.T) {
	running, release := make(chan struct{}), make(chan struct{})
	var n atomic.Int64
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration {
		if n.Add(1) == 1 {
			close(running)
			<-release
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
	dir := t.TempDir()
	flags := append(anonymousInFlight(t, 2), "--comfyui", comfy.URL, "--data-dir", dir, "--shutdown-grace", "100ms", "--slots", "1", "--gpu-interval", "1m")
	g1 := startServe(t, flags...)
	first := submitAsync(t, g1.base)
	<-running
	queued := submitAsync(t, g1.base)
	var job struct {
		State         string `json:"state"`
		Error         string `json:"error"`
		QueuePosition int    `json:"queue_position"`
	}
	eventually(t, func() bool {
		getJSON(t, g1.base+"/api/jobs/"+queued, &job)
		return job.QueuePosition == 1
	})
	if err := g1.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	g2 := startServe(t, flags...)
	getJSON(t, g2.base+"/api/jobs/"+queued, &job)
	if job.State != "queued" {
		t.Fatalf("the job waiting for a slot at the stop is %s after the restart: %s", job.State, job.Error)
	}
	close(release)
	for _, id := range []string{first, queued} {
		eventually(t, func() bool {
			getJSON(t, g2.base+"/api/jobs/"+id, &job)
			return job.State == "succeeded" || job.State == "failed"
		})
		if job.State != "succeeded" {
			t.Fatalf("job %s %s: %s", id, job.State, job.Error)
		}
	}
	if n := len(comfy.Prompts()); n != 2 {
		t.Fatalf("ComfyUI got %d prompts, want 2 (each job once)", n)
	}
	// The journal entries go once the end of each job is in etcd.
	eventually(t, func() bool {
		left, _ := filepath.Glob(filepath.Join(dir, "results", "*.input"))
		return len(left) == 0
	})
}

// TestSimulatorJobsSurviveRestart: with --sim-listen the built-in
// simulator keeps its URL across a restart; a job that was on it when the
// gateway stopped is found gone from the new simulator's queue and is run
// again from its kept input, instead of failing.
func TestSimulatorJobsSurviveRestart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	flags := []string{"--sim-listen", addr, "--sim-job-time", "1500ms", "--data-dir", dir, "--shutdown-grace", "100ms", "--gpu-interval", "1m"}
	g1 := startServe(t, flags...)
	id := submitAsync(t, g1.base)
	var job struct{ State, Error string }
	eventually(t, func() bool {
		getJSON(t, g1.base+"/api/jobs/"+id, &job)
		return job.State == "submitted" || job.State == "running"
	})
	if err := g1.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	g2 := startServe(t, flags...)
	eventually(t, func() bool {
		getJSON(t, g2.base+"/api/jobs/"+id, &job)
		return job.State == "succeeded" || job.State == "failed"
	})
	if job.State != "succeeded" {
		t.Fatalf("the simulator's job after the restart: %s: %s", job.State, job.Error)
	}
}
