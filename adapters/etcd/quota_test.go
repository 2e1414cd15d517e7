package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// afternoon is a quota test's "now": 15:00 UTC.
var afternoon = time.Date(2026, 3, 10, 15, 0, 0, 0, time.UTC)

func newClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Endpoints: endpoints, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// count reads a counter straight from etcd (-1: no key).
func count(t testing.TB, c *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return -1
	}
	var n int64
	if _, err := fmt.Sscan(string(resp.Kvs[0].Value), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func take(t testing.TB, q *Quota, tn string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return q.Take(ctx, tn, limit, units, loc)
}

func mustTake(t testing.TB, q *Quota, tn string, limit, units int64, loc *time.Location) (tenant.Usage, tenant.Ticket) {
	t.Helper()
	u, tk, err := take(t, q, tn, limit, units, loc)
	if err != nil {
		t.Fatalf("take %d of %s: %v", units, tn, err)
	}
	return u, tk
}

func exceeded(t testing.TB, err error) tenant.Usage {
	t.Helper()
	var qe *QuotaExceeded
	if !errors.As(err, &qe) {
		t.Fatalf("err = %v, want *QuotaExceeded", err)
	}
	return qe.Usage
}

func TestQuotaTakeUpToTheLimit(t *testing.T) {
	clk := clock.NewFake(afternoon)
	q := NewQuota(shared.client, testPrefix(t), clk)
	for i := int64(1); i <= 3; i++ {
		u, tk := mustTake(t, q, "198.51.100.7", 3, 1, nil)
		if u.Used != i || u.Remaining() != 3-i || u.Day != "2026-03-10" {
			t.Fatalf("take %d: usage %+v", i, u)
		}
		if tk != (tenant.Ticket{Tenant: "198.51.100.7", Day: "2026-03-10", Units: 1}) {
			t.Fatalf("ticket %+v", tk)
		}
	}
	_, tk, err := take(t, q, "198.51.100.7", 3, 1, nil)
	u := exceeded(t, err)
	if u.Used != 3 || u.Remaining() != 0 || u.Limit != 3 || !u.Reset.Equal(time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)) || tk != (tenant.Ticket{}) {
		t.Fatalf("refusal usage %+v, ticket %+v", u, tk)
	}
	if !strings.Contains(err.Error(), "3 of 3 used on 2026-03-10; it resets at 2026-03-11T00:00:00Z") {
		t.Errorf("message %q", err)
	}
	if n := count(t, shared.client, q.Key("2026-03-10", "198.51.100.7")); n != 3 {
		t.Fatalf("etcd holds %d, want 3", n)
	}
	// Another tenant has its own count.
	if u, _ := mustTake(t, q, "198.51.100.8", 3, 1, nil); u.Used != 1 {
		t.Fatalf("other tenant %+v", u)
	}
	if u, err := q.Usage(context.Background(), "198.51.100.7", 3, nil); err != nil || u.Used != 3 {
		t.Fatalf("usage %+v %v", u, err)
	}
}

// TestRefusedTenantIsAnsweredFromMemory: once refused, a tenant's flood is
// refused without etcd (here: a closed client) until QuotaRecheck.
func TestRefusedTenantIsAnsweredFromMemory(t *testing.T) {
	clk := clock.NewFake(afternoon)
	c := newClient(t, shared.etcd.Endpoints())
	q := NewQuota(c, testPrefix(t), clk)
	mustTake(t, q, "t1", 1, 1, nil)
	exceeded(t, second(take(t, q, "t1", 1, 1, nil)))
	c.Close() // etcd is unreachable from here on
	for range 100 {
		if u := exceeded(t, second(take(t, q, "t1", 1, 1, nil))); u.Used != 1 {
			t.Fatalf("usage %+v", u)
		}
	}
	clk.Advance(QuotaRecheck)
	if _, _, err := take(t, q, "t1", 1, 1, nil); err == nil || errors.As(err, new(*QuotaExceeded)) {
		t.Fatalf("after the recheck interval: err = %v, want an etcd error", err)
	}
}

func second[A, B any](_ A, _ B, err error) error { return err }

func TestQuotaSurvivesARestart(t *testing.T) {
	prefix := testPrefix(t)
	clk := clock.NewFake(afternoon)
	mustTake(t, NewQuota(shared.client, prefix, clk), "tenant-a", 2, 1, nil)
	mustTake(t, NewQuota(shared.client, prefix, clk), "tenant-a", 2, 1, nil)
	// A new gateway process: a fresh Quota, nothing in memory.
	q := NewQuota(newClient(t, shared.etcd.Endpoints()), prefix, clk)
	if u, err := q.Usage(context.Background(), "tenant-a", 2, nil); err != nil || u.Used != 2 {
		t.Fatalf("usage after restart %+v %v", u, err)
	}
	exceeded(t, second(take(t, q, "tenant-a", 2, 1, nil)))
}

func TestQuotaSurvivesAnEtcdRestart(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := e.Endpoints()[0]
	clk := clock.NewFake(afternoon)
	c := newClient(t, []string{endpoint})
	mustTake(t, NewQuota(c, "", clk), "tenant-b", 5, 3, nil)
	c.Close()
	e.Close()

	e, err = StartEmbedded(EmbeddedConfig{Dir: dir, ClientURL: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c = newClient(t, []string{endpoint})
	q := NewQuota(c, "", clk)
	u, err := q.Usage(context.Background(), "tenant-b", 5, nil)
	if err != nil || u.Used != 3 {
		t.Fatalf("usage after etcd restart %+v %v", u, err)
	}
	if u, _ := mustTake(t, q, "tenant-b", 5, 2, nil); u.Used != 5 {
		t.Fatalf("usage %+v", u)
	}
	exceeded(t, second(take(t, q, "tenant-b", 5, 1, nil)))
	c.Close() // before etcd
}

// TestTwoGatewaysNeverOverAdmit: two Quotas on two clients (two gateway
// replicas) take for one tenant from many goroutines each: exactly the
// limit is admitted in total.
func TestTwoGatewaysNeverOverAdmit(t *testing.T) {
	const (
		limit      = 60
		goroutines = 12
	)
	prefix := testPrefix(t)
	clk := clock.NewFake(afternoon)
	gateways := []*Quota{
		NewQuota(newClient(t, shared.etcd.Endpoints()), prefix, clk),
		NewQuota(newClient(t, shared.etcd.Endpoints()), prefix, clk),
	}
	var (
		admitted atomic.Int64
		perGW    [2]atomic.Int64
		wg       sync.WaitGroup
		errs     = make(chan error, 2*goroutines)
	)
	for g, q := range gateways {
		for range goroutines {
			wg.Go(func() {
				for {
					_, _, err := take(t, q, "shared-tenant", limit, 1, nil)
					var qe *QuotaExceeded
					switch {
					case errors.As(err, &qe):
						return
					case err != nil:
						errs <- err
						return
					}
					admitted.Add(1)
					perGW[g].Add(1)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := admitted.Load(); got != limit {
		t.Fatalf("admitted %d in total, want exactly %d", got, limit)
	}
	if n := count(t, shared.client, gateways[0].Key("2026-03-10", "shared-tenant")); n != limit {
		t.Fatalf("etcd holds %d, want %d", n, limit)
	}
	if perGW[0].Load() == 0 || perGW[1].Load() == 0 {
		t.Logf("one gateway admitted everything (%d, %d): the race was one-sided", perGW[0].Load(), perGW[1].Load())
	}
}

func TestRefundGoesToTheTicketsDay(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 3, 10, 23, 59, 30, 0, time.UTC))
	q := NewQuota(shared.client, testPrefix(t), clk)
	_, late := mustTake(t, q, "night-owl", 2, 1, nil)
	mustTake(t, q, "night-owl", 2, 1, nil)
	clk.Advance(time.Minute) // 00:00:30, a new day
	u, _ := mustTake(t, q, "night-owl", 2, 1, nil)
	if u.Day != "2026-03-11" || u.Used != 1 {
		t.Fatalf("new day usage %+v", u)
	}
	if err := q.Refund(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	if y, d := count(t, shared.client, q.Key("2026-03-10", "night-owl")), count(t, shared.client, q.Key("2026-03-11", "night-owl")); y != 1 || d != 1 {
		t.Fatalf("after refund: yesterday %d, today %d; want 1 and 1", y, d)
	}
	// Never below zero.
	for range 3 {
		if err := q.Refund(context.Background(), late); err != nil {
			t.Fatal(err)
		}
	}
	if y := count(t, shared.client, q.Key("2026-03-10", "night-owl")); y != 0 {
		t.Fatalf("yesterday %d, want 0", y)
	}
	// A day without a count gets none.
	if err := q.Refund(context.Background(), tenant.Ticket{Tenant: "night-owl", Day: "2026-01-01", Units: 1}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, shared.client, q.Key("2026-01-01", "night-owl")); n != -1 {
		t.Fatalf("refund created a count: %d", n)
	}
}

func TestRefundLiftsARefusal(t *testing.T) {
	q := NewQuota(shared.client, testPrefix(t), clock.NewFake(afternoon))
	_, tk := mustTake(t, q, "t", 1, 1, nil)
	exceeded(t, second(take(t, q, "t", 1, 1, nil)))
	if err := q.Refund(context.Background(), tk); err != nil {
		t.Fatal(err)
	}
	if u, _ := mustTake(t, q, "t", 1, 1, nil); u.Used != 1 {
		t.Fatalf("after refund %+v", u)
	}
}

// TestRefundOnAnotherGatewayIsSeenWithinTheRecheck: a refund made on one
// replica lifts a refusal remembered by another after QuotaRecheck.
func TestRefundOnAnotherGatewayIsSeenWithinTheRecheck(t *testing.T) {
	prefix, clk := testPrefix(t), clock.NewFake(afternoon)
	a, b := NewQuota(shared.client, prefix, clk), NewQuota(newClient(t, shared.etcd.Endpoints()), prefix, clk)
	_, tk := mustTake(t, a, "t", 1, 1, nil)
	exceeded(t, second(take(t, b, "t", 1, 1, nil)))
	if err := a.Refund(context.Background(), tk); err != nil {
		t.Fatal(err)
	}
	exceeded(t, second(take(t, b, "t", 1, 1, nil))) // b still remembers
	clk.Advance(QuotaRecheck)
	mustTake(t, b, "t", 1, 1, nil)
}

func TestQuotaCostUnits(t *testing.T) {
	q := NewQuota(shared.client, testPrefix(t), clock.NewFake(afternoon))
	mustTake(t, q, "painter", 10, 4, nil)
	if u, tk := mustTake(t, q, "painter", 10, 4, nil); u.Used != 8 || tk.Units != 4 {
		t.Fatalf("usage %+v ticket %+v", u, tk)
	}
	if u := exceeded(t, second(take(t, q, "painter", 10, 4, nil))); u.Used != 8 || u.Remaining() != 2 {
		t.Fatalf("refusal %+v", u)
	}
	// What still fits is admitted, even right after a refusal.
	if u, _ := mustTake(t, q, "painter", 10, 2, nil); u.Used != 10 {
		t.Fatalf("usage %+v", u)
	}
	if _, _, err := take(t, q, "painter", 10, 0, nil); err == nil || errors.As(err, new(*QuotaExceeded)) {
		t.Fatalf("0 units: %v", err)
	}
}

func TestQuotaUnlimitedCounts(t *testing.T) {
	q := NewQuota(shared.client, testPrefix(t), clock.NewFake(afternoon))
	for range 5 {
		mustTake(t, q, "vip", tenant.Unlimited, 100, nil)
	}
	u, err := q.Usage(context.Background(), "vip", tenant.Unlimited, nil)
	if err != nil || u.Used != 500 || u.Remaining() != -1 {
		t.Fatalf("usage %+v %v", u, err)
	}
}

// TestQuotaDayInATimeZone: the day starts at midnight in the tiers' zone.
func TestQuotaDayInATimeZone(t *testing.T) {
	tokyo := time.FixedZone("JST", 9*3600)
	clk := clock.NewFake(time.Date(2026, 3, 10, 14, 30, 0, 0, time.UTC)) // 23:30 in Tokyo
	q := NewQuota(shared.client, testPrefix(t), clk)
	u, _ := mustTake(t, q, "tokyo", 1, 1, tokyo)
	if u.Day != "2026-03-10" || !u.Reset.Equal(time.Date(2026, 3, 10, 15, 0, 0, 0, time.UTC)) {
		t.Fatalf("usage %+v; want day 2026-03-10 resetting at 15:00 UTC", u)
	}
	if u := exceeded(t, second(take(t, q, "tokyo", 1, 1, tokyo))); !u.Reset.Equal(time.Date(2026, 3, 11, 0, 0, 0, 0, tokyo)) {
		t.Fatalf("reset %v", u.Reset)
	}
	clk.Advance(31 * time.Minute) // 00:01 in Tokyo, still the 10th in UTC
	if u, _ := mustTake(t, q, "tokyo", 1, 1, tokyo); u.Day != "2026-03-11" || u.Used != 1 {
		t.Fatalf("after Tokyo's midnight: %+v", u)
	}
	if n := count(t, shared.client, q.Key("2026-03-11", "tokyo")); n != 1 {
		t.Fatalf("Tokyo's new day holds %d, want 1", n)
	}
	// In UTC it is still the 10th: that day's count is spent.
	exceeded(t, second(take(t, q, "tokyo", 1, 1, nil)))
}

func TestQuotaCountersLiveUnderADayLease(t *testing.T) {
	q := NewQuota(shared.client, testPrefix(t), clock.NewFake(afternoon))
	mustTake(t, q, "2001:db8:1::/48", 5, 1, nil)
	mustTake(t, q, "2001:db8:1::/48", 5, 1, nil)
	mustTake(t, q, "tenant-c", 5, 1, nil)
	lease := func(tn string) clientv3.LeaseID {
		key := q.Key("2026-03-10", tn)
		if strings.Count(strings.TrimPrefix(key, q.prefix+"/quota/"), "/") != 1 {
			t.Fatalf("key %s: the tenant is not escaped", key)
		}
		resp, err := shared.client.Get(context.Background(), key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v", key, err)
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	l1, l2 := lease("2001:db8:1::/48"), lease("tenant-c")
	if l1 == 0 || l1 != l2 {
		t.Fatalf("counters under leases %x and %x; want one lease for the day", l1, l2)
	}
	ttl, err := shared.client.TimeToLive(context.Background(), l1)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != int64(QuotaLeaseTTL/time.Second) {
		t.Fatalf("lease granted for %ds, want %s", ttl.GrantedTTL, QuotaLeaseTTL)
	}
	// A lease that vanished (revoked by hand) is granted again.
	if _, err := shared.client.Revoke(context.Background(), l1); err != nil {
		t.Fatal(err)
	}
	if u, _ := mustTake(t, q, "tenant-d", 5, 1, nil); u.Used != 1 || lease("tenant-d") == l1 || lease("tenant-d") == 0 {
		t.Fatalf("after revoke: %+v lease %x", u, lease("tenant-d"))
	}
}

// TestUsageMayLagOtherGatewaysByItsTTL documents Usage's exactness.
func TestUsageMayLagOtherGatewaysByItsTTL(t *testing.T) {
	prefix, clk := testPrefix(t), clock.NewFake(afternoon)
	a, b := NewQuota(shared.client, prefix, clk), NewQuota(shared.client, prefix, clk)
	mustTake(t, a, "t", 10, 1, nil)
	if u, _ := b.Usage(context.Background(), "t", 10, nil); u.Used != 1 {
		t.Fatalf("b sees %d", u.Used)
	}
	mustTake(t, a, "t", 10, 1, nil)
	if u, _ := b.Usage(context.Background(), "t", 10, nil); u.Used != 1 {
		t.Fatalf("within the TTL b answers from memory: %d, want 1", u.Used)
	}
	if u, _ := a.Usage(context.Background(), "t", 10, nil); u.Used != 2 {
		t.Fatalf("a knows its own takes: %d", u.Used)
	}
	clk.Advance(QuotaUsageTTL)
	if u, _ := b.Usage(context.Background(), "t", 10, nil); u.Used != 2 {
		t.Fatalf("after the TTL b reads etcd: %d, want 2", u.Used)
	}
}

func BenchmarkQuotaTake(b *testing.B) {
	q := NewQuota(shared.client, testPrefix(b), clock.NewFake(afternoon))
	ctx := context.Background()
	for b.Loop() {
		if _, _, err := q.Take(ctx, "bench", tenant.Unlimited, 1, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQuotaTakeRefused(b *testing.B) {
	q := NewQuota(shared.client, testPrefix(b), clock.NewFake(afternoon))
	ctx := context.Background()
	q.Take(ctx, "flood", 1, 1, nil)
	for b.Loop() {
		if _, _, err := q.Take(ctx, "flood", 1, 1, nil); err == nil {
			b.Fatal("admitted")
		}
	}
}

// BenchmarkQuotaTakeParallel: many tenants at once; etcd batches their
// writes, so throughput is well above 1/latency.
func BenchmarkQuotaTakeParallel(b *testing.B) {
	q := NewQuota(shared.client, testPrefix(b), clock.NewFake(afternoon))
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		tn := fmt.Sprintf("tenant-%d", n.Add(1))
		for pb.Next() {
			if _, _, err := q.Take(ctx, tn, tenant.Unlimited, 1, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
