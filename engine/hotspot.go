package engine

import (
	"sync/atomic"
	"time"

	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/hotspot"
	"github.com/alibaba/sentinel-golang/core/hotspot/cache"
	"github.com/alibaba/sentinel-golang/util"
)

// hotspotBehavior is the control behavior under which the engine loads its
// hotspot rules: sentinel-golang's reject controller, the same token
// bucket, which also says when a refused value's bucket refills. Behaviors
// above sentinel-golang's own (Reject, Throttling) are free for generators.
const hotspotBehavior hotspot.ControlBehavior = 100

// hotspotController is sentinel-golang v1.0.4's reject controller for QPS
// rules (core/hotspot/traffic_shaping.go), refusals carrying the exact
// retry time. Its bucket refills only once more than a window has passed
// since the last refill: a value refused now passes again at
// lastRefill + window + 1ms at the earliest, not after a smooth
// window/threshold.
type hotspotController struct {
	rule     *hotspot.Rule
	metric   *hotspot.ParamsMetric
	windowMs int64
	// cause is the rule a refusal names: rule itself, unless the
	// controller is a tier rate's.
	cause base.SentinelRule
	// call is the Token of the call being checked: ExtractArgs sets it and
	// PerformChecking, right after, records its debit there. Both run
	// under the resource's lock, which guards it.
	call *Token
}

// hotspotDebit is batch tokens a call took from arg's bucket, whose last
// refill was at refill (Unix ms).
type hotspotDebit struct {
	c      *hotspotController
	arg    any
	batch  int64
	refill int64
}

// refund gives back the hotspot tokens the call took. The caller holds the
// resource's lock.
func (t *Token) refund() {
	for _, d := range t.debits {
		d.c.refund(d)
	}
	t.debits = t.debits[:0]
}

// refund puts a debit's tokens back into its bucket, never above its size,
// unless the bucket has been refilled since: the refill already counted
// from what was left, and a refund on top would let more through than the
// rule allows.
func (c *hotspotController) refund(d hotspotDebit) {
	lastPtr, found := c.metric.RuleTimeCounter.Get(d.arg)
	if !found || atomic.LoadInt64(lastPtr) != d.refill {
		return // refilled or evicted meanwhile
	}
	restPtr, found := c.metric.RuleTokenCounter.Get(d.arg)
	if !found {
		return
	}
	most := c.limit(d.arg) + c.rule.BurstCount
	atomic.StoreInt64(restPtr, min(atomic.LoadInt64(restPtr)+d.batch, most))
}

// debit records on the call being checked that it took batch of arg's
// tokens from a bucket last refilled at refill.
func (c *hotspotController) debit(arg any, batch, refill int64) {
	if t := c.call; t != nil {
		if t.debits == nil {
			t.debits = t.debitBuf[:0]
		}
		t.debits = append(t.debits, hotspotDebit{c: c, arg: arg, batch: batch, refill: refill})
	}
}

// newHotspotController is the generator of hotspotBehavior; reuse is the
// bucket state of an equivalent rule being replaced.
func newHotspotController(r *hotspot.Rule, reuse *hotspot.ParamsMetric) hotspot.TrafficShapingController {
	m := reuse
	if m == nil {
		size := int(r.ParamsMaxCapacity)
		if size <= 0 {
			size = hotspot.ParamsMaxCapacity
		}
		m = &hotspot.ParamsMetric{RuleTimeCounter: cache.NewLRUCacheMap(size), RuleTokenCounter: cache.NewLRUCacheMap(size)}
	}
	return &hotspotController{rule: r, metric: m, windowMs: r.DurationInSec * 1000, cause: r}
}

func (c *hotspotController) BoundRule() *hotspot.Rule           { return c.rule }
func (c *hotspotController) BoundMetric() *hotspot.ParamsMetric { return c.metric }
func (c *hotspotController) BoundParamIndex() int               { return c.rule.ParamIndex }

func (c *hotspotController) ExtractArgs(ctx *base.EntryContext) any {
	c.call = tokenOf(ctx)
	if i := c.rule.ParamIndex; i >= 0 && i < len(ctx.Input.Args) {
		return ctx.Input.Args[i]
	}
	return nil
}

func (c *hotspotController) limit(arg any) int64 {
	if n, ok := c.rule.SpecificItems[arg]; ok {
		return n
	}
	return c.rule.Threshold
}

// PerformChecking takes batch tokens of arg's bucket, refilling it first
// if more than a window has passed since its last refill. Guard runs it
// under the resource's lock.
func (c *hotspotController) PerformChecking(arg any, batch int64) *base.TokenResult {
	limit := c.limit(arg)
	most := limit + c.rule.BurstCount
	if limit <= 0 || batch > most {
		return c.blocked(time.Duration(c.windowMs) * time.Millisecond)
	}
	now := int64(util.CurrentTimeMillis())
	times, tokens := c.metric.RuleTimeCounter, c.metric.RuleTokenCounter
	// Get before Add: a known value's check allocates nothing (sentinel's
	// own AddIfAbsent(arg, &now) moves now to the heap on every call).
	lastPtr, known := times.Get(arg)
	restPtr, found := tokens.Get(arg)
	if !known || !found {
		// First call of the value (or its bucket was evicted): a full
		// bucket.
		left := most - batch
		tokens.Add(arg, &left)
		if known {
			atomic.StoreInt64(lastPtr, now)
		} else {
			last := now
			times.Add(arg, &last)
		}
		c.debit(arg, batch, now)
		return nil
	}
	// A bucket filled under a higher threshold holds no more than the
	// current one allows.
	last, rest := atomic.LoadInt64(lastPtr), min(atomic.LoadInt64(restPtr), most)
	if passed := now - last; passed > c.windowMs {
		if left := min(passed*limit/c.windowMs+rest, most) - batch; left >= 0 {
			atomic.StoreInt64(restPtr, left)
			atomic.StoreInt64(lastPtr, now)
			c.debit(arg, batch, now)
			return nil
		}
	} else if rest >= batch {
		atomic.StoreInt64(restPtr, rest-batch)
		c.debit(arg, batch, last)
		return nil
	}
	return c.blocked(c.retryAfter(now, last, rest, limit, batch))
}

// retryAfter is how long until a call of batch would pass: the first
// refill, more than a window after the last one, that brings the bucket to
// batch tokens.
func (c *hotspotController) retryAfter(now, last, rest, limit, batch int64) time.Duration {
	passed := c.windowMs + 1 // a refill needs more than a window
	if need := batch - rest; need > 0 {
		// floor(passed × limit / window) >= need
		passed = max(passed, (need*c.windowMs+limit-1)/limit)
	}
	return time.Duration(max(last+passed-now, 1)) * time.Millisecond
}

// blocked is a refusal carrying its retry time.
func (c *hotspotController) blocked(retry time.Duration) *base.TokenResult {
	return base.NewTokenResultBlockedWithCause(base.BlockTypeHotSpotParamFlow, "hotspot", c.cause, retry)
}
