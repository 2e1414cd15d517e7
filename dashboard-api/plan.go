package dashboardapi

import (
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/plan"
)

// Planner computes the capacity plan of GET /api/plan: *plan.Planner is
// one.
type Planner interface {
	// Plan computes the plan now; shadow proposes the flow rules and
	// concurrency in mode: shadow.
	Plan(shadow bool) plan.Plan
}

var _ Planner = (*plan.Planner)(nil)

// plan answers GET /api/plan[?shadow=true]: the farm's slots, each
// resource's measured (or estimated) job times and sustainable rate, the
// proposed rules and their YAML. Backend names lose any credentials their
// URL carries.
func (a *api) plan(c *gin.Context) {
	shadow := false
	if v := c.Query("shadow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeProblem(c, http.StatusBadRequest, "bad-request", "shadow: want true or false, got "+strconv.Quote(v), nil)
			return
		}
		shadow = b
	}
	p := a.cfg.Planner.Plan(shadow)
	for i := range p.Backends {
		p.Backends[i].Name = dispatch.ShownName(p.Backends[i].Name)
	}
	c.JSON(http.StatusOK, p)
}
