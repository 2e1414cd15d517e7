package identity

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/engine/clock"
)

// Admin manages the keys in etcd for the operator API (/api/keys).
type Admin struct {
	client *clientv3.Client
	prefix string
	clock  clock.Clock
}

var _ dashboardapi.Keys = (*Admin)(nil)

// NewAdmin manages the keys under prefix (etcd.DefaultPrefix when empty);
// clk stamps new keys (nil: the system clock).
func NewAdmin(c *clientv3.Client, prefix string, clk clock.Clock) *Admin {
	return &Admin{client: c, prefix: prefix, clock: clock.Or(clk)}
}

// List returns every key, oldest first, without its hash.
func (a *Admin) List(ctx context.Context) ([]dashboardapi.KeyInfo, error) {
	recs, err := ListKeys(ctx, a.client, a.prefix)
	if err != nil {
		return nil, err
	}
	out := make([]dashboardapi.KeyInfo, len(recs))
	for i, r := range recs {
		out[i] = info(r)
	}
	return out, nil
}

// Create makes a key and returns it, the one time it is seen.
func (a *Admin) Create(ctx context.Context, req dashboardapi.KeyRequest) (string, dashboardapi.KeyInfo, error) {
	key, rec, err := CreateKey(ctx, a.client, a.prefix, KeySpec{Tenant: req.Tenant, Tier: req.Tier, Name: req.Name}, a.clock)
	if errors.Is(err, ErrInvalidSpec) {
		return "", dashboardapi.KeyInfo{}, fmt.Errorf("%w: %w", dashboardapi.ErrInvalidKeyRequest, err)
	}
	if err != nil {
		return "", dashboardapi.KeyInfo{}, err
	}
	return key, info(rec), nil
}

// Revoke deletes the key with ID id.
func (a *Admin) Revoke(ctx context.Context, id string) error {
	err := RevokeKey(ctx, a.client, a.prefix, id)
	if errors.Is(err, ErrKeyNotFound) {
		return fmt.Errorf("%w: %w", dashboardapi.ErrNoSuchKey, err)
	}
	return err
}

func info(r KeyRecord) dashboardapi.KeyInfo {
	return dashboardapi.KeyInfo{ID: r.ID, Tenant: r.Tenant, Tier: r.Tier, Name: r.Name, Created: r.Created}
}
