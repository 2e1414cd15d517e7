package engine

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

// throttle is a flow rule with behavior throttle, paced by the engine:
// sentinel-golang's throttling sleeps inside its check, before the checks
// after it and deaf to cancellation.
type throttle struct {
	index    int // in the resource's flow list: the key of its pacing
	rule     *ownRule
	window   time.Duration
	maxQueue time.Duration
}

func newThrottle(resource string, i int, f rules.FlowRule) throttle {
	return throttle{
		index:    i,
		window:   time.Duration(f.Window),
		maxQueue: time.Duration(f.MaxQueue),
		rule: &ownRule{id: fmt.Sprintf("%s/flow[%d]", resource, i), resource: resource, kind: KindFlow,
			threshold: f.Threshold, window: time.Duration(f.Window)},
	}
}

// interval is the spacing a call of cost takes: window × cost / threshold,
// as sentinel-golang's throttling spaces it.
func (t throttle) interval(cost uint32) int64 {
	return int64(math.Ceil(float64(cost) / t.rule.threshold * float64(t.window)))
}

// pacedSlot is a pacing slot a call took: prev is the rule's last slot
// before it, given back if the call leaves while waiting and no later call
// has queued behind it.
type pacedSlot struct {
	index      int
	prev, slot int64
}

// paceSlot books the throttle rules' pacing slots of a call that every
// other check admitted. It runs last in the chain, under the resource's
// lock; Guard waits outside the lock.
type paceSlot struct{ e *Engine }

func (s *paceSlot) Order() uint32 { return paceSlotOrder }

func (s *paceSlot) Check(ctx *base.EntryContext) *base.TokenResult {
	tok := tokenOf(ctx)
	if tok == nil || len(tok.res.throttles) == 0 {
		return nil
	}
	rs, cost := tok.res, ctx.Input.BatchCount
	now := s.e.clock.Now().UnixNano()
	var wait int64
	for _, t := range rs.throttles {
		slot := max(rs.pace[t.index]+t.interval(cost), now)
		if w := slot - now; w > int64(t.maxQueue) {
			return base.NewTokenResultBlockedWithCause(base.BlockTypeFlow, "throttle queue full", t.rule, time.Duration(w)-t.maxQueue)
		}
		wait = max(wait, slot-now)
	}
	tok.paced = make([]pacedSlot, 0, len(rs.throttles))
	for _, t := range rs.throttles {
		prev := rs.pace[t.index]
		slot := max(prev+t.interval(cost), now)
		rs.pace[t.index] = slot
		tok.paced = append(tok.paced, pacedSlot{index: t.index, prev: prev, slot: slot})
	}
	tok.wait = time.Duration(wait)
	return nil
}

// paced holds an admitted call until its pacing slot. If ctx ends first the
// call is not admitted: its slots go back where no later call queued behind
// them, its place in flight is freed, and ctx's error is returned.
func (e *Engine) paced(ctx context.Context, tok *Token) error {
	ch, stop := clock.NewTimer(e.clock, tok.wait)
	defer stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	tok.abandon()
	return ctx.Err()
}

// Cancel undoes the admission of a call whose work never started for a
// reason of the gateway's own (its input could not be prepared for want of
// memory): it counts as no job, and gives back its place in flight, its
// hotspot tokens and its pacing slots. After Exit or Cancel, both do
// nothing.
func (t *Token) Cancel() {
	if t != nil {
		t.abandon()
	}
}

// abandon undoes the admission of a call whose caller left while it was
// paced, or whose work never started.
func (t *Token) abandon() {
	if !t.exited.CompareAndSwap(false, true) {
		return
	}
	r := t.res.resource
	r.giveBack(t)
	r.inFlight.Add(-1)
	r.shadowDone(t)
	t.abandoned = true
	t.entry.Exit()
	if s := t.shadow; s != nil {
		s.abandoned = true
		s.entry.Exit()
	}
}

// giveBack returns the pacing slots of t that are still the last booked,
// and its hotspot tokens, and those of its shadow admission.
func (r *resource) giveBack(t *Token) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.giveBackLocked()
	if s := t.shadow; s != nil {
		s.giveBackLocked()
	}
}

// giveBackLocked does giveBack's work for one Token; the caller holds the
// real resource's lock.
func (t *Token) giveBackLocked() {
	t.refund()
	pace := t.res.pace
	for _, p := range t.paced {
		if pace[p.index] == p.slot {
			pace[p.index] = p.prev
		}
	}
}

// resetPacing forgets the pacing of every throttle rule that a rule update
// loosened (a shorter spacing) or took away, so that a loosened rule does
// not keep the old rule's schedule. A rule kept or tightened keeps its
// schedule: the calls already booked on it stay counted, and the next one
// comes after them at the new spacing.
//
// The caller holds r.mu.
func (r *resource) resetPacingLocked(old, updated []throttle) {
	keep := func(t throttle) bool {
		for _, u := range updated {
			if u.index == t.index {
				return float64(u.window)/u.rule.threshold >= float64(t.window)/t.rule.threshold
			}
		}
		return false
	}
	for _, t := range old {
		if !keep(t) {
			delete(r.pace, t.index)
		}
	}
}
