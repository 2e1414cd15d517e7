package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/pkg/v3/featuregate"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Embedded is a single-node etcd running in this process, on loopback, for
// `sluice serve` without --etcd-endpoints and for tests.
type Embedded struct {
	etcd    *embed.Etcd
	closing *atomic.Bool
}

// EmbeddedConfig configures StartEmbedded.
type EmbeddedConfig struct {
	// Dir holds the data; it survives restarts.
	Dir string
	// ClientURL is where clients connect (default http://127.0.0.1:2379;
	// port 0 picks a free one). PeerURL likewise (default port 0).
	ClientURL, PeerURL string
	// Logger receives etcd's warnings and errors.
	Logger *slog.Logger
	// StartTimeout bounds waiting for the server to be ready (default 30s).
	StartTimeout time.Duration
	// CompactionRetention is how much history the server keeps: it
	// compacts itself every CompactionRetention (etcd's periodic
	// auto-compaction), so that months of job records and rule changes do
	// not grow its database without bound (default 1h).
	CompactionRetention time.Duration
	// QuotaBackendBytes is the size the database may reach (default 2 GiB,
	// etcd's own default made explicit). Past it etcd raises a NOSPACE
	// alarm and refuses writes; Alarms reports it, and sluice's /readyz
	// says not ready.
	QuotaBackendBytes int64
	// ProgressNotifyInterval is how often the server tells quiet watches
	// how far it has got (default 5s; etcd's own default is 10 min), so
	// that a watch silent for longer is known to be broken.
	ProgressNotifyInterval time.Duration
}

// Defaults of an embedded etcd that runs for months.
const (
	DefaultCompactionRetention    = time.Hour
	DefaultQuotaBackendBytes      = 2 << 30
	DefaultProgressNotifyInterval = 5 * time.Second
)

// StartEmbedded starts the server and waits until it serves.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded etcd: a data folder is required")
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:2379"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:0"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.CompactionRetention <= 0 {
		cfg.CompactionRetention = DefaultCompactionRetention
	}
	if cfg.QuotaBackendBytes <= 0 {
		cfg.QuotaBackendBytes = DefaultQuotaBackendBytes
	}
	if cfg.ProgressNotifyInterval <= 0 {
		cfg.ProgressNotifyInterval = DefaultProgressNotifyInterval
	}
	client, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL: %w", err)
	}
	peer, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL: %w", err)
	}
	ec := embed.NewConfig()
	ec.Name = "sluice"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*client}
	ec.AdvertiseClientUrls = []url.URL{*client}
	ec.ListenPeerUrls = []url.URL{*peer}
	ec.AdvertisePeerUrls = []url.URL{*peer}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	ec.WatchProgressNotifyInterval = cfg.ProgressNotifyInterval
	// Leases keep their remaining time across restarts (without
	// checkpoints etcd gives every lease its whole TTL again at each start,
	// and the records of finished jobs would outlive --job-retention on a
	// gateway restarted more often than that).
	if fg, ok := ec.ServerFeatureGate.(featuregate.MutableFeatureGate); ok {
		if err := fg.Set("LeaseCheckpoint=true,LeaseCheckpointPersist=true"); err != nil {
			return nil, fmt.Errorf("embedded etcd: lease checkpoints: %w", err)
		}
	}
	ec.Logger = "zap"
	ec.LogLevel = "warn"
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	closing := new(atomic.Bool)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(slogCore{log: cfg.Logger.With(slog.String("component", "etcd")), closing: closing}))
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(cfg.StartTimeout):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready after %s", cfg.StartTimeout)
	}
	return &Embedded{etcd: e, closing: closing}, nil
}

// Endpoints are the client URLs, with the real port when port 0 was asked.
func (e *Embedded) Endpoints() []string {
	var out []string
	for _, l := range e.etcd.Clients {
		out = append(out, "http://"+l.Addr().String())
	}
	return out
}

// Close stops the server and waits for it: up to etcd's request timeout
// (about 7s) while clients still hold watches open, so stop watchers first.
func (e *Embedded) Close() {
	e.closing.Store(true) // etcd reports its listeners closing as errors
	e.etcd.Close()
}

// slogCore carries etcd's zap logs (warnings and errors) to slog.
type slogCore struct {
	log     *slog.Logger
	closing *atomic.Bool
	fields  []zapcore.Field
}

func (c slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel && !c.closing.Load() }
func (c slogCore) With(f []zapcore.Field) zapcore.Core {
	return slogCore{log: c.log, closing: c.closing, fields: slices.Concat(c.fields, f)}
}
func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}
func (c slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range slices.Concat(c.fields, fields) {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	// etcd warns about things that are by design here (one port for HTTP
	// and gRPC, simple tokens): its warnings are debug detail, its errors
	// errors.
	level := slog.LevelDebug
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}
func (c slogCore) Sync() error { return nil }

func zapNop() *zap.Logger { return zap.NewNop() }
