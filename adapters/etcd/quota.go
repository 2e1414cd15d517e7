package etcd

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// Quota counts what tenants spend per day, in etcd, so that a restart does
// not reset the count and every gateway replica on the same etcd shares
// it. Each tenant's day is one key,
//
//	<prefix>/quota/<day>/<tenant>     the units used, as decimal text
//
// with the tenant path-escaped (an IPv6 prefix holds '/' and ':'), written
// under a lease of QuotaLeaseTTL granted once per day, so that etcd drops
// old days by itself.
//
// Sharing is exact for admission: every admitted Take is a compare-and-swap
// on the key's revision, retried on conflict, so replicas together never
// admit more than the limit. What is answered from the local memory:
//
//   - A tenant refused a Take is refused again without asking etcd for
//     QuotaRecheck (or until the day ends), as long as the units asked for
//     do not fit in what was used at the refusal: a flood from an
//     exhausted tenant costs etcd nothing. A refund made on this replica
//     clears it at once; one made on another replica is seen here within
//     QuotaRecheck.
//   - Usage may answer from what this replica last read or wrote for the
//     tenant, if that is younger than QuotaUsageTTL: it is exact for this
//     replica's own Takes and Refunds and may miss other replicas' from
//     the last QuotaUsageTTL.
//
// A Quota is safe for concurrent use. Takes of one tenant on one replica
// are serialised locally, so they never conflict with each other in etcd.
type Quota struct {
	c      *clientv3.Client
	prefix string
	clk    clock.Clock

	seed  maphash.Seed
	locks [quotaStripes]chan struct{} // per tenant (hashed), held across a Take or Refund

	mu    sync.Mutex
	cache *lru.Cache[string, quotaEntry] // by key: the last count seen

	leaseMu  sync.Mutex
	leaseDay string
	lease    clientv3.LeaseID
}

// Tuning of Quota.
const (
	// QuotaLeaseTTL is the lease of a day's counters: long enough that
	// yesterday's jobs can still be refunded after midnight in any time
	// zone, short enough that etcd forgets old days.
	QuotaLeaseTTL = 49 * time.Hour
	// QuotaRecheck is how long a refused tenant is refused from memory
	// before etcd is asked again.
	QuotaRecheck = time.Minute
	// QuotaUsageTTL is how old a count Usage may answer from memory.
	QuotaUsageTTL = time.Second

	quotaStripes   = 64
	quotaCacheSize = 1 << 16
	// quotaMaxAttempts bounds the compare-and-swap rounds of one charge or
	// refund; each lost round waits a random while (contended), so that
	// replicas racing on one tenant take turns instead of one losing
	// every round.
	quotaMaxAttempts = 128
)

// contended waits a random while after the attempt-th lost round (up to
// about 2 ms), or until ctx ends.
func contended(ctx context.Context, attempt int) {
	sleep(ctx, rand.N(time.Duration(min(attempt+1, 8))*250*time.Microsecond))
}

// quotaEntry is the last count this replica saw for a key.
type quotaEntry struct {
	used   int64
	modRev int64     // 0: the key did not exist
	readAt time.Time // when the count was read or written
	// refusedAt is when a Take was last refused; zero when not refused.
	refusedAt time.Time
}

// QuotaExceeded is Take's refusal: the tenant's daily quota cannot hold
// the units asked for. Usage.Reset is when it can. It is the shared
// tenant.QuotaExceeded, which the HTTP adapter answers 429.
type QuotaExceeded = tenant.QuotaExceeded

// NewQuota counts under prefix (DefaultPrefix when empty) on c; clk tells
// the day (nil: the system clock).
func NewQuota(c *clientv3.Client, prefix string, clk clock.Clock) *Quota {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	cache, err := lru.New[string, quotaEntry](quotaCacheSize)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	q := &Quota{c: c, prefix: strings.TrimSuffix(prefix, "/"), clk: clock.Or(clk), seed: maphash.MakeSeed(), cache: cache}
	for i := range q.locks {
		q.locks[i] = make(chan struct{}, 1)
	}
	return q
}

// Key is the etcd key of a tenant's count on day ("2006-01-02").
func (q *Quota) Key(day, tenantName string) string {
	return q.prefix + "/quota/" + day + "/" + url.PathEscape(tenantName)
}

// QuotaDay is the quota day at now in loc (UTC when nil), "2006-01-02",
// and when the next one starts: the next midnight there.
func QuotaDay(now time.Time, loc *time.Location) (string, time.Time) {
	if loc == nil {
		loc = time.UTC
	}
	t := now.In(loc)
	y, m, d := t.Date()
	return t.Format(time.DateOnly), time.Date(y, m, d+1, 0, 0, 0, 0, loc)
}

// Take charges units to the tenant's quota for today (in loc) if they fit
// in limit, and returns the usage after it and a ticket to refund it. When
// they do not fit it charges nothing and returns *QuotaExceeded. A limit
// of tenant.Unlimited always admits, and still counts.
func (q *Quota) Take(ctx context.Context, tenantName string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket, error) {
	now := q.clk.Now()
	day, reset := QuotaDay(now, loc)
	usage := tenant.Usage{Day: day, Limit: limit, Reset: reset}
	if units < 1 {
		return usage, tenant.Ticket{}, fmt.Errorf("quota: take %d units: want at least 1", units)
	}
	key := q.Key(day, tenantName)
	release, err := q.lock(ctx, tenantName)
	if err != nil {
		return usage, tenant.Ticket{}, err
	}
	defer release()

	e, cached := q.cache.Get(key)
	if cached && !e.refusedAt.IsZero() && now.Sub(e.refusedAt) < QuotaRecheck && limit != tenant.Unlimited && e.used+units > limit {
		usage.Used = e.used
		return usage, tenant.Ticket{}, &QuotaExceeded{Usage: usage}
	}
	for attempt := range quotaMaxAttempts {
		fits := limit == tenant.Unlimited || e.used+units <= limit
		var then []clientv3.Op
		if fits {
			opt := clientv3.WithIgnoreLease()
			if e.modRev == 0 {
				lease, err := q.dayLease(ctx, day)
				if err != nil {
					return usage, tenant.Ticket{}, err
				}
				opt = clientv3.WithLease(lease)
			}
			then = []clientv3.Op{clientv3.OpPut(key, strconv.FormatInt(e.used+units, 10), opt)}
		}
		// When the count seen is current: charge (fits), or refuse (it
		// does not). Else read the current one and decide again.
		resp, err := q.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", e.modRev)).Then(then...).Else(clientv3.OpGet(key)).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			q.forgetLease(day)
			continue
		}
		if err != nil {
			return usage, tenant.Ticket{}, fmt.Errorf("quota: take for %s: %w", tenantName, err)
		}
		if !resp.Succeeded {
			if e, err = entryOf(resp); err != nil {
				return usage, tenant.Ticket{}, fmt.Errorf("quota: %s: %w", key, err)
			}
			contended(ctx, attempt)
			continue
		}
		if !fits {
			e.refusedAt, e.readAt = now, now
			q.remember(key, e)
			usage.Used = e.used
			return usage, tenant.Ticket{}, &QuotaExceeded{Usage: usage}
		}
		e = quotaEntry{used: e.used + units, modRev: resp.Header.Revision, readAt: now}
		q.remember(key, e)
		usage.Used = e.used
		return usage, tenant.Ticket{Tenant: tenantName, Day: day, Units: units}, nil
	}
	return usage, tenant.Ticket{}, fmt.Errorf("quota: take for %s: %w (%d times); try again", tenantName, tenant.ErrQuotaContended, quotaMaxAttempts)
}

// Refund gives a ticket's units back to the day it was charged to (never
// below 0). A count already gone (its day expired) is left alone.
func (q *Quota) Refund(ctx context.Context, t tenant.Ticket) error {
	if t.Units <= 0 || t.Day == "" {
		return nil
	}
	key := q.Key(t.Day, t.Tenant)
	release, err := q.lock(ctx, t.Tenant)
	if err != nil {
		return err
	}
	defer release()
	e, _ := q.cache.Get(key)
	for attempt := range quotaMaxAttempts {
		var then []clientv3.Op
		if e.modRev != 0 {
			then = []clientv3.Op{clientv3.OpPut(key, strconv.FormatInt(max(e.used-t.Units, 0), 10), clientv3.WithIgnoreLease())}
		}
		resp, err := q.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", e.modRev)).Then(then...).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return fmt.Errorf("quota: refund to %s on %s: %w", t.Tenant, t.Day, err)
		}
		if !resp.Succeeded {
			if e, err = entryOf(resp); err != nil {
				return fmt.Errorf("quota: %s: %w", key, err)
			}
			contended(ctx, attempt)
			continue
		}
		if e.modRev == 0 {
			return nil // no count to refund to
		}
		q.remember(key, quotaEntry{used: max(e.used-t.Units, 0), modRev: resp.Header.Revision, readAt: q.clk.Now()})
		return nil
	}
	return fmt.Errorf("quota: refund to %s on %s: the count changed %d times while writing; try again", t.Tenant, t.Day, quotaMaxAttempts)
}

// Usage is the tenant's quota today (in loc). It may answer from this
// replica's memory (see Quota); otherwise it reads etcd.
func (q *Quota) Usage(ctx context.Context, tenantName string, limit int64, loc *time.Location) (tenant.Usage, error) {
	now := q.clk.Now()
	day, reset := QuotaDay(now, loc)
	usage := tenant.Usage{Day: day, Limit: limit, Reset: reset}
	key := q.Key(day, tenantName)
	if e, ok := q.cache.Get(key); ok && now.Sub(e.readAt) < QuotaUsageTTL {
		usage.Used = e.used
		return usage, nil
	}
	// Serializable: answered by the member at hand without a consensus
	// round; the quota headers may lag by what replication has not
	// brought yet, admission never does (Take compares and swaps).
	resp, err := q.c.Get(ctx, key, clientv3.WithSerializable())
	if err != nil {
		return usage, fmt.Errorf("quota: usage of %s: %w", tenantName, err)
	}
	e := quotaEntry{readAt: now}
	if len(resp.Kvs) == 1 {
		if e, err = parseEntry(resp.Kvs[0]); err != nil {
			return usage, fmt.Errorf("quota: %s: %w", key, err)
		}
		e.readAt = now
	}
	q.remember(key, e)
	usage.Used = e.used
	return usage, nil
}

// lock holds the tenant's stripe until the returned release is called.
func (q *Quota) lock(ctx context.Context, tenantName string) (func(), error) {
	ch := q.locks[maphash.String(q.seed, tenantName)%quotaStripes]
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("quota: waiting for %s: %w", tenantName, ctx.Err())
	}
}

// remember stores what was seen of a key, unless something newer is
// already known. A refusal is kept only with the count it was made on.
func (q *Quota) remember(key string, e quotaEntry) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if old, ok := q.cache.Get(key); ok {
		if old.modRev > e.modRev {
			return
		}
		if e.refusedAt.IsZero() && old.modRev == e.modRev && old.used == e.used {
			e.refusedAt = old.refusedAt
		}
	}
	q.cache.Add(key, e)
}

// dayLease is the lease the day's new counters are written under, granted
// on the day's first new counter.
func (q *Quota) dayLease(ctx context.Context, day string) (clientv3.LeaseID, error) {
	q.leaseMu.Lock()
	defer q.leaseMu.Unlock()
	if q.leaseDay == day && q.lease != 0 {
		return q.lease, nil
	}
	resp, err := q.c.Grant(ctx, int64(QuotaLeaseTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("quota: lease for %s: %w", day, err)
	}
	q.leaseDay, q.lease = day, resp.ID
	return resp.ID, nil
}

func (q *Quota) forgetLease(day string) {
	q.leaseMu.Lock()
	defer q.leaseMu.Unlock()
	if q.leaseDay == day {
		q.lease = 0
	}
}

// entryOf reads the count from a failed compare's Get.
func entryOf(resp *clientv3.TxnResponse) (quotaEntry, error) {
	if len(resp.Responses) != 1 {
		return quotaEntry{}, errors.New("unexpected transaction answer")
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return quotaEntry{}, nil
	}
	return parseEntry(kvs[0])
}

func parseEntry(kv *mvccpb.KeyValue) (quotaEntry, error) {
	n, err := strconv.ParseInt(string(kv.Value), 10, 64)
	if err != nil || n < 0 {
		return quotaEntry{}, fmt.Errorf("holds %q, not a count", kv.Value)
	}
	return quotaEntry{used: n, modRev: kv.ModRevision}, nil
}
