package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/spf13/cobra"
	flag "github.com/spf13/pflag"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/console"
	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/farm"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
	"github.com/sluicehq/sluice/adapters/identity"
	"github.com/sluicehq/sluice/adapters/openapi"
	sluiceprom "github.com/sluicehq/sluice/adapters/prometheus"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/engine/plan"
	"github.com/sluicehq/sluice/rules"
)

type serveFlags struct {
	listen         string
	rulesPath      string
	comfyui        stringList
	trustedProxies stringList
	simJobTime     time.Duration
	simListen      string
	simVRAMUsed    float64
	gpuInterval    time.Duration
	probeTimeout   time.Duration
	slots          int
	queueMax       int
	queueWait      time.Duration
	jobEstimate    time.Duration
	tenantInFlight int
	workflows      string
	jobTimeout     time.Duration
	shutdownGrace  time.Duration
	maxImageBytes  int64
	imageMemory    int64
	imageMemWait   time.Duration
	maxUploads     int
	logLevel       string
	logFormat      string

	// Client identity and upload fairness.
	ipv6Prefix       int
	uploadsPerClient int
	uploadMinRate    int64
	uploadGrace      time.Duration
	uploadTimeout    time.Duration

	etcd       etcdFlags
	etcdListen string
	dataDir    string
	resultsDir string

	watchProgress time.Duration
	jobRetention  time.Duration

	webhookSecret       string
	webhookAllowPrivate bool
	readyWait           time.Duration
	adminToken          string
	protectReads        bool

	// Who is calling: service tiers, API keys (in etcd) and JWT.
	tiersPath string
	jwt       jwtFlags
}

const defaultRulesPath = "testdata/rules"

func newServeCmd(s streams) *cobra.Command {
	f := &serveFlags{}
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway",
		Long: `serve runs the gateway: the public API (DDColor colouring, Z-Image generation, async
jobs), the operator API under /api, /metrics, /healthz and /readyz.

The rules come from etcd (--etcd-endpoints; none: an embedded etcd in --data-dir),
seeded from --rules when etcd holds none; every gateway follows changes within a
second. Jobs go to the ComfyUI servers given with --comfyui (none: the built-in
simulator), at most --slots at once each, waiting in a fair queue.

Secrets may come from the environment instead of the command line:
$SLUICE_ADMIN_TOKEN (--admin-token), $SLUICE_ETCD_PASSWORD (--etcd-password),
$SLUICE_WEBHOOK_SECRET (--webhook-secret).`,
		Example: `  # What make run does: testdata/rules, an embedded etcd, the built-in simulator
  sluice serve --rules testdata/rules

  # Two ComfyUI servers running two jobs each, a shared etcd, rule writes through the API
  SLUICE_ADMIN_TOKEN=s3cret sluice serve --listen :8080 \
    --comfyui http://gpu1:8188 --comfyui http://gpu2:8188 --slots 2 \
    --etcd-endpoints http://etcd:2379 --trusted-proxy 10.0.0.0/8`,
		Args:    cobra.ArbitraryArgs, // check says serve takes none
		PreRunE: func(_ *cobra.Command, args []string) error { return f.check(args) },
		RunE: func(c *cobra.Command, _ []string) error {
			return serve(c.Context(), f, c.Flags(), s.errOut)
		},
	}
	f.register(c.Flags())
	c.Flags().SortFlags = false
	return c
}

// parseServe parses serve's command line on a flag set of its own.
func parseServe(args []string, stderr io.Writer) (*serveFlags, *flag.FlagSet, error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("sluice serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, fs, err
		}
		return nil, fs, &usageError{err.Error()}
	}
	if err := f.check(fs.Args()); err != nil {
		return nil, fs, err
	}
	return f, fs, nil
}

// register defines serve's flags on fs, filling f.
func (f *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8080", "address to serve the API on")
	fs.StringVar(&f.rulesPath, "rules", defaultRulesPath, "rule file or folder (the built-in rules when left at its default and absent)")
	fs.Var(&f.comfyui, "comfyui", "ComfyUI base URL, repeatable (none: the built-in simulator)")
	fs.IntVar(&f.slots, "slots", 1, "jobs each ComfyUI backend runs at once (ComfyUI runs one prompt at a time)")
	fs.IntVar(&f.queueMax, "queue-max", 64, "jobs that may wait for a GPU slot, over all clients; beyond, 503")
	fs.DurationVar(&f.queueWait, "queue-wait", 30*time.Second, "longest a job waits for a GPU slot; beyond, 503")
	fs.DurationVar(&f.jobEstimate, "job-estimate", 0, "job time the capacity planner (sluice plan) assumes for a resource with no measured job yet (0: the simulator's --sim-job-time when it runs, else 3s)")
	fs.IntVar(&f.tenantInFlight, "tenant-inflight", 0, "jobs one client may have running or waiting at once; beyond, 429 (0: the farm's slots + 1)")
	fs.Var(&f.trustedProxies, "trusted-proxy", "CIDR or address of a proxy whose X-Forwarded-For is believed, repeatable (none by default)")
	fs.StringVar(&f.simListen, "sim-listen", "127.0.0.1:0", "address of the built-in ComfyUI simulator (a fixed one lets a restarted gateway find the simulator's jobs by their backend URL)")
	fs.DurationVar(&f.simJobTime, "sim-job-time", time.Second, "job time of the built-in ComfyUI simulator (0: times as on a real GPU)")
	fs.Float64Var(&f.simVRAMUsed, "sim-vram-used", 0.3, "the simulator's GPU memory in use at start, 0–1 (change it live with PUT /api/simulator/vram)")
	fs.DurationVar(&f.gpuInterval, "gpu-interval", 2*time.Second, "how often GPU memory and utilisation are sampled, and each backend's health probed")
	fs.DurationVar(&f.probeTimeout, "probe-timeout", farm.DefaultProbeTimeout, "longest a backend's health probe (GET /system_stats) may take; a slower answer is a failed probe")
	fs.StringVar(&f.workflows, "workflows", "", "folder of workflow templates in ComfyUI API format (default: the built-in ones)")
	fs.DurationVar(&f.jobTimeout, "job-timeout", 10*time.Minute, "longest a ComfyUI job may run")
	fs.DurationVar(&f.shutdownGrace, "shutdown-grace", 30*time.Second, "how long shutdown waits for requests in flight")
	fs.Int64Var(&f.maxImageBytes, "max-image-bytes", imageinput.DefaultLimits().MaxBytes, "largest accepted upload, in bytes")
	fs.Int64Var(&f.imageMemory, "image-memory", 512<<20, "bytes that decoding and scaling uploads may hold at once, shared by all requests (0: no bound)")
	fs.DurationVar(&f.imageMemWait, "image-memory-wait", 2*time.Second, "how long an upload waits for --image-memory before a 503")
	fs.IntVar(&f.maxUploads, "max-uploads", 16, "uploads read, checked and prepared at once (not while their jobs run); beyond, DDColor requests get 503")
	fs.IntVar(&f.uploadsPerClient, "max-uploads-per-client", 0, "uploads one client may have in those slots at once; beyond, 429 (0: a quarter of --max-uploads, at least 1)")
	fs.Int64Var(&f.uploadMinRate, "upload-min-rate", 16<<10, "slowest an upload may arrive after --upload-grace, in bytes/s; slower ones are cut off with 408 (negative: no minimum)")
	fs.DurationVar(&f.uploadGrace, "upload-grace", 10*time.Second, "time an upload has before --upload-min-rate applies")
	fs.DurationVar(&f.uploadTimeout, "upload-timeout", 2*time.Minute, "longest an upload may take in all, whatever its rate (negative: no cap)")
	fs.IntVar(&f.ipv6Prefix, "ipv6-prefix", 64, "prefix length that identifies an IPv6 client for per-origin rules, bans and fair queueing (1-128)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.etcd.endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints (none: start an embedded etcd)")
	fs.StringVar(&f.etcd.prefix, "etcd-prefix", "/sluice", "key prefix of the rule documents")
	fs.StringVar(&f.etcd.cacert, "etcd-cacert", "", "CA bundle to verify etcd's certificate")
	fs.StringVar(&f.etcd.cert, "etcd-cert", "", "client certificate for etcd")
	fs.StringVar(&f.etcd.key, "etcd-key", "", "client key for etcd")
	fs.StringVar(&f.etcd.user, "etcd-user", "", "username[:password] for etcd")
	fs.StringVar(&f.etcd.password, "etcd-password", "", "password for etcd (or $SLUICE_ETCD_PASSWORD)")
	fs.DurationVar(&f.etcd.dialTimeout, "etcd-dial-timeout", 2*time.Second, "time to connect to etcd")
	fs.DurationVar(&f.etcd.commandTimeout, "etcd-timeout", 5*time.Second, "time an etcd request may take")
	fs.StringVar(&f.etcdListen, "etcd-listen", "http://127.0.0.1:2379", "client URL of the embedded etcd")
	fs.StringVar(&f.dataDir, "data-dir", ".sluice", "folder for the embedded etcd's data")
	fs.DurationVar(&f.watchProgress, "etcd-watch-progress", 5*time.Second, "how often a quiet rule watch asks etcd for progress; heard nothing for 3 times this, /readyz says not ready (the rules may be stale)")
	fs.DurationVar(&f.jobRetention, "job-retention", etcd.DefaultJobRetention, "how long etcd keeps a finished async job's record (it expires by lease)")
	fs.StringVar(&f.resultsDir, "results-dir", "", "folder for the results of async jobs, their records living in etcd (default DATA-DIR/results)")
	fs.StringVar(&f.webhookSecret, "webhook-secret", "", "whsec_… secret that signs async jobs' webhooks (or $SLUICE_WEBHOOK_SECRET; none: no webhooks)")
	fs.BoolVar(&f.webhookAllowPrivate, "webhook-allow-private", false, "let webhooks reach loopback and private addresses")
	fs.DurationVar(&f.readyWait, "ready-wait", 10*time.Second, "how long start-up waits for the rules from etcd")
	fs.StringVar(&f.adminToken, "admin-token", "", "bearer token for rule writes through the API (or $SLUICE_ADMIN_TOKEN)")
	fs.BoolVar(&f.protectReads, "protect-reads", false, "the operator API's reads need the admin token too")
	fs.StringVar(&f.tiersPath, "tiers", "", "service tiers document to seed etcd with when it holds none (default: the built-in tiers)")
	f.jwt.register(fs)
}

// check completes the parsed flags from the environment and checks them;
// args are the arguments left (serve takes none).
func (f *serveFlags) check(args []string) error {
	if len(args) > 0 {
		return usagef("serve takes no arguments, got %q", args)
	}
	if f.adminToken == "" {
		f.adminToken = os.Getenv("SLUICE_ADMIN_TOKEN")
	}
	if f.etcd.password == "" {
		f.etcd.password = os.Getenv("SLUICE_ETCD_PASSWORD")
	}
	if f.webhookSecret == "" {
		f.webhookSecret = os.Getenv("SLUICE_WEBHOOK_SECRET")
	}
	if f.resultsDir == "" {
		f.resultsDir = filepath.Join(f.dataDir, "results")
	}
	if f.simVRAMUsed < 0 || f.simVRAMUsed > 1 {
		return usagef("--sim-vram-used: want a fraction between 0 and 1, got %v", f.simVRAMUsed)
	}
	if f.ipv6Prefix < 1 || f.ipv6Prefix > 128 {
		return usagef("--ipv6-prefix: want a prefix length from 1 to 128, got %d", f.ipv6Prefix)
	}
	if f.uploadTimeout == 0 {
		return usagef("--upload-timeout must not be 0 (negative: no cap)")
	}
	if f.uploadMinRate == 0 || f.uploadGrace <= 0 || f.uploadsPerClient < 0 {
		return usagef("--upload-min-rate must not be 0 (negative: no minimum), --upload-grace must be > 0, --max-uploads-per-client >= 0; got %d, %s, %d",
			f.uploadMinRate, f.uploadGrace, f.uploadsPerClient)
	}
	if f.imageMemory < 0 || f.imageMemWait < 0 {
		return usagef("--image-memory and --image-memory-wait must be >= 0; got %d, %s", f.imageMemory, f.imageMemWait)
	}
	if f.gpuInterval <= 0 || f.probeTimeout <= 0 {
		return usagef("--gpu-interval and --probe-timeout must be > 0; got %s, %s", f.gpuInterval, f.probeTimeout)
	}
	if f.tenantInFlight < 0 {
		return usagef("--tenant-inflight: want 1 or more (0: the farm's slots + 1), got %d", f.tenantInFlight)
	}
	if f.protectReads && f.adminToken == "" {
		return usagef("--protect-reads needs --admin-token or $SLUICE_ADMIN_TOKEN")
	}
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level: want debug, info, warn or error, got %q", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format: want text or json, got %q", format)
}

// loadRules reads the rule file or folder. Left at its default and absent
// (an installed binary run outside the source tree), it falls back to the
// built-in rules.
func loadRules(path string, explicit bool) (*rules.Set, string, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !explicit {
		set, err := rules.Default()
		return set, "built-in", err
	}
	fsys, name, root := os.DirFS("."), filepath.ToSlash(path), ""
	if !filepath.IsLocal(path) {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, "", fmt.Errorf("rules %s: %w", path, err)
		}
		fsys, name, root = os.DirFS("/"), strings.TrimPrefix(filepath.ToSlash(abs), "/"), "/"
	}
	docs, err := rules.ParseFS(fsys, name)
	if err != nil {
		// Name files as the user wrote them: an absolute path keeps its "/".
		var list rules.Errors
		if errors.As(err, &list) {
			for _, e := range list {
				e.File = root + e.File
			}
		}
		return nil, "", err
	}
	for i := range docs {
		docs[i].File = root + docs[i].File
	}
	set, err := rules.Build(docs)
	if err != nil {
		return nil, "", err
	}
	return set, path, nil
}

// serve runs the gateway with the flags f, parsed from fset, until ctx
// ends.
func serve(ctx context.Context, f *serveFlags, fset *flag.FlagSet, stderr io.Writer) error {
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	gin.SetMode(gin.ReleaseMode)
	defer log.Info("stopped") // deferred first, so logged last
	explicit := false
	fset.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "rules" })
	set, source, err := loadRules(f.rulesPath, explicit)
	if err != nil {
		return fmt.Errorf("load rules: %w", err)
	}
	log.Info("local rules loaded", slog.String("source", source), slog.Int("documents", len(set.Docs)))
	tiersDoc, tiersFrom, err := loadTiers(f.tiersPath)
	if err != nil {
		return fmt.Errorf("--tiers: %w", err)
	}
	// Templates are checked before etcd starts: a mistake in one stops here.
	workflows := comfyui.DefaultWorkflows()
	if f.workflows != "" {
		if workflows, err = comfyui.LoadWorkflows(os.DirFS(f.workflows)); err != nil {
			return fmt.Errorf("--workflows %s: %w", f.workflows, err)
		}
	}

	eng, err := engine.New(engine.Options{Logger: log}, set)
	if err != nil {
		return err
	}
	defer eng.Close()
	rs, err := startRules(ctx, f, set, source, eng, log)
	if err != nil {
		return err
	}
	defer rs.Close()
	who, err := startIdentity(ctx, f, rs, eng, tiersDoc, tiersFrom, log)
	if err != nil {
		return err
	}
	defer who.Close() // before rs: they share its etcd client

	urls := []string(f.comfyui)
	var sim *comfyuitest.Server
	if len(urls) == 0 {
		if sim, err = startSimulator(f.simListen, f.simJobTime, f.simVRAMUsed, log); err != nil {
			return err
		}
		defer sim.Close()
		urls = []string{sim.URL}
	}
	var configs []comfyui.Config
	for _, u := range urls {
		configs = append(configs, comfyui.Config{BaseURL: u, Logger: log, Workflows: workflows})
	}
	jobTimes := &plan.Recorder{} // the slot times the capacity planner works from
	backends, err := farm.New(farm.Config{Backends: configs, Slots: f.slots, MaxQueue: f.queueMax, JobTimes: jobTimes,
		TenantInFlight: tenantCap(f.tenantInFlight, len(urls), f.slots), MaxWait: f.queueWait,
		Monitor: eng, Interval: f.gpuInterval, ProbeTimeout: f.probeTimeout, Logger: log})
	if err != nil {
		return fmt.Errorf("--comfyui: %w", err)
	}
	defer backends.Close() // the clients' WebSockets: after the jobs, before the simulator
	clients := backends.Clients()
	stopGPUs := watchGPUs(backends, eng, f.gpuInterval, log)
	defer stopGPUs()
	async, restoreJobs, err := startJobs(ctx, f, rs, clients, eng, backends, who.tiers, httpapi.RefundJobs(who.quota, log), log)
	if err != nil {
		return err
	}
	defer async.Close() // before etcd and the backends close

	metrics := sluiceprom.New(sluiceprom.Config{Engine: eng, Logger: log, Rules: rs.rulesInfo, Backends: backends.Stats})
	api, err := httpapi.New(httpapi.Config{
		Jobs:           metrics,
		Refusals:       metrics,
		Clients:        metrics,
		Engine:         eng,
		Runner:         backends,
		Logger:         log,
		TrustedProxies: f.trustedProxies,
		Image:          imageinput.Limits{MaxBytes: f.maxImageBytes, Budget: imageinput.NewBudget(f.imageMemory, f.imageMemWait)},
		JobTimeout:     f.jobTimeout,
		MaxUploads:     f.maxUploads,
		AsyncJobs:      async,
		Webhooks:       f.webhookSecret != "",

		UploadsPerClient: f.uploadsPerClient,
		UploadMinRate:    f.uploadMinRate,
		UploadGrace:      f.uploadGrace,
		UploadTimeout:    f.uploadTimeout,
		IPv6Prefix:       f.ipv6Prefix,

		Identity: who.resolver,
		Quota:    who.quota,
		Tiers:    who.tiers,
	})
	if err != nil {
		return err
	}
	restoreJobs(api.Resume) // before serving: recovered jobs hold their slots first
	planner, err := newPlanner(f, sim != nil, backends.Stats, eng.Rules, jobTimes)
	if err != nil {
		return err
	}
	// The web console: its page, login and live feed; its session
	// authorizes the operator API's writes from the page.
	con, err := console.Register(api.Router(), console.Config{Engine: eng, Backends: backends.Stats,
		AdminToken: f.adminToken, ProtectReads: f.protectReads, TrustedProxies: f.trustedProxies, IPv6Prefix: f.ipv6Prefix, Logger: log})
	if err != nil {
		return err
	}
	defer con.Close()
	if err := dashboardapi.Register(api.Router(), dashboardapi.Config{
		Engine:       eng,
		Source:       rs.desc,
		Writer:       ruleWriter{rs},
		Status:       rs.status,
		Ready:        rs.ready,
		AdminToken:   f.adminToken,
		ProtectReads: f.protectReads,
		Logger:       log,
		Backends:     backends.Stats,
		Simulator:    simulator(sim, backends),
		Build:        buildInfo(),
		Tiers:        who.tiers,
		Keys:         identity.NewAdmin(rs.store.Client(), rs.store.Prefix(), nil),
		Planner:      planner,
		Session:      con,
		Limiter:      con.Limiter(), // one limit on wrong admin tokens: login, live feed, operator API
		IPv6Prefix:   f.ipv6Prefix,
	}); err != nil {
		return err
	}
	if f.adminToken == "" {
		log.Warn("no --admin-token: the API refuses rule writes (use sluice rules apply) and simulator control; the dashboard is read-only")
	}
	if err := mountDocs(api.Router(), metrics.Handler()); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	// Requests get a context of their own, not ctx: a signal must let them
	// finish within the grace, and only then are they cancelled.
	reqCtx, cancelRequests := context.WithCancel(context.Background())
	defer cancelRequests()
	srv := &http.Server{
		Handler:           api,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(con.Close) // live streams end at once: Shutdown waits for no viewer
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("sluice serving", slog.String("addr", "http://"+ln.Addr().String()),
		slog.String("dashboard", "http://"+ln.Addr().String()+"/dashboard"),
		slog.Any("comfyui", urls), slog.Any("trusted_proxies", []string(f.trustedProxies)))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight", slog.Duration("grace", f.shutdownGrace))
	api.BeginShutdown() // sync jobs cut off from now on are the gateway's doing: refunded
	sctx, cancel := context.WithTimeout(context.Background(), f.shutdownGrace)
	defer cancel()
	defer api.Close() // a Server's own job manager; async (deferred above) detaches ours
	if err := srv.Shutdown(sctx); err != nil {
		// Past the grace: end the requests still running (their jobs are
		// interrupted on ComfyUI) before the components they use close.
		cancelRequests()
		srv.Close()
		return fmt.Errorf("shutdown: requests still running after %s were cut off: %w", f.shutdownGrace, err)
	}
	if err := api.Drain(sctx); err != nil {
		// Not an error: async jobs outlive the gateway. async.Close
		// (deferred) leaves those on ComfyUI running there, followed again
		// by the next start; those still waiting for a slot resume then
		// from the journal.
		log.Warn("async jobs still running after the grace are left to run on ComfyUI; the next start takes them up",
			slog.Duration("grace", f.shutdownGrace))
	}
	return nil
}

// mountDocs serves the metrics at /metrics and the OpenAPI document at
// /openapi.json, both open.
func mountDocs(r gin.IRouter, metrics http.Handler) error {
	r.GET("/metrics", gin.WrapH(metrics))
	return openapi.Register(r)
}

// simulator is sim for the operator API: nil (no simulator control) when
// real ComfyUI servers are used. A change of its GPU memory is sampled
// before the PUT answers, so the next request already meets the GPU rule.
func simulator(sim *comfyuitest.Server, backends *farm.Farm) dashboardapi.Simulator {
	if sim == nil {
		return nil
	}
	return sampledSimulator{sim, backends}
}

// startSimulator serves the built-in ComfyUI simulator on addr (by default
// a free loopback port).
// jobTime 0 means the times seen on real GPUs (DDColor about 3 s, more for
// bigger sizes).
func startSimulator(addr string, jobTime time.Duration, vramUsed float64, log *slog.Logger) (*comfyuitest.Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--sim-listen %s: built-in ComfyUI simulator: %w", addr, err)
	}
	times, desc := comfyuitest.FieldJobTime, "as on a data-centre GPU"
	if jobTime > 0 {
		times, desc = func(comfyuitest.Prompt) time.Duration { return jobTime }, jobTime.String()
	}
	sim := comfyuitest.NewHandler(comfyuitest.Options{JobTime: times, Logger: log.With(slog.String("component", "comfyui-sim"))})
	sim.Serve(l)
	sim.SetVRAMUsed(vramUsed)
	log.Warn("no --comfyui given: serving with the built-in ComfyUI simulator (no GPU, synthetic images)",
		slog.String("url", sim.URL), slog.String("job_time", desc))
	return sim, nil
}

// tenantCap is the jobs one client may have running or waiting: the
// --tenant-inflight flag, or by default one more than the farm's slots, so
// that a client alone keeps every GPU busy with a job ready for the next
// free slot, while the fair queue still gives any other client the next
// turn (measured by BenchmarkAbuse: a cap of just the slots idles a GPU
// between one client's jobs).
func tenantCap(flag, backends, slots int) int {
	if flag > 0 {
		return flag
	}
	return backends*max(slots, 1) + 1
}
