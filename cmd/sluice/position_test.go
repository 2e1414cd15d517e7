package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

func TestAsyncJobShowsItsQueuePosition(t *testing.T) {
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return 700 * time.Millisecond }})
	defer comfy.Close()
	g := startServe(t, append(anonymousInFlight(t, 4), "--comfyui", comfy.URL)...)
	first := submitAsync(t, g.base)
	eventually(t, func() bool { // the first holds the one slot
		var j struct{ State string }
		getJSON(t, g.base+"/api/jobs/"+first, &j)
		return j.State == "running" || len(comfy.Prompts()) == 1
	})
	second := submitAsync(t, g.base)
	var j struct {
		State         string `json:"state"`
		QueuePosition int    `json:"queue_position"`
	}
	eventually(t, func() bool {
		getJSON(t, g.base+"/api/jobs/"+second, &j)
		return j.QueuePosition == 1
	})
	if j.State != "queued" {
		t.Fatalf("second job %+v", j)
	}
	eventually(t, func() bool {
		j.State, j.QueuePosition = "", 0 // queue_position is left out when 0
		getJSON(t, g.base+"/api/jobs/"+second, &j)
		return j.State == "succeeded"
	})
	if j.QueuePosition != 0 {
		t.Fatalf("a finished job keeps a queue position: %+v", j)
	}
}

// TestAsyncJobStatesThroughComfyUI: on one backend given two slots (so
// that ComfyUI's own queue holds the second prompt), a job goes queued,
// submitted with its place in ComfyUI's queue (the prompt running there
// ahead of it), running, succeeded, and its
// event stream shows each change in that order.
func TestAsyncJobStatesThroughComfyUI(t *testing.T) {
	running, release := make(chan struct{}), make(chan struct{})
	var n atomic.Int64
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration {
		if n.Add(1) == 1 {
			close(running)
			<-release
		}
		return 20 * time.Millisecond
	}})
	defer comfy.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	g := startServe(t, append(anonymousInFlight(t, 2), "--comfyui", comfy.URL, "--slots", "2", "--gpu-interval", "1m")...)
	submitAsync(t, g.base)
	<-running
	second := submitAsync(t, g.base)
	resp, err := http.Get(g.base + "/api/jobs/" + second + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var j struct {
		State         string `json:"state"`
		QueuePosition int    `json:"queue_position"`
	}
	eventually(t, func() bool {
		getJSON(t, g.base+"/api/jobs/"+second, &j)
		// 2: the first job, running there, is ahead of it.
		return j.State == "submitted" && j.QueuePosition == 2
	})
	close(release)
	var states []string
	sc := bufio.NewScanner(resp.Body)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if e, ok := strings.CutPrefix(line, "event: "); ok {
			event = e
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok && event == "state" {
			var s struct{ State string }
			if err := json.Unmarshal([]byte(d), &s); err != nil {
				t.Fatal(err)
			}
			states = append(states, s.State)
		}
	}
	got := strings.Join(states, " ")
	if got != "queued submitted running succeeded" && got != "submitted running succeeded" {
		t.Fatalf("states %q; want queued (or the replay at submitted), submitted, running, succeeded", got)
	}
}
