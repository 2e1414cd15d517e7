// Package dashboardapi is the operator's API, mounted on the gateway's Gin
// server beside the public endpoints:
//
//	GET    /api/rules              every rule document in force, with its source,
//	                               the revision in force and the last rejected change
//	GET    /api/rules/:resource    one resource's rules, or "system"
//	PUT    /api/rules/:resource    write one rule document (YAML or JSON, ≤ 1 MiB)
//	DELETE /api/rules/:resource    remove one rule document
//	POST   /api/rules/:resource/dry-run  check one rule document against the rules in force, writing nothing:
//	                               {"resource", "valid", "diff", "lost"}, or 422 with "errors" and "fields" (a read)
//	GET    /api/tiers              the service tiers in force, their source and the last rejected update (Config.Tiers)
//	PUT    /api/tiers              write the tiers document (YAML or JSON, ≤ 1 MiB; 422 with every problem)
//	GET    /api/resources          live statistics per resource
//	GET    /api/blocked?limit=N    the N most recent refusals of the engine's rules, newest first, with origin, tenant and tier (default 100, max 1024)
//	GET    /api/system             CPU, load, every GPU (source, memory, utilisation), CPU devices of backends, the GPU pressure and the build (version, nvml: cgo or nonvml)
//	GET    /api/backends           the GPU farm: each backend's slots in use, health and GPU pressure, the queue, jobs waiting and running by priority class, the tenants with their tier and class
//	GET|PUT /api/simulator/vram    the built-in simulator's GPU memory in use (only with the simulator)
//	GET    /healthz                the process is up
//	GET    /readyz                 ready for traffic (503 until then)
//
// Mount it with Register, which refuses an invalid Config:
//
//	err := dashboardapi.Register(router, dashboardapi.Config{
//		Engine:     eng,
//		Source:     "etcd http://127.0.0.1:2379 /sluice",
//		Writer:     writer,   // writes to etcd; nil when the rules come from files
//		Status:     status,   // func() RulesStatus: revision in force, last rejection
//		Ready:      ready,    // func() bool: the first listing of etcd is applied
//		AdminToken: token,
//		Logger:     log,
//	})
//
// Writes go to Config.Writer, the source of truth, which validates the whole
// candidate rule set first: the engine changes only when the watcher sees
// the write. Their answers:
//
//	200 {"resource", "revision"}       written
//	401 (WWW-Authenticate: Bearer)     no bearer token
//	403                                wrong token, or no admin token configured
//	404                                not a resource nor "system"; or, on
//	                                   DELETE, no such document (ErrNotFound)
//	405                                no Writer: the rules come from files
//	413                                body over rules.MaxSourceBytes
//	422 {"errors": [...], "fields": [{"path", "line", "column", "message"}]}
//	                                   the rules with this change would be invalid
//	429 (Retry-After)                  5 wrong bearer tokens from this origin this
//	                                   minute (Config.Limiter, shared with the console)
//	502, 504                           etcd failed, or did not answer in 10 s
//
// Writes always need Authorization: Bearer <AdminToken>; with no AdminToken
// they are refused, never open: rule writes and the simulator's
// PUT /api/simulator/vram alike. With ProtectReads the GET /api/ endpoints
// need it too; /healthz and /readyz stay open. Config.Session (the web
// console, package adapters/console) authorizes a request without an
// Authorization header in the token's stead: its login cookie, plus for
// writes its X-CSRF-Token (a refused session gets 403). Errors are RFC 9457 problem
// bodies (application/problem+json) written by the public API's writer
// (package problem); JSON bodies are decoded with exact keys.
//
// /api/blocked lists what the engine refused (flow, hotspot, tier rate,
// ban, capacity). The refusals the HTTP side makes after the engine
// admitted a call — a spent daily quota (429) — and refused credentials
// (401) are not in it: each is logged (a quota refusal as "request
// refused" with ip, tenant, tier and kind quota) and counted by tier in
// the metrics (sluice_quota_refusals_total, sluice_auth_failures_total).
package dashboardapi
