package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/identity"
	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// abuseTiersIPs is the anonymous abuser's IPs in the tiers scenario.
const abuseTiersIPs = 20

// abuseEtcd is the embedded etcd of BenchmarkAbuse's tiers scenario, one
// for the whole benchmark; each run works under a fresh prefix.
type abuseEtcd struct {
	dir    string
	server *etcd.Embedded
	client *clientv3.Client
	runs   atomic.Int64
}

// startAbuseEtcd starts an embedded etcd with its data in a new temporary
// folder (close removes it), on a free loopback port. (A sub-benchmark's
// TempDir would go at the end of its first run.)
func startAbuseEtcd() (*abuseEtcd, error) {
	dir, err := os.MkdirTemp("", "sluice-abuse-bench-")
	if err != nil {
		return nil, fmt.Errorf("abuse bench: %w", err)
	}
	e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("abuse bench: %w", err)
	}
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		e.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("abuse bench: %w", err)
	}
	return &abuseEtcd{dir: dir, server: e, client: c}, nil
}

// revision is etcd's current revision.
func (s *abuseEtcd) revision(ctx context.Context) (int64, error) {
	resp, err := s.client.Get(ctx, "/sluice-abuse-bench/revision", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("abuse bench: reading etcd's revision: %w", err)
	}
	return resp.Header.Revision, nil
}

func (s *abuseEtcd) close() {
	s.client.Close()
	s.server.Close()
	os.RemoveAll(s.dir)
}

// abuseTenancy is one tiers run's identity, quota and tiers: a running
// key resolver, the daily quota counters and the tiers in force, all under
// the run's own etcd prefix.
type abuseTenancy struct {
	prefix   string
	tiers    *rules.Tiers
	keys     []string // the registered clients' API keys
	tenants  []string // their tenants
	resolver *identity.Resolver
	quota    *etcd.Quota
	client   *abuseEtcd
	// bound is the most jobs one anonymous tenant can be charged in the
	// modelled window; raised says the anonymous quota was raised above
	// it (from the built-in quota).
	bound  int64
	raised int64
	// rev is etcd's revision once the keys are written: the quota's writes
	// during the run come after it.
	rev  int64
	stop context.CancelFunc
	done chan struct{}
}

// Tiers gives the tiers in force: it is the server's httpapi.TierSource.
func (t *abuseTenancy) Tiers() *rules.Tiers { return t.tiers }

// tenancy sets up a tiers run under a fresh prefix: the built-in tiers
// (anonymous quota raised if the abuser's IPs could spend it in the
// window), registered API keys for the well-behaved clients, and a key
// resolver that has listed them.
func (s *abuseEtcd) tenancy(sc abuseScale, abuserIPs, registered int, log *slog.Logger) (*abuseTenancy, error) {
	t := &abuseTenancy{
		prefix: fmt.Sprintf("/sluice-abuse-bench/%d-%d", time.Now().UnixNano(), s.runs.Add(1)),
		bound:  anonymousQuotaBound(sc, abuserIPs),
		done:   make(chan struct{}),
	}
	t.tiers, t.raised = abuseTiers(t.bound)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range registered {
		spec := identity.KeySpec{Tenant: fmt.Sprintf("bench-reg-%d", i+1), Tier: "registered", Name: "abuse bench"}
		key, rec, err := identity.CreateKey(ctx, s.client, t.prefix, spec, nil)
		if err != nil {
			return nil, fmt.Errorf("abuse bench: %w", err)
		}
		t.keys, t.tenants = append(t.keys, key), append(t.tenants, rec.Tenant)
	}
	r, err := identity.New(identity.Config{Client: s.client, Prefix: t.prefix, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("abuse bench: %w", err)
	}
	t.resolver = r
	if t.rev, err = s.revision(ctx); err != nil {
		return nil, err
	}
	t.client = s
	t.quota = etcd.NewQuota(s.client, t.prefix, nil)
	rctx, stop := context.WithCancel(context.Background())
	t.stop = stop
	go func() {
		defer close(t.done)
		r.Run(rctx)
	}()
	select {
	case <-r.Ready():
	case <-ctx.Done():
		t.close()
		return nil, errors.New("abuse bench: the key resolver did not list the keys within 30s")
	}
	return t, nil
}

func (t *abuseTenancy) close() {
	t.stop()
	<-t.done
}

// fixedTiers is a TierSource of fixed tiers.
type fixedTiers struct{ ts *rules.Tiers }

func (f fixedTiers) Tiers() *rules.Tiers { return f.ts }

// tiersWithAnonymousInFlight is the built-in tiers with the anonymous
// tier's in_flight set to n.
func tiersWithAnonymousInFlight(n int) (*rules.Tiers, error) {
	ts := rules.DefaultTiers()
	ts.Tiers = slices.Clone(ts.Tiers)
	for i := range ts.Tiers {
		if ts.Tiers[i].Name == tenant.AnonymousTier {
			ts.Tiers[i].InFlight = n
			return ts, nil
		}
	}
	return nil, errors.New("abuse bench: the built-in tiers have no anonymous tier")
}

// anonymousQuotaBound is the most jobs one of the abuser's IPs (an
// anonymous tenant, one job in flight) can be charged in the modelled
// window: a share of every job the farm can run in it (as if the abuser
// had the farm alone), and a job per deadline for those its client gave up
// on while they waited (kept, not refunded). Refused jobs are refunded.
// Quotas count jobs, which the scale leaves alone: the real run charges
// what the modelled window would.
func anonymousQuotaBound(sc abuseScale, abuserIPs int) int64 {
	window := time.Duration(float64(sc.window) * sc.factor) // modelled
	ran := window.Seconds() * float64(sc.backends) / abuseJobTime.Seconds() / float64(abuserIPs)
	gaveUp := window.Seconds() / abuseDeadline.Seconds()
	return int64(math.Ceil(ran) + math.Ceil(gaveUp))
}

// abuseTiers returns the built-in tiers, with the anonymous daily quota
// raised to twice bound (raised: the new quota) when bound reaches it, so
// that the bench measures the queue rather than the quota.
func abuseTiers(bound int64) (ts *rules.Tiers, raised int64) {
	ts = rules.DefaultTiers()
	anon, ok := ts.Tier(tenant.AnonymousTier)
	if !ok || anon.DailyQuota == tenant.Unlimited || bound < anon.DailyQuota {
		return ts, 0
	}
	ts.Tiers = slices.Clone(ts.Tiers)
	for i := range ts.Tiers {
		if ts.Tiers[i].Name == tenant.AnonymousTier {
			ts.Tiers[i].DailyQuota = 2 * bound
		}
	}
	return ts, 2 * bound
}

// report tells the tiers in force and the daily quotas used: the most any
// abuser IP used against the bound, each registered tenant's, and the
// writes to etcd during the run (the quota's charges and refunds) per
// request sent (attempts).
func (t *abuseTenancy) report(abuserIPs, attempts int) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, err := t.client.revision(ctx)
	if err != nil {
		return nil, err
	}
	loc := t.tiers.Location
	if loc == nil {
		loc = time.UTC
	}
	var lines []string
	for _, tr := range t.tiers.Tiers {
		q := "unlimited"
		if tr.DailyQuota != tenant.Unlimited {
			q = fmt.Sprint(tr.DailyQuota)
		}
		lines = append(lines, fmt.Sprintf("tier %s: priority %s, in flight %d, daily quota %s", tr.Name, tr.Priority, tr.InFlight, q))
	}
	anon, _ := t.tiers.Tier(tenant.AnonymousTier)
	if t.raised > 0 {
		lines = append(lines, fmt.Sprintf("NOTE: an abuser IP could be charged up to %d jobs in the modelled window, not below the built-in anonymous quota; the quota was raised to %d for this run", t.bound, t.raised))
	}
	var most int64
	var mostIP string
	for n := range abuserIPs {
		ip := fmt.Sprintf("203.0.113.%d", n+1)
		u, err := t.quota.Usage(ctx, ip, anon.DailyQuota, loc)
		if err != nil {
			return lines, fmt.Errorf("abuse bench: quota of %s: %w", ip, err)
		}
		if u.Used > most || mostIP == "" {
			most, mostIP = u.Used, ip
		}
	}
	limits := "does not limit the abuser"
	if most >= anon.DailyQuota {
		limits = "LIMITED THE ABUSER"
	}
	lines = append(lines, fmt.Sprintf("anonymous daily quota %d: most used by an abuser IP %d (%s), bound for the modelled window %d: the quota %s",
		anon.DailyQuota, most, mostIP, t.bound, limits))
	reg, _ := t.tiers.Tier("registered")
	var used []string
	for _, name := range t.tenants {
		u, err := t.quota.Usage(ctx, name, reg.DailyQuota, loc)
		if err != nil {
			return lines, fmt.Errorf("abuse bench: quota of %s: %w", name, err)
		}
		used = append(used, fmt.Sprintf("%s %d", name, u.Used))
	}
	lines = append(lines, fmt.Sprintf("registered daily quota %d used: %s", reg.DailyQuota, strings.Join(used, ", ")))
	lines = append(lines, fmt.Sprintf("etcd writes during the run (quota charges and refunds): %d, %.2f per request sent (%d)",
		rev-t.rev, float64(rev-t.rev)/float64(max(attempts, 1)), attempts))
	return lines, nil
}

func TestAnonymousQuotaBound(t *testing.T) {
	// 200 s modelled on 2 backends of 2 s jobs: 200 jobs, 10 per IP of 20,
	// and 7 deadlines of 30 s.
	sc := abuseScale{factor: 10, window: 20 * time.Second, backends: 2}
	if got := anonymousQuotaBound(sc, 20); got != 17 {
		t.Errorf("bound = %d, want 17", got)
	}
	// The built-in quota (50) stands below it...
	ts, raised := abuseTiers(17)
	if anon, _ := ts.Tier(tenant.AnonymousTier); raised != 0 || anon.DailyQuota != 50 {
		t.Errorf("bound 17: anonymous quota %d (raised %d), want the built-in 50", anon.DailyQuota, raised)
	}
	// ...and is raised to twice a bound that reaches it, the other tiers
	// and the built-in document untouched.
	ts, raised = abuseTiers(50)
	anon, _ := ts.Tier(tenant.AnonymousTier)
	reg, _ := ts.Tier("registered")
	if raised != 100 || anon.DailyQuota != 100 || reg.DailyQuota != 200 {
		t.Errorf("bound 50: anonymous %d (raised %d), registered %d; want 100, 100, 200", anon.DailyQuota, raised, reg.DailyQuota)
	}
	if builtIn, _ := rules.DefaultTiers().Tier(tenant.AnonymousTier); builtIn.DailyQuota != 50 {
		t.Errorf("built-in anonymous quota changed to %d", builtIn.DailyQuota)
	}
	in, err := tiersWithAnonymousInFlight(3)
	if err != nil {
		t.Fatal(err)
	}
	if anon, _ := in.Tier(tenant.AnonymousTier); anon.InFlight != 3 {
		t.Errorf("anonymous in_flight %d, want 3", anon.InFlight)
	}
}
