// Package problem is how sluice's HTTP APIs answer what they do not serve:
// RFC 9457 problem bodies (application/problem+json) with Retry-After, one
// writer shared by the public API (package httpapi) and the operator API
// (package dashboardapi), and strict decoding of JSON request objects whose
// errors are problems a client can read.
//
// Refusals are the path a flood takes, so Write encodes the common problem
// without reflection; FuzzAppendJSON checks that encoding against
// encoding/json.
package problem
