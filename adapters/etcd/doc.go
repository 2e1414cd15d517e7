// Package etcd keeps sluice's rules in etcd: the source of truth that
// operators change while the gateway runs.
//
// Every rule document lives under a prefix (default /sluice):
//
//	/sluice/rules/resources/<resource>   one resource document, YAML or JSON
//	/sluice/rules/system                 the system document
//
// A Store reads and writes them, validating the whole candidate rule set
// before any write. A Watcher lists the prefix, then watches it from the
// next revision; every change builds the whole candidate set and either
// swaps it into the engine or keeps the last good set and records the
// rejection. Lost connections and compaction are survived by listing again
// with backoff. Embedded runs a single-node etcd in-process. JobStore keeps
// the records of async jobs beside the rules, at <prefix>/jobs/<id>.
package etcd
