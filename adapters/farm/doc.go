// Package farm runs jobs on a farm of ComfyUI backends: it shares their
// slots between tenants through a dispatch.Dispatcher (an exact number of
// slots per backend, a bounded queue fair between tenants), runs each job
// on the backend its lease names, and keeps the farm healthy.
//
//   - Leases: a job holds its backend slot from the moment it is granted
//     until ComfyUI has executed it (or it ends any other way); the slot is
//     released on every path.
//   - Re-running: a job whose backend is taken out of the farm while it runs
//     is interrupted there and run once more elsewhere; it never runs on two
//     backends at once.
//   - Health: Watch samples every backend's /system_stats, passes the GPU
//     samples on to the engine, and takes a backend that stops answering out
//     of the farm and back in at its first answer.
//   - Recovered jobs: Claim makes a job that a restarted gateway follows on
//     its backend hold a slot there and an admission token of the engine.
//
// A Farm is an httpapi.Runner and an httpapi.Prechecker. Make one with New;
// it is safe for concurrent use.
package farm
