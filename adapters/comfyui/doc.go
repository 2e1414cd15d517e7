// Package comfyui is sluice's client for ComfyUI: it binds a job to a
// workflow template in API format, uploads the input image, queues the
// prompt, follows it to its end and fetches the output image.
//
// Each Client keeps one WebSocket to its server (/ws under one client_id,
// opened by the first Run, reconnected with capped exponential backoff until
// Close; Config.OnConnection reports its state) and hands each event to the
// Run waiting for its prompt. /history is polled as the fallback, so a
// WebSocket that cannot connect or goes silent without closing does not lose
// a job. ComfyUI sends no event for a prompt deleted from its queue or lost
// in a restart: when the WebSocket has said nothing of a prompt for
// Config.QueueCheckInterval, and after each reconnect, GET /queue is asked;
// a prompt in neither the queue nor the history is lost (ErrPromptLost) and,
// if it had not started, queued once more. Job.OnQueuePosition and
// Job.OnRunning tell where a prompt is. Uploads are named by the hash of
// their bytes (UploadName), so a photo is stored once per server.
//
// Refusals and failures come back as typed errors: *PromptError (a 400 from
// /prompt with its node_errors), *ExecutionError (execution_error),
// ErrInterrupted, ErrPromptLost and *HTTPError. A caller that gives up (its
// context ends) has its prompt removed from the queue and interrupted.
//
// The workflow templates for ddcolor_person, ddcolor_building and
// zimage_generate are embedded (DefaultWorkflows); LoadWorkflows reads a
// replacement set from a folder. Beside each template NAME.json, a sidecar
// NAME.sluice.yaml says which node input takes each job parameter (image,
// size, prompt, negative_prompt, seed, width, height, steps), so a template
// may use any node pack.
//
//	c, err := comfyui.NewClient(comfyui.Config{BaseURL: "http://127.0.0.1:8188", Logger: log})
//	defer c.Close()
//	res, err := c.Run(ctx, comfyui.Job{Resource: "ddcolor_person", Image: png, Size: 512})
//
// Package comfyuitest provides a fake ComfyUI server to test against.
package comfyui
