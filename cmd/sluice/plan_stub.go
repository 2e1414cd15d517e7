package main

// This file stands in for plan.go (the planner's) until the two meet: the
// lead deletes it at merge.

import (
	"context"
	"errors"
	"io"
	"time"
)

// planOptions are the flags of `sluice plan`.
type planOptions struct {
	Server  string        // --server: the gateway's base URL
	Token   string        // --admin-token, or $SLUICE_ADMIN_TOKEN
	Output  string        // -o: text, yaml or json
	Shadow  bool          // --shadow: the proposed rules carry mode: shadow
	Timeout time.Duration // --timeout
}

// planMain prints the plan of the gateway at o.Server.
func planMain(_ context.Context, _ planOptions, _ io.Writer) error {
	return errors.New("plan: not built into this binary yet")
}
