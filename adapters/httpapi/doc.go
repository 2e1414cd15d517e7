// Package httpapi is sluice's public HTTP API on Gin: the guarded image
// endpoints.
//
//	POST /api/ddcolorize/person    multipart: image (PNG, JPEG, WebP), size (optional)
//	POST /api/ddcolorize/building  multipart: image, size
//	POST /v1/generate              JSON: prompt, negative_prompt, width, height, steps, seed
//
// Each request is checked before anything is spent (body cap, image format
// sniffed from the bytes, dimensions from the header, parameter bounds),
// then guarded by the engine with the client's IP, then run on ComfyUI. An
// admitted request answers with the result image and the job's timings in
// Server-Timing; a refused one with 429 or 503, a JSON problem body,
// Retry-After and the IETF RateLimit-Policy / RateLimit fields.
//
// The client IP is Gin's ClientIP over an explicit trusted-proxy list, empty
// by default: an X-Forwarded-For from any other peer changes nothing. The
// client's identity (its origin, for per-origin rules, bans and the fair
// queue) is its IPv4 address, or for IPv6 the prefix that holds its address
// (Config.IPv6Prefix, /64 by default) in CIDR form, so that one host cannot
// rotate addresses past its limits.
//
// Uploads take one of Config.MaxUploads slots while they are read, checked
// and prepared (not while their job runs); one client holds at most
// Config.UploadsPerClient of them, and an upload that arrives slower than
// Config.UploadMinRate after Config.UploadGrace is cut off with 408.
//
// Problem bodies are written by package problem, which the operator API
// shares; every failed job is mapped to its answer in one place (JobFailed
// for async and recovered jobs).
package httpapi
