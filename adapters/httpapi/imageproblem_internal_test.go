package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
)

// An upload that waited in vain for decoding memory is told to come back
// (503 with Retry-After); one whose client left is not answered at all.
func TestImageProblemAnswersABusyBudget(t *testing.T) {
	busy := &imageinput.Error{Status: http.StatusServiceUnavailable, Code: imageinput.CodeBusy, Msg: "decoding memory is taken", RetryAfter: 1500 * time.Millisecond}
	rec := httptest.NewRecorder()
	c, _ := gin.CreateTestContext(rec)
	imageProblem(c, busy)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "2" {
		t.Fatalf("busy budget: %d Retry-After %q %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	rec = httptest.NewRecorder()
	c, _ = gin.CreateTestContext(rec)
	imageProblem(c, fmt.Errorf("waiting for memory: %w", context.Canceled))
	if c.Writer.Status() != statusClientClosed || rec.Body.Len() != 0 {
		t.Fatalf("client gone: %d %q, want %d and no body", c.Writer.Status(), rec.Body, statusClientClosed)
	}
}
