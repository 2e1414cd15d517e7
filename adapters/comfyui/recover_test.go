package comfyui_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

// dying is a transport that fails every request once the process it
// stands for has died: nothing more reaches ComfyUI from it, not even the
// clean-up of an abandoned prompt.
type dying struct{ dead atomic.Bool }

func (d *dying) RoundTrip(r *http.Request) (*http.Response, error) {
	if d.dead.Load() {
		return nil, errors.New("process gone")
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestRecoverAfterRestart(t *testing.T) {
	s := newFake(t, comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return 300 * time.Millisecond }})
	tr := &dying{}
	first, err := comfyui.NewClient(comfyui.Config{BaseURL: s.URL, HTTPClient: &http.Client{Transport: tr}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	queued := make(chan string, 1)
	ctx, cancel := context.WithCancel(t.Context())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := first.Run(ctx, comfyui.Job{Resource: "zimage_generate", Prompt: "a lighthouse", Width: 64, Height: 64, Steps: 2,
			OnQueued: func(id string) { tr.dead.Store(true); queued <- id }})
		gaveUp <- err
	}()
	id := <-queued
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("the first client finished the job; it was meant to die")
	}

	second := newClient(t, s.URL, 10*time.Millisecond)
	res, err := second.Recover(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if res.PromptID != id || len(res.Image) == 0 || res.ContentType != "image/png" {
		t.Errorf("Recover = prompt %s, %d bytes of %s", res.PromptID, len(res.Image), res.ContentType)
	}
	decodePNG(t, res.Image)

	// A prompt ComfyUI does not know (lost in its restart) is lost at once:
	// no wait until ctx ends.
	if _, err := second.Recover(t.Context(), "no-such-prompt"); !errors.Is(err, comfyui.ErrPromptLost) || !strings.Contains(err.Error(), "no-such-prompt") {
		t.Errorf("Recover of an unknown prompt: %v, want ErrPromptLost naming it", err)
	}
}
