package httpapi

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/engine"
)

// Problem is an RFC 9457 problem body, with the refusing rule when a rule
// refused.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Resource string `json:"resource,omitempty"`
	// Rule, Kind and the hot value name what refused.
	Rule  string `json:"rule,omitempty"`
	Kind  string `json:"kind,omitempty"`
	Param string `json:"param,omitempty"`
	Value string `json:"value,omitempty"`
	// RetryAfter is the Retry-After value in seconds.
	RetryAfter int `json:"retry_after,omitempty"`
	// NodeErrors carries ComfyUI's per-node validation errors.
	NodeErrors any `json:"node_errors,omitempty"`
}

// Problem types: the two the IETF rate-limit drafts register, and sluice's
// own for everything else.
const (
	typeQuota    = "https://iana.org/assignments/http-problem-types#quota-exceeded"
	typeCapacity = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
	typeBase     = "https://sluice.dev/problems/"
)

func writeProblem(c *gin.Context, p Problem) {
	c.Header("Content-Type", "application/problem+json")
	if p.RetryAfter > 0 {
		c.Header("Retry-After", strconv.Itoa(p.RetryAfter))
	}
	c.AbortWithStatusJSON(p.Status, p)
}

// badRequest answers a client error of the given status.
func badRequest(c *gin.Context, status int, code, detail string) {
	writeProblem(c, Problem{Type: typeBase + code, Title: http.StatusText(status), Status: status, Detail: detail})
}

// retrySeconds rounds a retry estimate up to whole seconds, at least 1.
func retrySeconds(d time.Duration) int {
	return max(int(math.Ceil(d.Seconds())), 1)
}

// refusalProblem turns a refusal into its status, problem body and
// rate-limit header fields (draft-ietf-httpapi-ratelimit-headers-10).
func refusalProblem(c *gin.Context, r *engine.Refusal) {
	retry := retrySeconds(r.RetryAfter)
	p := Problem{
		Type:       typeQuota,
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
		p.Type, p.Title, p.Status = typeCapacity, "Service Unavailable", http.StatusServiceUnavailable
	}
	if policy := ratePolicy(r); policy != "" {
		c.Header("RateLimit-Policy", policy)
		c.Header("RateLimit", fmt.Sprintf("%q;r=0;t=%d", policyName(r), retry))
	}
	writeProblem(c, p)
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
	q := max(int64(r.Threshold), 1)
	switch r.Kind {
	case engine.KindFlow, engine.KindHotspot, engine.KindBan:
		w := max(int64(math.Ceil(r.Window.Seconds())), 1)
		return fmt.Sprintf("%q;q=%d;w=%d", policyName(r), q, w)
	case engine.KindConcurrency:
		return fmt.Sprintf("%q;q=%d;qu=\"concurrent-requests\"", policyName(r), q)
	}
	return ""
}
