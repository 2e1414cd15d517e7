package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// meAnswer is the body of GET /api/me.
type meAnswer struct {
	Tenant string `json:"tenant"`
	Tier   string `json:"tier"`
	// Kind is anonymous, key or jwt.
	Kind string `json:"kind"`
	// Credential names the credential (a key's ID), never its secret.
	Credential string `json:"credential,omitempty"`
	// Quota is today's quota; null when the gateway counts none.
	Quota *meQuota `json:"quota"`
	// InFlight counts the tenant's jobs admitted and not ended, sync and
	// async, on this gateway.
	InFlight int      `json:"in_flight"`
	Priority string   `json:"priority"`
	Limits   meLimits `json:"limits"`
}

// meQuota is a tenant's quota day. Limit and Remaining are numbers, or
// "unlimited".
type meQuota struct {
	Day       string    `json:"day"`
	Used      int64     `json:"used"`
	Limit     any       `json:"limit"`
	Remaining any       `json:"remaining"`
	Unit      string    `json:"unit"`
	Reset     time.Time `json:"reset"`
}

// meLimits are the tier's limits.
type meLimits struct {
	DailyQuota any      `json:"daily_quota"`
	QuotaUnit  string   `json:"quota_unit"`
	InFlight   int      `json:"in_flight"`
	Priority   string   `json:"priority"`
	Rate       *meRate  `json:"rate,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	MaxSize    int      `json:"max_size,omitempty"`
}

type meRate struct {
	Threshold int64  `json:"threshold"`
	Window    string `json:"window"`
}

// quotaNumber is n, or "unlimited".
func quotaNumber(n int64) any {
	if n == tenant.Unlimited {
		return "unlimited"
	}
	return n
}

func unit(t rules.Tier) string {
	if t.QuotaUnit == "" {
		return "jobs"
	}
	return t.QuotaUnit
}

// me tells callers who they are to the gateway: tenant, tier, quota and
// jobs in flight. A bad credential is answered 401 as on the endpoints.
func (s *Server) me(c *gin.Context) {
	who, ok := s.identify(c)
	if !ok {
		return
	}
	t := who.tier
	out := meAnswer{
		Tenant: who.id.Tenant, Tier: who.id.Tier, Kind: who.id.Kind.String(), Credential: who.id.Credential,
		InFlight: s.inFlight.count(who.id.Tenant), Priority: t.Priority.String(),
		Limits: meLimits{DailyQuota: quotaNumber(t.DailyQuota), QuotaUnit: unit(t), InFlight: t.InFlight, Priority: t.Priority.String(),
			Resources: t.Resources, MaxSize: t.MaxSize},
	}
	if t.Rate != nil {
		out.Limits.Rate = &meRate{Threshold: t.Rate.Threshold, Window: t.Rate.Window.String()}
	}
	if s.quota != nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), usageTimeout)
		defer cancel()
		u, err := s.quota.Usage(ctx, who.id.Tenant, t.DailyQuota, who.loc)
		if err != nil {
			s.log.Error("daily quota not read", slog.String("tenant", who.id.Tenant), slog.Any("error", err))
		} else {
			out.Quota = &meQuota{Day: u.Day, Used: u.Used, Limit: quotaNumber(u.Limit), Remaining: quotaNumber(u.Remaining()),
				Unit: unit(t), Reset: u.Reset}
		}
	}
	c.JSON(http.StatusOK, out)
}
