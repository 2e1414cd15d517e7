// Package openapi owns sluice's OpenAPI 3.1 document: the public API
// (adapters/httpapi), the operator API (dashboard-api), the operator's
// console, /metrics, /healthz, /readyz and the document itself.
//
// The document is written as YAML (openapi.yaml, embedded) and served as
// JSON at GET /openapi.json, always open:
//
//	r := gin.New()
//	if err := openapi.Register(r); err != nil { ... }
//
// Tests check that every route the gateway serves is in the document and
// that the answers the tests get match it (package openapitest).
package openapi
