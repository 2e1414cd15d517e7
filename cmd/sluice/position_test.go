package main

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

func TestAsyncJobShowsItsQueuePosition(t *testing.T) {
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return 700 * time.Millisecond }})
	defer comfy.Close()
	g := startServe(t, "--comfyui", comfy.URL, "--tenant-inflight", "4")
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
