package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/identity"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

// callers is who may call and what they may spend: the service tiers live
// from etcd (their rates in the engine), the daily quota counters in etcd,
// and the resolver of API keys (watched in etcd) and JWTs.
type callers struct {
	tiers    *tierSource
	quota    *etcd.Quota
	resolver *identity.Resolver
	stop     context.CancelFunc
	done     chan struct{}
}

// startIdentity seeds and follows the tiers (tiersDoc, from tiersFrom, when
// etcd holds none), keeps eng's tier rates in step with them, and starts
// the key and JWT resolver. It waits up to --ready-wait for the tiers and
// the keys; past that the built-in tiers apply and keys are refused as
// unknown until etcd answers.
func startIdentity(ctx context.Context, f *serveFlags, rs *ruleSource, eng *engine.Engine, tiersDoc []byte, tiersFrom string, log *slog.Logger) (*callers, error) {
	client, prefix := rs.store.Client(), rs.store.Prefix()
	jwt := f.jwt.config()
	if jwt != nil && jwt.JWKSURL != "" && jwt.Audience == "" {
		log.Warn("--jwt-jwks-url without --jwt-audience: every token the issuer signs for any of its applications is accepted; set --jwt-audience")
	}
	resolver, err := identity.New(identity.Config{Client: client, Prefix: prefix, JWT: jwt, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	setRates := func(ts *rules.Tiers) {
		if err := eng.SetTierRates(ts.Rates()); err != nil {
			log.Error("tier rates refused by the engine; the previous rates stay", slog.Any("error", err))
		}
	}
	c := &callers{
		tiers:    startTiers(ctx, rs.store, tiersDoc, tiersFrom, setRates, f.readyWait, f.etcd.commandTimeout, log),
		quota:    etcd.NewQuota(client, prefix, nil),
		resolver: resolver,
		done:     make(chan struct{}),
	}
	rctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	go func() {
		defer close(c.done)
		if err := resolver.Run(rctx); err != nil && rctx.Err() == nil {
			log.Error("API keys and JWT: the resolver stopped; credentials are refused", slog.Any("error", err))
		}
	}()
	select {
	case <-resolver.Ready():
	case <-time.After(f.readyWait):
		log.Warn("no API keys from etcd yet; keys are refused until it answers", slog.Duration("waited", f.readyWait))
	case <-ctx.Done():
	}
	return c, nil
}

// Close stops following the keys and the tiers.
func (c *callers) Close() {
	c.stop()
	<-c.done
	c.tiers.Close()
}
