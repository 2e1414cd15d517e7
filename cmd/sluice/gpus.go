package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/nvml"
	"github.com/sluicehq/sluice/engine"
)

// watchGPUs samples every backend's GPU memory from /system_stats (and this
// host's GPUs through NVML, where it has them) into the engine, takes
// backends that stop answering out of the farm, and returns a function that
// stops the sampling and waits for it.
func watchGPUs(backends *farm, eng *engine.Engine, every time.Duration, log *slog.Logger) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for name, c := range backends.clients {
		health := &healthReporter{eng: eng, farm: backends, backend: name, log: log}
		w := &comfyui.VRAMWatcher{Client: c, Reporter: health, Interval: every, Logger: log}
		wg.Go(func() { w.Run(ctx) })
	}
	wg.Go(func() { runNVML(ctx, eng, every, log) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// mountSimulatorControl lets an operator push the built-in simulator's GPU
// memory up or down, to see the GPU rules act:
//
//	curl -X PUT -d '{"used_ratio": 0.95}' localhost:8080/api/simulator/vram
//
// It exists only with the simulator; with an admin token configured, the
// PUT needs it like every other write.
func mountSimulatorControl(r gin.IRouter, sim *comfyuitest.Server, adminToken string) {
	r.GET("/api/simulator/vram", func(c *gin.Context) {
		c.JSON(http.StatusOK, gin.H{"used_ratio": sim.VRAMUsed()})
	})
	r.PUT("/api/simulator/vram", func(c *gin.Context) {
		if adminToken != "" && subtle.ConstantTimeCompare([]byte(c.GetHeader("Authorization")), []byte("Bearer "+adminToken)) != 1 {
			c.Header("WWW-Authenticate", `Bearer realm="sluice"`)
			c.Header("Content-Type", "application/problem+json")
			c.AbortWithStatusJSON(http.StatusUnauthorized, gin.H{"type": "https://sluice.dev/problems/unauthorized", "title": "Unauthorized", "status": 401,
				"detail": "this endpoint needs the admin token: send Authorization: Bearer <token>"})
			return
		}
		var body struct {
			UsedRatio *float64 `json:"used_ratio"`
		}
		dec := json.NewDecoder(http.MaxBytesReader(c.Writer, c.Request.Body, 1<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || body.UsedRatio == nil || *body.UsedRatio < 0 || *body.UsedRatio > 1 {
			c.Header("Content-Type", "application/problem+json")
			c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"type": "https://sluice.dev/problems/bad-request", "title": "Bad Request", "status": 400,
				"detail": fmt.Sprintf(`send {"used_ratio": R} with R between 0 and 1 (decode: %v)`, err)})
			return
		}
		sim.SetVRAMUsed(*body.UsedRatio)
		c.JSON(http.StatusOK, gin.H{"used_ratio": sim.VRAMUsed()})
	})
}

// runNVML samples this host's GPUs through NVML until ctx ends; where the
// NVIDIA library is absent it says so once and stops.
func runNVML(ctx context.Context, eng *engine.Engine, every time.Duration, log *slog.Logger) {
	nvml.New(nvml.Config{Reporter: eng, Interval: every, Logger: log}).Run(ctx)
}
