// Package comfyuitest provides a fake ComfyUI server, in the manner of
// net/http/httptest, for tests and demos: no GPU, no Python.
//
// It speaks the API described in comfyui-protocol.md, errors included:
// POST /prompt validates a workflow the way ComfyUI's validate_prompt does
// (invalid_prompt for an unknown node class, as ComfyUI 0.3.64 answers, prompt_no_outputs, prompt_outputs_failed_validation
// with per-node value_bigger_than_max, value_not_in_list,
// custom_validation_failed, ...); prompts run one at a time from a FIFO
// queue with execution_start, execution_cached, executing, progress,
// executed and execution_success or execution_error on /ws, the history
// written before the final executing {node: null}; /view, /upload/image,
// /queue, /interrupt, /history, /system_stats and their /api aliases behave
// as on a real server. It knows the nodes of sluice's templates: LoadImage,
// DDColor_Colorize (a sepia tint at the input's size), SaveImage,
// PreviewImage and the Z-Image-Turbo chain (a gradient of width×height).
// Files live in memory.
//
// As on ComfyUI 0.3.64, a prompt deleted from the queue (POST /queue
// {"delete": [...]}) gets no event and its /history stays {} for ever;
// Restart simulates ComfyUI restarting (queue, running prompt and history
// dropped without an event, WebSockets closed, files kept); Pause and Resume
// hold the queue so that a test sees each prompt's place in GET /queue
// (queue_running, queue_pending: [number, prompt_id, prompt, extra_data,
// outputs]); Files lists a folder.
//
// In a test:
//
//	s := comfyuitest.NewServer(comfyuitest.Options{})
//	defer s.Close()
//	c, _ := comfyui.NewClient(comfyui.Config{BaseURL: s.URL})
//
// As a built-in simulator on a listener of one's own, with field timings:
//
//	sim := comfyuitest.NewHandler(comfyuitest.Options{JobTime: comfyuitest.FieldJobTime, Logger: log})
//	sim.Serve(listener) // or mount sim, an http.Handler, on an http.Server
//	defer sim.Close()
package comfyuitest
