package prometheus

import prom "github.com/prometheus/client_golang/prometheus"

// Registry is the exporter's registry, for tests to gather from.
func (e *Exporter) Registry() *prom.Registry { return e.reg }
