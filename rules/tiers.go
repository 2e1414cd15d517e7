package rules

import (
	"time"

	"github.com/sluicehq/sluice/engine/tenant"
)

// NOTE: a stand-in written by helper "gateway" so that adapters/httpapi
// builds on its branch: the contract's types, DefaultTiers and Tier only.
// The lead replaces this file with helper "tiers"' rules/tiers.go.

// Tiers is the tiers document in force: the time zone of the quota day and
// every tier.
type Tiers struct {
	// Timezone is the IANA name of the quota day's time zone.
	Timezone string
	// Location is Timezone loaded.
	Location *time.Location
	Tiers    []Tier
}

// Tier is one service tier.
type Tier struct {
	Name string
	// DailyQuota is the units a tenant may spend a day, or tenant.Unlimited.
	DailyQuota int64
	// QuotaUnit is "jobs" (each job counts 1) or "cost" (its cost units).
	QuotaUnit string
	// InFlight is how many jobs a tenant may have running or waiting.
	InFlight int
	// Priority is the tier's class in the GPU queue.
	Priority tenant.Class
	// Rate, if set, is a per-tenant rate.
	Rate *TierRate
	// Resources lists the resources the tier may use; empty: every one.
	Resources []string
	// MaxSize is the largest size parameter allowed; 0: no limit.
	MaxSize int
}

// TierRate is a per-tenant rate: Threshold calls per Window.
type TierRate struct {
	Threshold int64
	Window    Duration
}

// DefaultTiers is the built-in tiers table: anonymous 50 jobs a day, 1 in
// flight, low priority; registered 200, 2, medium; vip unlimited, 3, high;
// the quota day in UTC.
func DefaultTiers() *Tiers {
	return &Tiers{Timezone: "UTC", Location: time.UTC, Tiers: []Tier{
		{Name: tenant.AnonymousTier, DailyQuota: 50, QuotaUnit: "jobs", InFlight: 1, Priority: tenant.Low},
		{Name: "registered", DailyQuota: 200, QuotaUnit: "jobs", InFlight: 2, Priority: tenant.Medium},
		{Name: "vip", DailyQuota: tenant.Unlimited, QuotaUnit: "jobs", InFlight: 3, Priority: tenant.High},
	}}
}

// Tier returns the tier called name.
func (t *Tiers) Tier(name string) (Tier, bool) {
	for _, tr := range t.Tiers {
		if tr.Name == name {
			return tr, true
		}
	}
	return Tier{}, false
}
