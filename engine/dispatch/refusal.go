package dispatch

import "time"

// Reason says why Acquire refused a job.
type Reason string

// The reasons for a refusal. ReasonTenantBusy is about the caller's own
// use (HTTP 429); the others are about capacity (HTTP 503).
const (
	// ReasonQueueFull: MaxQueue jobs were already waiting, none of a
	// lower class; or the job was waiting and a job of a higher class
	// took its place.
	ReasonQueueFull Reason = "queue_full"
	// ReasonWaitTimeout: the job waited MaxWait without getting a slot.
	ReasonWaitTimeout Reason = "wait_timeout"
	// ReasonTenantBusy: the tenant already had TenantInFlight jobs running
	// or waiting.
	ReasonTenantBusy Reason = "tenant_busy"
	// ReasonNoBackend: no backend was healthy.
	ReasonNoBackend Reason = "no_backend"
)

// Refusal is the error Acquire returns when it gives no slot for a reason
// of the Dispatcher's own (not the caller's context).
type Refusal struct {
	Reason Reason
	// RetryAfter estimates when a retry could get a slot: the jobs queued
	// ahead times the average job time, over the healthy slots. For
	// ReasonTenantBusy, the jobs queued ahead are those of the job's class
	// and the higher ones only.
	RetryAfter time.Duration
}

func (r *Refusal) Error() string {
	var what string
	switch r.Reason {
	case ReasonQueueFull:
		what = "queue full"
	case ReasonWaitTimeout:
		what = "waited too long for a slot"
	case ReasonTenantBusy:
		what = "tenant at its in-flight cap"
	case ReasonNoBackend:
		what = "no healthy backend"
	default:
		what = string(r.Reason)
	}
	return "dispatch: " + what + "; retry after " + r.RetryAfter.String()
}
