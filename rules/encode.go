package rules

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Encode writes one document as YAML in the rule language, as given (no
// defaults filled in): the form stored in etcd, one document per key.
func Encode(d Document) ([]byte, error) {
	var v any = d.Resource
	if d.Resource == nil {
		v = struct {
			System *System `yaml:"system,omitempty"`
			GPU    *GPU    `yaml:"gpu,omitempty"`
		}{d.System, d.GPU}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode %s: %w", d.Name(), err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", d.Name(), err)
	}
	return buf.Bytes(), nil
}
