// Package comfyui is sluice's client for ComfyUI: it binds a job to a
// workflow template in API format, uploads the input image, queues the
// prompt, follows it to its end and fetches the output image.
//
// Completion is followed on the /ws event stream, opened before the prompt is
// queued, and /history is polled as the fallback, so a WebSocket that cannot
// connect or goes silent without closing does not lose a job. Refusals and
// failures come back as typed errors: *PromptError (a 400 from /prompt with
// its node_errors), *ExecutionError (execution_error), ErrInterrupted and
// *HTTPError. A caller that gives up (its context ends) has its prompt
// removed from the queue and interrupted.
//
// The workflow templates for ddcolor_person, ddcolor_building and
// zimage_generate are embedded (DefaultWorkflows); LoadWorkflows reads a
// replacement set from a folder. Beside each template NAME.json, a sidecar
// NAME.sluice.yaml says which node input takes each job parameter (image,
// size, prompt, negative_prompt, seed, width, height, steps), so a template
// may use any node pack.
//
//	c, err := comfyui.NewClient(comfyui.Config{BaseURL: "http://127.0.0.1:8188", Logger: log})
//	res, err := c.Run(ctx, comfyui.Job{Resource: "ddcolor_person", Image: png, Size: 512})
//
// Package comfyuitest provides a fake ComfyUI server to test against.
package comfyui
