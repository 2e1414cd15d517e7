package comfyui_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/engine/clock"
)

// TestAbandonedPromptRemovedWhenReachable: a prompt abandoned while its
// server cannot be reached (a farm moving the job off a backend cut off) is
// removed there at the WebSocket's next greeting, so that the server does
// not run it once it is reachable again while the job runs elsewhere.
func TestAbandonedPromptRemovedWhenReachable(t *testing.T) {
	s := newFake(t, comfyuitest.Options{})
	s.Pause()
	tr := &dying{}
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	c, err := comfyui.NewClient(comfyui.Config{BaseURL: s.URL, HTTPClient: &http.Client{Transport: tr}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(ctx, comfyui.Job{Resource: "zimage_generate", Prompt: "x", Width: 32, Height: 32,
			OnQueued: func(id string) { queued <- id }})
		done <- err
	}()
	id := <-queued
	tr.dead.Store(true) // cut off
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want cancelled", err)
	}
	if slices.Contains(s.Deletes(), id) || s.QueueRemaining() != 1 {
		t.Fatalf("the prompt was removed from a server cut off: deletes %v", s.Deletes())
	}
	// Reachable again; its WebSocket reconnects (here: ComfyUI restarted,
	// which breaks it) and greets: the prompt is removed and interrupted.
	tr.dead.Store(false)
	s.Restart()
	eventually(t, "the abandoned prompt removed", func() bool {
		return slices.Contains(s.Deletes(), id) &&
			slices.ContainsFunc(s.Interrupts(), func(i comfyuitest.Interrupt) bool { return i.PromptID == id })
	})
}
