// Package dispatch shares the GPU backends' job slots between tenants: a
// bounded, fair wait queue in front of an exact per-backend semaphore.
//
// Every backend (a ComfyUI server) runs at most Slots jobs at once; that cap
// is what keeps VRAM from running out, so Acquire never exceeds it. A job
// first takes a slot with Acquire and gives it back with Release when the
// GPU work ends:
//
//	lease, err := d.Acquire(ctx, dispatch.Request{Tenant: tenant, Class: class, Cost: cost})
//	var refusal *dispatch.Refusal
//	if errors.As(err, &refusal) {
//		// 503 (or 429 for ReasonTenantBusy), Retry-After: refusal.RetryAfter
//	}
//	if err != nil {
//		return err // ctx ended while waiting
//	}
//	// ... run the job on lease.Backend() ...
//	lease.Release(jobTime)
//
// When no slot is free the job waits, at most Config.MaxWait, in a queue of
// at most Config.MaxQueue jobs over all tenants, and a tenant has at most
// Request.InFlight (default Config.TenantInFlight) jobs running or waiting.
//
// Every job has a priority class (tenant.Low, Medium, High: its tier's).
// Freed slots go to the highest class with jobs waiting, except that a
// lower class is never starved: while it has jobs waiting, low gets at
// least one slot in every Config.LowShare (default 10) and medium at least
// one in every Config.MediumShare (default 5) that go to high. Inside a
// class, slots go by deficit round robin over tenants, each tenant's jobs
// in FIFO order, so a tenant flooding the queue gets its share and no
// more; a job's cost weighs its share (a cost-3 job counts as three cost-1
// jobs). A job finding the queue full takes the place of a waiting job of
// a lower class, which is refused. The scheduler is work-conserving: a free slot never stays free
// while a job of any class waits, and a job finding a slot free and no
// queue takes it at once, so low-class jobs keep an idle farm busy.
//
// A waiting job's place in the queue (Request.OnQueued) is where it stands
// in that serving order: 1 + the jobs that would be served before it if
// none came or went. It goes down as jobs are served or leave, and can go
// up when a job of a higher class (or of a tenant whose round-robin turn
// comes first) arrives.
//
// A Release hands the freed slot to the next waiter synchronously, under the
// Dispatcher's single mutex: a slot is never free and promised at once. A
// waiter whose context ends, or whose MaxWait passes, leaves the queue under
// the same mutex; a lease handed to it in the same instant goes on to the
// next waiter. Waiting costs no goroutine beyond the caller's own.
//
// A backend can be taken out (SetHealthy false: no new jobs; the jobs
// waiting are refused with ReasonNoBackend when it was the last one) or be
// under GPU pressure (SetPressure: no new jobs, which wait for another
// backend). A job taken back from a backend before it started there goes
// back into the queue at its place, in its class, with Requeue, and waits there for any
// backend, even while none is healthy.
//
// A job already running on a backend when the Dispatcher is made (one a
// restarted gateway takes up) holds a slot there too: Adopt takes it at
// once, past Slots if need be, so that new jobs wait until it ends.
//
// A Dispatcher made by New is safe for concurrent use. The zero Dispatcher
// has no backends: it refuses every Acquire with ReasonNoBackend.
package dispatch
