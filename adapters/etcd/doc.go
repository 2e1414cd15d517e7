// Package etcd keeps sluice's rules in etcd: the source of truth that
// operators change while the gateway runs.
//
// Every rule document lives under a prefix (default /sluice):
//
//	/sluice/rules/resources/<resource>   one resource document, YAML or JSON
//	/sluice/rules/system                 the system document
//	/sluice/tiers                        the service tiers (TiersWatcher)
//	/sluice/quota/<day>/<tenant>         a tenant's quota used that day (Quota)
//
// A Store reads and writes them, validating the whole candidate rule set
// before any write. A Watcher lists the prefix, then watches it from the
// next revision; every change builds the whole candidate set and either
// swaps it into the engine or keeps the last good set and records the
// rejection. Lost connections and compaction are survived by listing again
// with backoff. Embedded runs a single-node etcd in-process. JobStore keeps
// the records of async jobs beside the rules, at <prefix>/jobs/<id>.
// TiersWatcher keeps the tiers document in force the same way (last good
// kept), and Quota counts each tenant's daily quota, shared exactly by
// every gateway replica on the same etcd.
package etcd
