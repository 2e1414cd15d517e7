package rules

import (
	_ "embed"
	"fmt"
)

//go:embed default.yaml
var defaultRules []byte

// DefaultSource returns the built-in rule set's YAML, the same as
// testdata/rules/default.yaml.
func DefaultSource() []byte { return append([]byte(nil), defaultRules...) }

// Default returns the built-in rule set, used when no rules are given.
func Default() (*Set, error) {
	docs, err := Parse("built-in default.yaml", defaultRules)
	if err != nil {
		return nil, fmt.Errorf("built-in rules: %w", err)
	}
	return Build(docs)
}
