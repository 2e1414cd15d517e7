package dispatch

import (
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
)

// Lease is one job's hold on a backend slot, from Acquire to Release. A
// lease never released holds its slot for good: release it on every path.
// Its methods are safe for concurrent use.
type Lease struct {
	d      *Dispatcher
	b      *backend
	t      *tenantState
	class  tenant.Class // kept by Requeue
	waited time.Duration
	// released is guarded by d.mu.
	released bool
}

// Backend names the backend the job is to run on.
func (l *Lease) Backend() string { return l.b.name }

// Class is the job's priority class.
func (l *Lease) Class() tenant.Class { return l.class }

// Waited is how long the job waited for its slot; 0 when one was free.
func (l *Lease) Waited() time.Duration { return l.waited }

// Release frees the slot, handing it straight to the next waiter, and
// records jobTime for the RetryAfter estimates; a jobTime <= 0 (a job that
// never ran) records nothing. Calls after the first do nothing.
func (l *Lease) Release(jobTime time.Duration) {
	d := l.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if l.released {
		return
	}
	l.released = true
	l.b.inUse--
	l.t.running--
	d.running[l.class]--
	d.forgetIdle(l.t)
	if jobTime > 0 {
		d.measure(jobTime)
	}
	d.dispatch()
}
