// Package rules is sluice's rule language: the Go types of every rule kind,
// strict YAML/JSON decoding with precise error messages, validation, and
// conversion to sentinel-golang rules.
//
// A rule source is one or more documents, YAML (multi-document, separated by
// "---") or JSON, each either a resource document
//
//	resource: ddcolor_building
//	flow:
//	  - threshold: 2
//	    window: 1s
//	hotspot:
//	  - param: origin
//	    threshold: 3
//	    window: 1s
//	    items: {"203.0.113.7": 8}
//	concurrency: 8
//	cost: {param: size, values: {"1280": 2}}
//	ban: {blocks: 20, within: 10s, for: 5m}
//
// or the single system document
//
//	system:
//	  cpu_usage: 0.85
//	  avg_rt: 2s
//
// Every rule takes mode: enforce (the default) or mode: shadow: flow[i].mode,
// hotspot[i].mode, ban.mode, concurrency as {limit: 8, mode: shadow},
// system.mode (for all the system rules) and gpu.mode. A shadow rule is
// evaluated on the same traffic and counts the calls it would refuse; it
// refuses none. Sentinel converts the enforcing rules, SentinelOf either
// mode's.
//
// Parse decodes one file, ParseFS a file or a folder, and Build validates a
// whole set of documents and compiles it. Every error names the file, the
// document, the field path and the offending value, and a source with one
// bad rule yields no rules at all: callers keep their last good Set.
//
// The package is pure: it reads only the bytes and file systems it is given.
package rules
