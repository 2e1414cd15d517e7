package imageinput

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Budget bounds the memory that decoding, scaling and re-encoding uploads
// may hold at once, across all requests that share it. Each
// [Upload.PrepareContext] reserves its [Upload.Cost] before decoding and
// gives it back when it returns, on every path. When the budget is taken,
// a request waits in arrival order for at most the budget's wait, then is
// refused with a [CodeBusy] error (503). An upload whose cost alone exceeds
// the whole budget is refused at once with [CodeTooBigToDecode] (413), by
// [Inspect] already when the budget is set in its Limits.
//
// Create one Budget per process (or per pool of handlers meant to share
// memory) and put it in every [Limits] that should draw from it. A nil
// *Budget reserves nothing, as before budgets existed. A Budget is safe for
// concurrent use.
type Budget struct {
	sem     *semaphore.Weighted
	size    int64
	maxWait time.Duration
	inUse   atomic.Int64
	waiting atomic.Int64
	onWait  func() // test hook: called once a request starts waiting
}

// NewBudget returns a budget of size bytes in which a request waits at most
// maxWait for room (0: no waiting, refuse at once). A size of 0 or less
// returns nil: no budget.
func NewBudget(size int64, maxWait time.Duration) *Budget {
	if size <= 0 {
		return nil
	}
	return &Budget{sem: semaphore.NewWeighted(size), size: size, maxWait: max(0, maxWait)}
}

// Size is the budget in bytes; 0 for a nil Budget.
func (b *Budget) Size() int64 {
	if b == nil {
		return 0
	}
	return b.size
}

// InUse is how many bytes are reserved now.
func (b *Budget) InUse() int64 {
	if b == nil {
		return 0
	}
	return b.inUse.Load()
}

// Waiting is how many requests are waiting for room now.
func (b *Budget) Waiting() int64 {
	if b == nil {
		return 0
	}
	return b.waiting.Load()
}

// fits refuses at once a cost the whole budget could never hold.
func (b *Budget) fits(n int64, what string) error {
	if b == nil || n <= b.size {
		return nil
	}
	return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooBigToDecode,
		Msg: fmt.Sprintf("decoding this %s needs about %d MiB; the gateway decodes at most %d MiB at once: send fewer pixels, or 8 bits per channel instead of 16",
			what, mib(n), mib(b.size))}
}

// acquire reserves n bytes, waiting at most maxWait and while ctx lasts.
// The caller must call release exactly once when err is nil.
func (b *Budget) acquire(ctx context.Context, n int64, what string) (release func(), err error) {
	if b == nil {
		return func() {}, nil
	}
	if err := b.fits(n, what); err != nil {
		return nil, err
	}
	if !b.sem.TryAcquire(n) {
		if err := b.wait(ctx, n, what); err != nil {
			return nil, err
		}
	}
	b.inUse.Add(n)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			b.inUse.Add(-n)
			b.sem.Release(n)
		}
	}, nil
}

// wait blocks until n bytes are reserved or refuses with a busy error.
func (b *Budget) wait(ctx context.Context, n int64, what string) error {
	busy := func(err error) error {
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeBusy, RetryAfter: time.Second,
			Msg: fmt.Sprintf("the gateway is decoding other images (%d of %d MiB in use) and this %s needs %d MiB; try again shortly",
				mib(b.InUse()), mib(b.size), what, mib(n)), err: err}
	}
	if b.maxWait <= 0 {
		return busy(nil)
	}
	wctx, cancel := context.WithTimeout(ctx, b.maxWait)
	defer cancel()
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	if b.onWait != nil {
		b.onWait()
	}
	// On failure Acquire leaves the semaphore as it was.
	if err := b.sem.Acquire(wctx, n); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return busy(fmt.Errorf("waiting for image memory: %w", cerr))
		}
		return busy(fmt.Errorf("waited %v for image memory: %w", b.maxWait, err))
	}
	return nil
}

func mib(n int64) int64 { return (n + 1<<20 - 1) >> 20 }
