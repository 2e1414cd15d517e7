package dispatch

import (
	"errors"
	"fmt"
)

// ErrUnknownBackend is the error of Adopt for a backend the Dispatcher does
// not have.
var ErrUnknownBackend = errors.New("dispatch: unknown backend")

// Adopt takes a slot on the named backend for a job already running there —
// one a restarted gateway found on its backend — without queueing and
// without refusing: the job runs whether or not a slot is free, so the slot
// is taken even if that fills the backend past its Slots (the backend then
// gets no new job until enough adopted ones end). The job counts as a
// running one of req's Tenant, in req's Class and Tier (as Stats shows
// them); req's Cost, InFlight and OnQueued weigh nothing once a slot is
// held, and are not read. The caller holds the Lease until it calls
// Release, as for Acquire.
//
// Only an unknown backend is an error (ErrUnknownBackend); an unhealthy one
// is adopted on, for the job runs there all the same.
func (d *Dispatcher) Adopt(backendName string, req Request) (*Lease, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.byName[backendName]
	if b == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownBackend, backendName)
	}
	cls := req.class()
	t := d.tenant(req.Tenant)
	t.class, t.tier = cls, req.Tier
	b.inUse++
	t.running++
	d.running[cls]++
	return &Lease{d: d, b: b, t: t, class: cls}, nil
}
