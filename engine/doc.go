// Package engine is sluice's core at run time: admission control on
// sentinel-golang.
//
// An Engine holds the compiled rules (replaced atomically by Apply) and
// guards calls:
//
//	call := engine.Call{Resource: "ddcolor_person", Origin: ip, Tier: id.Tier, Size: 512}
//	if !id.Anonymous() {
//		call.Tenant = id.Tenant
//	}
//	tok, err := eng.Guard(ctx, call)
//	var refusal *engine.Refusal
//	if errors.As(err, &refusal) {
//		// 429 or 503, refusal.RetryAfter, refusal.Kind ...
//	}
//	// ... run the GPU job ...
//	tok.Exit(jobErr) // when the job ends: RT is the real job time
//
// A call is anonymous (Tenant empty: its limits and bans count its Origin)
// or identified (its Tenant's: an identified tenant is never limited or
// banned by the address it shares with others). Hotspot rules on origin
// apply to anonymous calls only, those on tenant to identified calls only;
// SetTierRates adds a per-caller rate for each tier, swapped whole apart
// from the rules.
//
// Guard runs, under the resource's lock, a slot chain of sentinel-golang's
// flow and hotspot slots between the engine's own: bans of callers that
// keep exceeding their own hotspot limit or tier rate, the tier rates, the
// system rules
// (load, average response time, jobs in flight, inbound rate, all per job
// and per engine), the gateway's own CPU usage, GPU pressure, concurrency (jobs
// in flight, whatever their cost) and, last, throttle pacing, whose wait
// happens outside the lock and ends with ctx. Every threshold is exact, and
// stays so across Apply: each resource keeps its lock, in-flight count and
// pacing; only the rules change.
//
// Rules in mode shadow run in a second chain, on each call the enforcing
// rules admitted, over a sentinel-golang resource of their own
// ("<resource>(shadow)") and the engine's shadow counterparts of jobs in
// flight, pacing, bans and the system figures: they count what they would
// refuse (ResourceStats.Shadow, Blocked.Shadow, a log line with
// shadow=true) exactly as if enforced, and refuse nothing. A resource with
// no shadow rule (and no shadow system or GPU rule) skips that chain.
//
// sentinel-golang keeps rules and statistics in package state. The engine
// loads the union of the rules of every live Engine, each under its own
// Options.Namespace, so engines in one process each enforce their own; New
// refuses a namespace that a live engine holds.
package engine
