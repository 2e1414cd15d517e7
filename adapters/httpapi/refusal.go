package httpapi

import (
	"math"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine"
)

// Problem is an RFC 9457 problem body, as every sluice API writes it.
type Problem = problem.Problem

// refusalProblem turns a refusal into its status, problem body and
// rate-limit header fields (draft-ietf-httpapi-ratelimit-headers-10).
func refusalProblem(c *gin.Context, r *engine.Refusal) {
	retry := problem.RetrySeconds(r.RetryAfter)
	p := Problem{
		Type:       problem.TypeQuota,
		Title:      "Too Many Requests",
		Status:     http.StatusTooManyRequests,
		Detail:     r.Error(),
		Resource:   r.Resource,
		Rule:       r.Rule,
		Kind:       string(r.Kind),
		Param:      r.Param,
		Value:      r.Value,
		RetryAfter: retry,
	}
	if r.Overload() {
		p.Type, p.Title, p.Status = problem.TypeCapacity, "Service Unavailable", http.StatusServiceUnavailable
	}
	if policy := ratePolicy(r); policy != "" {
		h := c.Writer.Header()
		h["Ratelimit-Policy"] = []string{policy}
		h["Ratelimit"] = []string{`"` + policyName(r) + `";r=0;t=` + strconv.Itoa(retry)}
	}
	problem.Write(c, p)
}

// policyName names the refusing rule as a structured-field string.
func policyName(r *engine.Refusal) string {
	if r.Param != "" && r.Kind == engine.KindHotspot {
		return string(r.Kind) + "-" + r.Param
	}
	return string(r.Kind)
}

// ratePolicy describes the quota that refused: q is the quota, w the window
// in seconds; concurrency quotas count concurrent requests. Refusals that are
// no quota (system, CPU) have no policy.
func ratePolicy(r *engine.Refusal) string {
	q := strconv.FormatInt(max(int64(r.Threshold), 1), 10)
	switch r.Kind {
	case engine.KindFlow, engine.KindHotspot, engine.KindTierRate, engine.KindBan:
		w := strconv.FormatInt(max(int64(math.Ceil(r.Window.Seconds())), 1), 10)
		return `"` + policyName(r) + `";q=` + q + ";w=" + w
	case engine.KindConcurrency:
		return `"` + policyName(r) + `";q=` + q + `;qu="concurrent-requests"`
	}
	return ""
}
