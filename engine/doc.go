// Package engine is sluice's core at run time: admission control on
// sentinel-golang.
//
// An Engine holds the compiled rules (replaced atomically by Apply) and
// guards calls:
//
//	tok, err := eng.Guard(ctx, engine.Call{Resource: "ddcolor_person", Origin: ip, Size: 512})
//	var refusal *engine.Refusal
//	if errors.As(err, &refusal) {
//		// 429 or 503, refusal.RetryAfter, refusal.Kind ...
//	}
//	// ... run the GPU job ...
//	tok.Exit(jobErr) // when the job ends: RT is the real job time
//
// Guard runs a slot chain of sentinel-golang's own slots (system, flow,
// concurrency, hotspot) plus the engine's: temporary bans of origins that
// keep getting refused, and the machine's CPU usage (sentinel-golang's own
// CpuUsage rule measures the process against a fraction and cannot be used).
//
// sentinel-golang keeps rules and statistics in package state, so a process
// runs one Engine at a time; Options.Namespace keeps the statistics of
// engines that follow one another (tests) apart.
package engine
