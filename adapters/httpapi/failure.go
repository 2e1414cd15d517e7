package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/engine/jobs"
)

// failure is what the callers of a failed job are told: the problem a
// synchronous caller gets, and the error an async job's record keeps. It is
// the one mapping from job errors to answers, for the synchronous, async
// and recovered paths alike.
type failure struct {
	problem problem.Problem
	// record is what an async job's record says: ComfyUI's own errors, and
	// never a backend address.
	record error
	level  slog.Level
	msg    string // the log message
}

// classify maps the error of a job for resource that ran under a context
// whose error is ctxErr and a timeout.
func classify(ctxErr error, resource string, err error, timeout time.Duration) failure {
	var (
		pe   *comfyui.PromptError
		ee   *comfyui.ExecutionError
		busy *BusyError
	)
	bad := func(code string, status int, detail string) problem.Problem {
		p := problem.New(status, code, detail)
		p.Resource = resource
		return p
	}
	switch {
	case errors.Is(ctxErr, context.Canceled):
		return failure{problem: problem.Problem{Status: statusClientClosed}, record: context.Canceled,
			level: slog.LevelInfo, msg: "client went away; job cancelled"}
	case errors.As(err, &busy):
		p := problem.Problem{Type: problem.TypeCapacity, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: busy.Error(), Resource: resource, Kind: "queue", RetryAfter: problem.RetrySeconds(busy.RetryAfter)}
		if busy.OverShare {
			p.Type, p.Title, p.Status = problem.TypeQuota, "Too Many Requests", http.StatusTooManyRequests
		}
		return failure{problem: p, record: busy, level: slog.LevelInfo, msg: "no GPU slot for the job"}
	case errors.As(err, &pe):
		p := bad("comfyui-prompt-refused", http.StatusBadGateway, pe.Error())
		p.NodeErrors = nodeErrors(pe)
		return failure{problem: p, record: pe, level: slog.LevelWarn, msg: "comfyui refused the workflow"}
	case errors.As(err, &ee):
		return failure{problem: bad("comfyui-job-failed", http.StatusBadGateway, ee.Error()), record: ee,
			level: slog.LevelWarn, msg: "comfyui job failed"}
	case errors.Is(err, comfyui.ErrInterrupted):
		const detail = "the job was interrupted on the image backend"
		return failure{problem: bad("comfyui-interrupted", http.StatusBadGateway, detail), record: errors.New(detail),
			level: slog.LevelWarn, msg: "comfyui job interrupted"}
	case errors.Is(err, context.DeadlineExceeded):
		detail := fmt.Sprintf("the job did not finish within %s", timeout)
		return failure{problem: bad("comfyui-timeout", http.StatusGatewayTimeout, detail), record: errors.New(detail),
			level: slog.LevelWarn, msg: "comfyui job timed out"}
	case errors.Is(err, jobs.ErrPanicked):
		const detail = "the gateway failed while running the job"
		return failure{problem: bad("internal", http.StatusInternalServerError, detail), record: errors.New(detail),
			level: slog.LevelError, msg: "job panicked"}
	}
	const detail = "the image backend could not run the job"
	return failure{problem: bad("comfyui-unavailable", http.StatusBadGateway, detail), record: errors.New(detail),
		level: slog.LevelError, msg: "comfyui unavailable"}
}

// jobError answers a failed synchronous job of who and logs it. A
// refusal the caller caused by itself — it already has its share of jobs
// in flight — counts toward its ban (its tenant's when identified), as its
// own per-origin limit does.
func (s *Server) jobError(c *gin.Context, resource string, who *caller, err error) {
	f := classify(c.Request.Context().Err(), resource, err, s.jobTimeout)
	if busy := (*BusyError)(nil); errors.As(err, &busy) && busy.OverShare {
		s.eng.Strike(who.call(resource, 0))
	}
	s.log.LogAttrs(c.Request.Context(), f.level, f.msg, slog.String("resource", resource),
		slog.String("tenant", who.id.Tenant), slog.String("tier", who.id.Tier), slog.Any("error", err))
	if f.problem.Status == statusClientClosed {
		c.AbortWithStatus(statusClientClosed)
		return
	}
	problem.Write(c, f.problem)
}

// JobFailed logs why a job of resource failed (err, under ctx, within
// timeout) and returns what the job's record says: the same information a
// synchronous caller gets, and no backend addresses. The async jobs, and
// those recovered after a restart, are recorded with it.
func JobFailed(ctx context.Context, log *slog.Logger, resource string, err error, timeout time.Duration) error {
	f := classify(ctx.Err(), resource, err, timeout)
	log.LogAttrs(ctx, f.level, f.msg, slog.String("resource", resource), slog.Any("error", err))
	return f.record
}
