// Package farm runs jobs on a farm of ComfyUI backends and keeps the farm
// healthy; cmd/sluice only parses the flags and wires it.
//
// Slots and queue: a dispatch.Dispatcher shares the backends' slots between
// tenants (an exact number of slots per backend, a bounded queue served by
// priority class, fair between tenants inside a class, with a minimum share
// for the lower classes). A job waits in its httpapi.Job.Class and counts
// against its Job.InFlight (the tier's jobs at once; 0: Config.TenantInFlight).
// A job holds its slot from its grant until ComfyUI has
// executed it, or it ends any other way: the slot is released on every
// path.
//
// Health (see health.go for the exact rule): every backend is probed every
// Config.Interval with GET /system_stats, bounded by Config.ProbeTimeout; a
// slow answer within the timeout is healthy. Three failed probes in a row,
// or a broken WebSocket (comfyui.Config.OnConnection) confirmed by one
// failed probe, take a backend out; its first successful probe with its
// WebSocket up puts it back, as do three successful probes in a row with
// its WebSocket still broken (a backend reached through a proxy without
// WebSocket support is followed by polling).
//
// Taking a backend out never interrupts a job executing there that shows
// progress. Jobs not yet executing there are removed from that ComfyUI's
// queue and go back into the farm's queue at their place
// (dispatch.Requeue), where they wait, up to the queue wait, for any
// healthy backend, even when it was the only one; jobs that were merely
// waiting for a slot when the last backend went are answered at once
// (dispatch.ReasonNoBackend, a 503). A job executing on a backend that is
// out and showing no progress for Config.Stall is interrupted there and
// run once more elsewhere. A job never runs on two backends at once.
//
// GPU pressure: each probe's GPU sample goes to the Monitor (the engine,
// whose GPU rule decides pressure per GPU); a backend with a GPU under
// pressure gets no new job (dispatch.SetPressure) while it still counts as
// healthy. The engine refuses work for the whole farm only when every
// backend is under pressure, or a GPU of this host (NVML) is. Sample probes
// one backend at once, for a change that must show before a caller goes on.
//
// Slot times: each job that ComfyUI executed tells Config.JobTimes (the
// capacity planner's plan.Recorder) how long it held its slot, from its
// grant until ComfyUI had executed it, by resource and size: never its wait
// in the queue.
//
// Recovered jobs: Claim makes a job that a restarted gateway follows on its
// backend hold a slot there and an admission token of the engine.
//
// A Farm is an httpapi.Runner and an httpapi.Prechecker. Make one with New;
// it is safe for concurrent use.
package farm
