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
// Who calls: with Config.Identity, a request may carry an API key or a JWT
// (Authorization: Bearer, X-API-Key); its tenant and tier come from it. A
// credential sent but refused is answered 401 with WWW-Authenticate
// (Bearer realm="sluice", error="invalid_token"), never taken as anonymous;
// no credential is an anonymous caller, its tenant its origin. The tier
// (Config.Tiers, rules.DefaultTiers by default) may keep the caller from a
// resource or from sizes above its max_size (403 tier-forbids); a tier the
// document lacks is 403 unknown-tier. Its class and jobs in flight go with
// the job to the Runner.
//
// Daily quotas (Config.Quota): once the engine admits a call its units (1
// job, or its cost) are charged to the tenant's day; a spent quota is
// answered 429 with Retry-After until the day ends. Every answer of a
// guarded endpoint carries the "daily" items of RateLimit-Policy and
// RateLimit (after a refusing rule's own item). A job that fails on the
// gateway's side (backend or ComfyUI error, timeout, no GPU slot, panic,
// the gateway stopping) is refunded once; one its client cancels is not.
// An async job carries its quota ticket in its record, across restarts;
// the job manager's Refund (RefundJobs) gives it back. GET /api/me tells
// the caller its tenant, tier, quota and jobs in flight.
//
// Problem bodies are written by package problem, which the operator API
// shares; every failed job is mapped to its answer in one place (JobFailed
// for async and recovered jobs).
package httpapi
