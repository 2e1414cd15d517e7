package prometheus

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// namespace prefixes every metric of sluice's own.
const namespace = "sluice"

// jobBuckets suit GPU jobs of a fraction of a second to two minutes, in
// seconds.
var jobBuckets = []float64{.1, .25, .5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120}

// The outcomes of a job.
const (
	outcomeSuccess = "success"
	outcomeFailure = "failure"
)

// RulesInfo is the state of the rules as their source knows it.
type RulesInfo struct {
	// Revision is the etcd revision of the rules in force.
	Revision int64
	// Rejections counts the rule updates refused since start.
	Rejections uint64
	// Live says the rule watch hears etcd (it has answered within the
	// watch's window): false, the rules in force may be stale.
	Live bool
	// HeardAt is when etcd last answered the rule watch; zero: never.
	HeardAt time.Time
}

// Config configures an Exporter.
type Config struct {
	// Engine is read at every scrape; nil exports no engine metrics.
	Engine *engine.Engine
	// Rules reports the rules' revision and rejected updates at every
	// scrape; it must be safe for concurrent use. Nil exports neither.
	Rules func() RulesInfo
	// Backends reports the GPU farm at every scrape: each backend's health
	// and slots, the jobs waiting, the average job time. Nil exports none.
	Backends func() dispatch.Stats
	// Logger receives the errors met while serving a scrape; they are
	// discarded when nil (promhttp_metric_handler_errors_total counts them
	// either way).
	Logger *slog.Logger
}

// Exporter holds sluice's metrics on a private registry. It is safe for
// concurrent use.
type Exporter struct {
	reg           *prom.Registry
	handler       http.Handler
	jobDuration   *prom.HistogramVec
	queueWait     *prom.HistogramVec
	quotaRefusals *prom.CounterVec
	authFailures  *prom.CounterVec
	clients       *clientCounter

	// tiersMu guards tiers: the tiers counted apart in quotaRefusals.
	tiersMu sync.Mutex
	tiers   map[string]bool
}

// maxTiers bounds the tiers quota refusals are counted apart by, as the
// engine bounds its own; beyond them a tier counts as engine.OtherTier.
const maxTiers = 32

var (
	_ httpapi.JobObserver     = (*Exporter)(nil)
	_ httpapi.RefusalObserver = (*Exporter)(nil)
	_ httpapi.ClientObserver  = (*Exporter)(nil)
)

// New builds an exporter and its registry.
func New(cfg Config) *Exporter {
	e := &Exporter{
		reg: prom.NewRegistry(),
		jobDuration: prom.NewHistogramVec(prom.HistogramOpts{
			Namespace: namespace,
			Name:      "job_duration_seconds",
			Help:      "Time the jobs ran on ComfyUI, after their wait in its queue; a failed job's whole time.",
			Buckets:   jobBuckets,
		}, []string{"resource", "outcome"}),
		queueWait: prom.NewHistogramVec(prom.HistogramOpts{
			Namespace: namespace,
			Name:      "job_queue_wait_seconds",
			Help:      "Time the jobs that succeeded waited in ComfyUI's queue before they ran.",
			Buckets:   jobBuckets,
		}, []string{"resource"}),
		quotaRefusals: prom.NewCounterVec(prom.CounterOpts{
			Namespace: namespace,
			Name:      "quota_refusals_total",
			Help:      "Calls refused (429) because their tier's daily quota was spent, by the caller's tier; the engine had admitted them (sluice_requests_total counts them admitted).",
		}, []string{"resource", "tier"}),
		authFailures: prom.NewCounterVec(prom.CounterOpts{
			Namespace: namespace,
			Name:      "auth_failures_total",
			Help:      "Requests whose credential was refused (401), by the kind of credential sent: api_key, jwt or malformed.",
		}, []string{"credential"}),
		tiers:   map[string]bool{tenant.AnonymousTier: true},
		clients: newClientCounter(),
	}
	// Every resource's series exist from the start, so rates over them
	// begin at zero rather than at the first job.
	for _, r := range rules.Resources {
		e.jobDuration.WithLabelValues(r, outcomeSuccess)
		e.jobDuration.WithLabelValues(r, outcomeFailure)
		e.queueWait.WithLabelValues(r)
		e.quotaRefusals.WithLabelValues(r, tenant.AnonymousTier)
	}
	for _, k := range []string{httpapi.CredentialAPIKey, httpapi.CredentialJWT, httpapi.CredentialMalformed} {
		e.authFailures.WithLabelValues(k)
	}
	e.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		e.jobDuration,
		e.queueWait,
		e.quotaRefusals,
		e.authFailures,
		e.clients.newTotal,
		e.clients.recent,
	)
	if cfg.Backends != nil {
		e.reg.MustRegister(newFarmCollector(cfg.Backends))
	}
	if cfg.Engine != nil || cfg.Rules != nil {
		e.reg.MustRegister(newEngineCollector(cfg.Engine, cfg.Rules))
	}
	opts := promhttp.HandlerOpts{
		Registry: e.reg,
		// A metric that cannot be collected (a GPU label that is not
		// UTF-8) costs its own series, not the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
	}
	if cfg.Logger != nil {
		opts.ErrorLog = errorLog{cfg.Logger}
	}
	e.handler = promhttp.InstrumentMetricHandler(e.reg, promhttp.HandlerFor(e.reg, opts))
	return e
}

// Handler serves the metrics in the Prometheus exposition formats.
func (e *Exporter) Handler() http.Handler { return e.handler }

// ObserveJob records a job that ran on ComfyUI: its run time under its
// outcome (failure when err is not nil) and, when it succeeded, its wait in
// ComfyUI's queue. A failed job's split is unknown: run is its whole time.
func (e *Exporter) ObserveJob(resource string, queueWait, run time.Duration, err error) {
	outcome := outcomeSuccess
	if err != nil {
		outcome = outcomeFailure
	}
	e.jobDuration.WithLabelValues(resource, outcome).Observe(seconds(run))
	if err == nil {
		e.queueWait.WithLabelValues(resource).Observe(seconds(queueWait))
	}
}

// ObserveQuotaRefusal counts a call refused because its tier's daily quota
// was spent, under its resource and tier (never its tenant: tenants are
// unbounded). Beyond 32 tiers seen, the others count as "other".
func (e *Exporter) ObserveQuotaRefusal(resource, tier string) {
	if tier == "" {
		tier = tenant.AnonymousTier
	}
	e.quotaRefusals.WithLabelValues(resource, e.boundedTier(tier)).Inc()
}

// boundedTier is tier, or engine.OtherTier once maxTiers others were seen.
func (e *Exporter) boundedTier(tier string) string {
	e.tiersMu.Lock()
	defer e.tiersMu.Unlock()
	if e.tiers[tier] {
		return tier
	}
	if len(e.tiers) >= maxTiers {
		return engine.OtherTier
	}
	e.tiers[tier] = true
	return tier
}

// ObserveAuthFailure counts a refused credential under its kind
// (httpapi.CredentialAPIKey, CredentialJWT or CredentialMalformed; any
// other counts as malformed, so the label set stays bounded).
func (e *Exporter) ObserveAuthFailure(credential string) {
	switch credential {
	case httpapi.CredentialAPIKey, httpapi.CredentialJWT:
	default:
		credential = httpapi.CredentialMalformed
	}
	e.authFailures.WithLabelValues(credential).Inc()
}

// ObserveClient counts origin (a client's IPv4 address or IPv6 prefix)
// in sluice_client_origins_new_total when it is not among the last 65536
// origins seen. The origin itself is never exported.
func (e *Exporter) ObserveClient(origin string) { e.clients.observe(origin) }

// seconds converts d, negative ones (clocks that disagree) counting as 0.
func seconds(d time.Duration) float64 { return max(d, 0).Seconds() }

// errorLog is promhttp's logger over slog.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Println(v ...any) {
	l.log.Warn("serving metrics", slog.String("error", fmt.Sprint(v...)))
}
