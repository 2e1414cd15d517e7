package dashboardapi

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

// Config configures the operator API.
type Config struct {
	Engine *engine.Engine
	// Source says where the rules came from: a path, or "built-in".
	Source string
}

type api struct {
	eng    *engine.Engine
	source string
}

// Register mounts the operator API on r.
func Register(r gin.IRouter, cfg Config) {
	a := &api{eng: cfg.Engine, source: cfg.Source}
	r.GET("/api/rules", a.rules)
	r.GET("/api/rules/:resource", a.resourceRules)
	r.GET("/api/resources", a.resources)
	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/readyz", a.ready)
}

// document is one rule document as the API shows it.
type document struct {
	Source   string          `json:"source"`
	Resource string          `json:"resource"`
	Rules    *rules.Resource `json:"rules,omitempty"`
	System   *rules.System   `json:"system,omitempty"`
}

func documents(set *rules.Set) []document {
	out := make([]document, 0, len(set.Docs))
	for _, d := range set.Docs {
		doc := document{Source: d.Source(), Resource: d.Name()}
		if d.System != nil {
			sys := set.System
			doc.System = &sys
		} else {
			doc.Rules = set.Resources[d.Name()] // with defaults filled in
		}
		out = append(out, doc)
	}
	return out
}

func (a *api) rules(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"source": a.source, "documents": documents(a.eng.Rules())})
}

func (a *api) resourceRules(c *gin.Context) {
	name := c.Param("resource")
	if !slices.Contains(rules.Resources, name) {
		c.AbortWithStatusJSON(http.StatusNotFound, gin.H{
			"type": "https://sluice.dev/problems/unknown-resource", "title": "Not Found", "status": http.StatusNotFound,
			"detail": fmt.Sprintf("unknown resource %q; known resources are %v", name, rules.Resources)})
		return
	}
	for _, d := range documents(a.eng.Rules()) {
		if d.Resource == name {
			c.JSON(http.StatusOK, d)
			return
		}
	}
	c.JSON(http.StatusOK, document{Resource: name}) // no rules: everything passes
}

func (a *api) resources(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"resources": a.eng.Stats(), "cpu_usage": a.eng.CPUUsage()})
}

func (a *api) ready(c *gin.Context) {
	if a.eng.Rules() == nil {
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "no rules loaded"})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready"})
}
