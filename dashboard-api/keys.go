package dashboardapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/problem"
)

// Keys manages the API keys callers identify with. The API key itself is
// seen once, in Create's answer; nothing here ever returns its hash.
type Keys interface {
	// List returns every key, oldest first.
	List(ctx context.Context) ([]KeyInfo, error)
	// Create makes a key; an invalid request is an error wrapping
	// ErrInvalidKeyRequest.
	Create(ctx context.Context, req KeyRequest) (key string, info KeyInfo, err error)
	// Revoke deletes a key; an ID that names none is an error wrapping
	// ErrNoSuchKey.
	Revoke(ctx context.Context, id string) error
}

// KeyRequest asks for a key.
type KeyRequest struct {
	Tenant string `json:"tenant"`
	Tier   string `json:"tier"`
	Name   string `json:"name"`
}

// KeyInfo describes a key without revealing it.
type KeyInfo struct {
	ID      string    `json:"id"`
	Tenant  string    `json:"tenant"`
	Tier    string    `json:"tier"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// ErrNoSuchKey is what Keys.Revoke returns, wrapped, for an unknown ID: the
// API answers 404.
var ErrNoSuchKey = errors.New("no such key")

// ErrInvalidKeyRequest is what Keys.Create returns, wrapped, for a request
// it refuses: the API answers 400.
var ErrInvalidKeyRequest = errors.New("invalid key request")

// createdKey is the answer of POST /api/keys: the only time the key is
// shown.
type createdKey struct {
	Key string `json:"key"`
	KeyInfo
	Note string `json:"note"`
}

// mountKeys serves the API keys. Every route needs the admin token, reads
// too: a key list tells who the tenants are.
//
//	curl -H 'Authorization: Bearer s3cret' -d '{"tenant":"acme","tier":"vip","name":"ci"}' localhost:8080/api/keys
func (a *api) mountKeys(r gin.IRouter, keys Keys) {
	g := r.Group("/api/keys", a.authorize, func(c *gin.Context) { c.Header("Cache-Control", "no-store") })
	g.GET("", func(c *gin.Context) {
		ctx, cancel := context.WithTimeout(c.Request.Context(), writeTimeout)
		defer cancel()
		list, err := keys.List(ctx)
		if err != nil {
			a.log.Warn("operator API: listing keys failed", slog.Any("error", err))
			writeProblem(c, http.StatusBadGateway, "keys-unavailable", "cannot list the keys: "+err.Error(), nil)
			return
		}
		if list == nil {
			list = []KeyInfo{}
		}
		c.JSON(http.StatusOK, gin.H{"keys": list})
	})
	g.POST("", func(c *gin.Context) {
		var req KeyRequest
		err := problem.DecodeObject(http.MaxBytesReader(c.Writer, c.Request.Body, 4<<10),
			problem.Field{Name: "tenant", Into: &req.Tenant}, problem.Field{Name: "tier", Into: &req.Tier}, problem.Field{Name: "name", Into: &req.Name})
		if err != nil {
			writeProblem(c, http.StatusBadRequest, "bad-request", err.Error()+`; send {"tenant": T, "tier": T, "name": N}`, nil)
			return
		}
		ctx, cancel := context.WithTimeout(c.Request.Context(), writeTimeout)
		defer cancel()
		key, info, err := keys.Create(ctx, req)
		switch {
		case errors.Is(err, ErrInvalidKeyRequest):
			writeProblem(c, http.StatusBadRequest, "invalid-key-request", err.Error(), nil)
			return
		case err != nil:
			a.log.Warn("operator API: creating a key failed", slog.Any("error", err))
			writeProblem(c, http.StatusBadGateway, "keys-unavailable", "cannot create the key: "+err.Error(), nil)
			return
		}
		a.log.Info("operator API: key created", slog.String("key_id", info.ID), slog.String("tenant", info.Tenant),
			slog.String("tier", info.Tier), slog.String("remote", c.ClientIP()))
		c.JSON(http.StatusCreated, createdKey{Key: key, KeyInfo: info, Note: "store the key now: it is not shown again"})
	})
	g.DELETE("/:id", func(c *gin.Context) {
		id := c.Param("id")
		ctx, cancel := context.WithTimeout(c.Request.Context(), writeTimeout)
		defer cancel()
		err := keys.Revoke(ctx, id)
		switch {
		case errors.Is(err, ErrNoSuchKey):
			writeProblem(c, http.StatusNotFound, "no-such-key", err.Error(), nil)
			return
		case err != nil:
			a.log.Warn("operator API: revoking a key failed", slog.String("key_id", id), slog.Any("error", err))
			writeProblem(c, http.StatusBadGateway, "keys-unavailable", "cannot revoke the key: "+err.Error(), nil)
			return
		}
		a.log.Info("operator API: key revoked", slog.String("key_id", id), slog.String("remote", c.ClientIP()))
		c.JSON(http.StatusOK, gin.H{"id": id, "revoked": true})
	})
}
