package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// How long the quota store may take, and how long it is left alone after
// it failed.
const (
	// quotaTakeTimeout bounds one charge: an admitted job never waits
	// longer for the quota store (etcd) than this.
	quotaTakeTimeout = 500 * time.Millisecond
	// quotaBackoff is how long, after the store failed or timed out,
	// calls are admitted uncharged without asking it: an etcd outage
	// costs one wait, not one per request.
	quotaBackoff = 10 * time.Second
)

// errQuotaSkipped is what the guard answers while the store is left alone.
var errQuotaSkipped = errors.New("the quota store failed recently: not asked")

// guardedQuota keeps a quota store that stops answering (etcd down or
// half-open) from holding up requests: each call is bounded, and after a
// failure the store is not asked for quotaBackoff, the calls failing at
// once (the gateway then admits uncharged, as with any store failure).
// Refunds are still attempted: a lost one only over-counts.
type guardedQuota struct {
	q     Quota
	clock clock.Clock
	log   *slog.Logger

	mu        sync.Mutex
	downUntil time.Time
}

func guardQuota(q Quota, clk clock.Clock, log *slog.Logger) *guardedQuota {
	return &guardedQuota{q: q, clock: clk, log: log}
}

// skip reports whether the store is being left alone.
func (g *guardedQuota) skip() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.clock.Now().Before(g.downUntil)
}

// failed records a failure of the store, unless the caller left (its
// context ended) or the answer was a refusal or one tenant's contention.
func (g *guardedQuota) failed(ctx context.Context, err error) {
	var ex *tenant.QuotaExceeded
	if err == nil || errors.As(err, &ex) || errors.Is(err, tenant.ErrQuotaContended) || ctx.Err() != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	if now.Before(g.downUntil) {
		return
	}
	g.downUntil = now.Add(quotaBackoff)
	g.log.Error("the quota store failed: calls are admitted uncharged, and it is not asked again for a while",
		slog.Duration("for", quotaBackoff), slog.Any("error", err))
}

func (g *guardedQuota) Take(ctx context.Context, name string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket, error) {
	if g.skip() {
		return tenant.Usage{}, tenant.Ticket{}, errQuotaSkipped
	}
	tctx, cancel := context.WithTimeout(ctx, quotaTakeTimeout)
	defer cancel()
	u, t, err := g.q.Take(tctx, name, limit, units, loc)
	if err != nil && errors.Is(tctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("no answer within %s: %w", quotaTakeTimeout, err)
	}
	g.failed(ctx, err)
	return u, t, err
}

func (g *guardedQuota) Refund(ctx context.Context, t tenant.Ticket) error {
	return g.q.Refund(ctx, t)
}

func (g *guardedQuota) Usage(ctx context.Context, name string, limit int64, loc *time.Location) (tenant.Usage, error) {
	if g.skip() {
		return tenant.Usage{}, errQuotaSkipped
	}
	u, err := g.q.Usage(ctx, name, limit, loc)
	g.failed(ctx, err)
	return u, err
}
