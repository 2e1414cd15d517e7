package rules

// TierRate is a tier's per-tenant rate: each tenant of the tier may make
// Threshold admissions per Window on each resource (a hotspot on the
// tenant).
type TierRate struct {
	Threshold int64    `json:"threshold" yaml:"threshold"`
	Window    Duration `json:"window" yaml:"window"`
}
