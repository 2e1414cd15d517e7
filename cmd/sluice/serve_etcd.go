package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/farm"
	"github.com/sluicehq/sluice/adapters/httpapi"
	sluiceprom "github.com/sluicehq/sluice/adapters/prometheus"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/rules"
)

// ruleSource is etcd feeding the engine: an embedded server or a cluster,
// the store and the running watcher.
type ruleSource struct {
	embedded *etcd.Embedded
	store    *etcd.Store
	watcher  *etcd.Watcher
	alarms   *etcd.AlarmMonitor
	desc     string
	stop     context.CancelFunc
	done     chan struct{}
}

// startRules connects to etcd (starting the embedded one when no endpoints
// are given), seeds it with seed when it holds no rules, and starts the
// watcher that keeps eng in step. It waits up to readyWait for the first
// listing; past that the gateway serves with the rules it has and /readyz
// says not ready until etcd answers.
func startRules(ctx context.Context, f *serveFlags, seed *rules.Set, seedSource string, eng *engine.Engine, log *slog.Logger) (*ruleSource, error) {
	rs := &ruleSource{done: make(chan struct{})}
	cc := f.etcd.clientConfig()
	if f.etcd.endpoints == "" {
		dir := filepath.Join(f.dataDir, "etcd")
		e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: dir, ClientURL: f.etcdListen, Logger: log, ProgressNotifyInterval: f.watchProgress})
		if err != nil {
			return nil, fmt.Errorf("%w (another sluice or etcd on %s? use --etcd-listen or --etcd-endpoints)", err, f.etcdListen)
		}
		rs.embedded = e
		cc = etcd.ClientConfig{Endpoints: e.Endpoints()}
		log.Info("embedded etcd started", slog.String("endpoints", strings.Join(e.Endpoints(), ",")), slog.String("data_dir", dir))
	}
	client, err := etcd.NewClient(cc)
	if err != nil {
		rs.closeEmbedded()
		return nil, err
	}
	rs.store = etcd.NewStore(client, f.etcd.prefix)
	rs.desc = fmt.Sprintf("etcd %s %s", strings.Join(cc.Endpoints, ","), rs.store.Prefix())

	sctx, cancel := context.WithTimeout(ctx, f.etcd.commandTimeout)
	seeded, err := rs.store.Seed(sctx, seed)
	cancel()
	switch {
	case err != nil:
		log.Warn("could not check etcd for rules; serving with the local rules until it answers", slog.Any("error", err))
	case seeded:
		log.Info("etcd held no rules: seeded", slog.String("from", seedSource), slog.String("prefix", rs.store.Prefix()))
	default:
		log.Info("rules come from etcd; --rules was not needed", slog.String("prefix", rs.store.Prefix()))
	}

	rs.watcher = etcd.NewWatcher(etcd.WatcherConfig{Store: rs.store, Engine: eng, Logger: log, ProgressInterval: f.watchProgress})
	rs.alarms = etcd.NewAlarmMonitor(client, 0, f.etcd.commandTimeout, nil, log)
	wctx, stop := context.WithCancel(context.Background())
	rs.stop = stop
	alarmsDone := make(chan struct{})
	go func() {
		defer close(alarmsDone)
		rs.alarms.Run(wctx)
	}()
	go func() {
		defer close(rs.done)
		defer func() { <-alarmsDone }()
		rs.watcher.Run(wctx)
	}()
	select {
	case <-rs.watcher.Ready():
	case <-time.After(f.readyWait):
		log.Warn("no rules from etcd yet; serving with the local rules", slog.Duration("waited", f.readyWait))
	case <-ctx.Done():
	}
	return rs, nil
}

// Close stops the watcher, then the client, then the embedded etcd.
func (rs *ruleSource) Close() {
	rs.stop()
	<-rs.done
	rs.store.Client().Close()
	rs.closeEmbedded()
}

func (rs *ruleSource) closeEmbedded() {
	if rs.embedded != nil {
		rs.embedded.Close()
	}
}

// ready says whether the gateway may take traffic: the rules have come
// from etcd, the watcher has heard from etcd within its silence window (a
// half-open connection or an etcd gone leaves the rules in force as they
// were, maybe stale: they are still enforced, but the gateway is not
// ready), and etcd is not out of space.
func (rs *ruleSource) ready() bool {
	select {
	case <-rs.watcher.Ready():
	default:
		return false
	}
	live, _ := rs.watcher.Live()
	return live && !rs.alarms.NoSpace()
}

func (rs *ruleSource) status() dashboardapi.RulesStatus {
	st := rs.watcher.Status()
	out := dashboardapi.RulesStatus{Revision: st.AppliedRevision, AppliedAt: st.AppliedAt}
	if r := st.LastRejection; r != nil {
		out.LastRejection = &dashboardapi.Rejection{Key: r.Key, Revision: r.Revision, Errors: r.Errors, At: r.At}
	}
	return out
}

// rulesInfo is what the metrics say of the rules: the revision in force,
// the updates refused, and whether the watch still hears etcd.
func (rs *ruleSource) rulesInfo() sluiceprom.RulesInfo {
	st := rs.watcher.Status()
	live, _ := rs.watcher.Live()
	return sluiceprom.RulesInfo{Revision: st.AppliedRevision, Rejections: st.Rejections, Live: live, HeardAt: st.HeardAt}
}

// ruleWriter writes through the store and waits, briefly, until the watcher
// has applied (or rejected) the write, so that an API client that gets 200
// sees the rule enforced.
type ruleWriter struct{ rs *ruleSource }

func (w ruleWriter) Put(ctx context.Context, resource string, doc []byte) (int64, error) {
	rev, err := w.rs.store.Put(ctx, resource, doc)
	return w.settle(ctx, rev, err)
}

func (w ruleWriter) Delete(ctx context.Context, resource string) (int64, error) {
	rev, err := w.rs.store.Delete(ctx, resource)
	if errors.Is(err, etcd.ErrNotFound) {
		return 0, fmt.Errorf("%w: %w", dashboardapi.ErrNotFound, err)
	}
	return w.settle(ctx, rev, err)
}

func (w ruleWriter) settle(ctx context.Context, rev int64, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	w.rs.watcher.WaitRevision(wctx, rev) // best effort: the write is in etcd either way
	return rev, nil
}

// startJobs makes the async jobs' manager: records in etcd beside the
// rules, results and the journal of unfinished jobs (their inputs) in
// --results-dir. The restore function it returns, called once the HTTP API
// exists and before it serves, takes up the jobs of the gateway before
// this one: those that were submitted to or running on a backend still
// configured are followed there to their end, each within --job-timeout,
// holding, from before restore returns until they end, a slot on that
// backend and an admission token as any job does, in their tier's class
// (see farm.Farm.Claim);
// those that were still waiting for a slot are queued again from their
// journaled input by resume. etcd not answering is logged, not fatal: the
// gateway serves, accepts async jobs into the journal, and writes their
// records when etcd is back.
func startJobs(ctx context.Context, f *serveFlags, rs *ruleSource, clients []*comfyui.Client, eng *engine.Engine, backends *farm.Farm, tiers httpapi.TierSource, refund func(jobs.Job), log *slog.Logger) (*jobs.Manager, func(resume jobs.ResumeFunc), error) {
	results, err := jobs.NewDirResults(f.resultsDir)
	if err != nil {
		return nil, nil, fmt.Errorf("--results-dir: %w", err)
	}
	notify, err := webhookNotifier(f.webhookSecret, f.webhookAllowPrivate, log)
	if err != nil {
		return nil, nil, err
	}
	m := jobs.New(jobs.Config{
		Store:    etcd.NewJobStore(rs.store.Client(), rs.store.Prefix(), f.etcd.commandTimeout).WithRetention(f.jobRetention),
		Results:  results,
		Journal:  results,
		Logger:   log,
		OnFinish: notify,
		Refund:   refund,
	})
	byURL := make(map[string]*comfyui.Client, len(clients))
	for _, c := range clients {
		byURL[c.BaseURL()] = c
	}
	follow := func(ctx context.Context, j jobs.Job) (jobs.Result, error) {
		jl := log.With(slog.String("job", j.ID), slog.String("backend", j.Backend), slog.String("prompt_id", j.PromptID))
		c, ok := byURL[j.Backend]
		if !ok {
			jl.Warn("async job not followed: its backend is no longer configured")
			// Run again elsewhere from its kept input when there is one.
			return jobs.Result{}, fmt.Errorf("lost at restart: its backend is no longer configured: %w", jobs.ErrRerun)
		}
		ctx, cancel := context.WithTimeout(ctx, f.jobTimeout)
		defer cancel()
		res, err := c.Recover(ctx, j.PromptID)
		if errors.Is(err, comfyui.ErrPromptLost) {
			// The backend lost its queue (it restarted; the built-in
			// simulator always does): run the job again from its kept input.
			jl.Warn("async job gone from its backend after the restart")
			return jobs.Result{}, fmt.Errorf("lost at restart: %w: %w", jobs.ErrRerun, err)
		}
		if err != nil {
			return jobs.Result{}, httpapi.JobFailed(ctx, jl, j.Resource, err, f.jobTimeout)
		}
		jl.Info("async job recovered after restart")
		return jobs.Result{PromptID: res.PromptID, Data: res.Image, ContentType: res.ContentType}, nil
	}
	restore := func(resume jobs.ResumeFunc) {
		if err := m.Restore(ctx, follow, backends.Claim(eng, tiers), resume); err != nil {
			log.Error("async jobs of the last run not restored", slog.Any("error", err))
		}
	}
	return m, restore, nil
}
