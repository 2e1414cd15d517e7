package prometheus_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/prometheus"
	"github.com/sluicehq/sluice/rules"
)

// TestQuotaRefusalsAndAuthFailures: daily quota refusals are counted by
// resource and tier, refused credentials by their kind; every resource's
// anonymous series and every kind's exist from the start, and no label
// holds a tenant.
func TestQuotaRefusalsAndAuthFailures(t *testing.T) {
	exp := prometheus.New(prometheus.Config{})
	exp.ObserveQuotaRefusal("zimage_generate", "registered")
	exp.ObserveQuotaRefusal("zimage_generate", "registered")
	exp.ObserveQuotaRefusal("ddcolor_person", "")
	exp.ObserveAuthFailure(httpapi.CredentialJWT)
	exp.ObserveAuthFailure(httpapi.CredentialAPIKey)
	exp.ObserveAuthFailure("sk_ab12_c2VjcmV0") // not a kind: counted as malformed, never as a label

	var b strings.Builder
	b.WriteString("# HELP sluice_quota_refusals_total Calls refused (429) because their tier's daily quota was spent, by the caller's tier; the engine had admitted them (sluice_requests_total counts them admitted).\n")
	b.WriteString("# TYPE sluice_quota_refusals_total counter\n")
	want := map[string]int{"ddcolor_person": 1}
	for _, r := range rules.Resources {
		fmt.Fprintf(&b, "sluice_quota_refusals_total{resource=%q,tier=\"anonymous\"} %d\n", r, want[r])
	}
	b.WriteString("sluice_quota_refusals_total{resource=\"zimage_generate\",tier=\"registered\"} 2\n")
	b.WriteString("# HELP sluice_auth_failures_total Requests whose credential was refused (401), by the kind of credential sent: api_key, jwt or malformed.\n")
	b.WriteString("# TYPE sluice_auth_failures_total counter\n")
	b.WriteString("sluice_auth_failures_total{credential=\"api_key\"} 1\n")
	b.WriteString("sluice_auth_failures_total{credential=\"jwt\"} 1\n")
	b.WriteString("sluice_auth_failures_total{credential=\"malformed\"} 1\n")
	if err := testutil.GatherAndCompare(exp.Registry(), strings.NewReader(b.String()), "sluice_quota_refusals_total", "sluice_auth_failures_total"); err != nil {
		t.Error(err)
	}
}

// TestQuotaRefusalTiersAreBounded: tier names beyond the first 32 seen
// count as "other", so a flood of made-up tiers cannot grow the series.
func TestQuotaRefusalTiersAreBounded(t *testing.T) {
	exp := prometheus.New(prometheus.Config{})
	for i := range 40 {
		exp.ObserveQuotaRefusal("zimage_generate", fmt.Sprintf("tier-%02d", i))
	}
	n, err := testutil.GatherAndCount(exp.Registry(), "sluice_quota_refusals_total")
	if err != nil {
		t.Fatal(err)
	}
	// The anonymous series of every resource, 31 more tiers, and other.
	if want := len(rules.Resources) + 31 + 1; n != want {
		t.Errorf("%d series, want %d", n, want)
	}
	if got := value(t, exp.Registry(), "sluice_quota_refusals_total", "resource", "zimage_generate", "tier", "other"); got != 9 {
		t.Errorf("other: %v, want 9", got)
	}
}
