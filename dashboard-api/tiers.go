package dashboardapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/rules"
)

// TierSource is the tiers document's source of truth (etcd):
//
//	GET /api/tiers    the tiers in force, where they come from, the last rejected update
//	PUT /api/tiers    write a tiers document (YAML or JSON, admin token)
type TierSource interface {
	// Tiers returns the tiers in force.
	Tiers() *rules.Tiers
	// TiersStatus says where they come from and what was last rejected.
	TiersStatus() TiersStatus
	// PutTiers validates doc as the tiers document and writes it; an
	// invalid one is refused with rules.Errors and nothing is written.
	PutTiers(ctx context.Context, doc []byte) (revision int64, err error)
}

// TiersStatus says which tiers document is in force.
type TiersStatus struct {
	// Source is "etcd <key>" or "built-in".
	Source    string    `json:"source"`
	Revision  int64     `json:"revision"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// LastRejection is the last update that was not applied; nil when
	// none was rejected.
	LastRejection *Rejection `json:"last_rejection"`
}

// tiersBody is the answer of GET /api/tiers.
type tiersBody struct {
	TiersStatus
	*rules.Tiers
}

// mountTiers serves the tiers: reads on reads, the PUT with the admin
// token on r.
//
//	curl -X PUT -H 'Authorization: Bearer s3cret' --data-binary @tiers.yaml localhost:8080/api/tiers
func (a *api) mountTiers(reads, r gin.IRouter, src TierSource) {
	reads.GET("/tiers", func(c *gin.Context) {
		c.JSON(http.StatusOK, tiersBody{TiersStatus: src.TiersStatus(), Tiers: src.Tiers()})
	})
	r.PUT("/api/tiers", a.authorize, func(c *gin.Context) { a.putTiers(c, src) })
}

func (a *api) putTiers(c *gin.Context, src TierSource) {
	doc, ok := a.readDocument(c, "the tiers document (YAML or JSON)")
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), writeTimeout)
	defer cancel()
	rev, err := src.PutTiers(ctx, doc)
	attrs := []any{slog.String("remote", c.ClientIP())}
	var list rules.Errors
	switch {
	case err == nil:
		a.log.Info("operator API: tiers written", append(attrs, slog.Int64("revision", rev))...)
		c.JSON(http.StatusOK, gin.H{"revision": rev})
	case errors.As(err, &list):
		a.log.Info("operator API: tiers rejected", append(attrs, slog.Any("error", err))...)
		writeProblem(c, http.StatusUnprocessableEntity, "invalid-tiers",
			fmt.Sprintf("the tiers document is invalid (%s); nothing was written", problems(len(list))), list.Messages())
	case errors.Is(err, context.DeadlineExceeded):
		a.log.Error("operator API: writing tiers timed out", append(attrs, slog.Any("error", err))...)
		writeProblem(c, http.StatusGatewayTimeout, "rule-source-timeout",
			fmt.Sprintf("could not write to etcd within %s: %v", writeTimeout, err), nil)
	default:
		a.log.Error("operator API: writing tiers failed", append(attrs, slog.Any("error", err))...)
		writeProblem(c, http.StatusBadGateway, "rule-source-unavailable", "could not write to etcd: "+err.Error(), nil)
	}
}
