// Package dashboardapi is the operator's API, mounted on the gateway's Gin
// server beside the public endpoints:
//
//	GET /api/rules              every rule document in force, with its source
//	GET /api/rules/:resource    one resource's rules
//	GET /api/resources          live statistics per resource
//	GET /healthz                the process is up
//	GET /readyz                 rules are loaded
package dashboardapi
