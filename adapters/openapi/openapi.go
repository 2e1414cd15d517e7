package openapi

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"
	"go.yaml.in/yaml/v3"
)

// Path is where Register serves the document.
const Path = "/openapi.json"

//go:embed openapi.yaml
var source []byte

// JSON returns the document in JSON, anchors and aliases resolved.
func JSON() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(source, &doc); err != nil {
		return nil, fmt.Errorf("openapi: the embedded document: %w", err)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi: the embedded document in JSON: %w", err)
	}
	return b, nil
}

// Register serves the document as JSON at GET /openapi.json on r. It needs
// no credentials: the document holds no secret.
func Register(r gin.IRouter) error {
	doc, err := JSON()
	if err != nil {
		return err
	}
	r.GET(Path, func(c *gin.Context) {
		c.Header("Cache-Control", "no-cache")
		c.Data(http.StatusOK, "application/json", doc)
	})
	return nil
}
