package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/engine"
)

// A tier rate refusal is the caller's own rate: 429 with Retry-After and
// its policy, like a hotspot's.
func TestRefusalProblemAnswersATierRate(t *testing.T) {
	ref := &engine.Refusal{Resource: "zimage_generate", Kind: engine.KindTierRate, Rule: "tiers/registered/rate",
		Param: "tenant", Value: "acme", Threshold: 2, Window: 10 * time.Second, RetryAfter: 10*time.Second + time.Millisecond,
		Tenant: "acme", Tier: "registered"}
	rec := httptest.NewRecorder()
	c, _ := gin.CreateTestContext(rec)
	refusalProblem(c, ref)
	h := rec.Header()
	if rec.Code != http.StatusTooManyRequests || h.Get("Retry-After") != "11" ||
		h.Get("RateLimit-Policy") != `"tier_rate";q=2;w=10` || h.Get("RateLimit") != `"tier_rate";r=0;t=11` {
		t.Fatalf("tier rate refusal: %d, Retry-After %q, RateLimit-Policy %q, RateLimit %q",
			rec.Code, h.Get("Retry-After"), h.Get("RateLimit-Policy"), h.Get("RateLimit"))
	}
}
