// Package prometheus exports sluice's metrics in the Prometheus text
// format, on a registry of its own: nothing is registered globally.
//
// What the engine already counts is read when Prometheus scrapes, so
// admission pays nothing for it:
//
//	sluice_requests_total{resource, outcome="admitted"|"refused", rule_kind, tier}
//	sluice_jobs_in_flight{resource}
//	sluice_gpu_memory_used_bytes{gpu, source, backend}
//	sluice_gpu_memory_total_bytes{gpu, source, backend}
//	sluice_gpu_utilization_ratio{gpu, source, backend}   (only where the source reports it)
//	sluice_gpu_pressure{gpu, source, backend}            1 while the GPU is under pressure
//	sluice_gpu_pressure_active                           1 while the (enforcing) GPU rule acts
//	sluice_gpu_tighten_factor                            the factor flow thresholds are scaled by
//	sluice_gpu_shadow_pressure_active                    1 while a shadow GPU rule would act
//	sluice_gpu_source_up{source}                         0 while a GPU source cannot be read
//	sluice_cpu_usage_ratio
//	sluice_load1                                         (from the first load sample on)
//	sluice_rules_revision, sluice_rule_updates_rejected_total   (with Config.Rules)
//
// Jobs that ran on ComfyUI are observed as they end, through ObserveJob
// (the Exporter is an httpapi.JobObserver):
//
//	sluice_job_duration_seconds{resource, outcome="success"|"failure"}
//	sluice_job_queue_wait_seconds{resource}
//
// The refusals the HTTP side makes itself are counted as they happen,
// through ObserveQuotaRefusal and ObserveAuthFailure (the Exporter is an
// httpapi.RefusalObserver), by tier and never by tenant:
//
//	sluice_quota_refusals_total{resource, tier}          429s of a spent daily quota
//	sluice_auth_failures_total{credential="api_key"|"jwt"|"malformed"}   401s
//
// The Go runtime's and the process's standard metrics (go_*, process_*)
// and the scrape handler's own (promhttp_*) come with them.
//
// Use:
//
//	exp := prometheus.New(prometheus.Config{Engine: eng, Rules: rulesInfo})
//	mux.Handle("GET /metrics", exp.Handler())
//	api, err := httpapi.New(httpapi.Config{Engine: eng, Runner: runner, Jobs: exp, Refusals: exp})
//
// grafana/sluice-dashboard.json is a Grafana dashboard for these metrics;
// it takes its Prometheus data source from the variable DS_PROMETHEUS.
package prometheus
