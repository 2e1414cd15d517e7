package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var (
		ue *usageError
		ee *exitError
	)
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return 2
	}
	return 1
}

const usage = `sluice — a GPU-aware flow-control gateway for ComfyUI image services

Usage:
  sluice serve [flags]    run the gateway (sluice serve -h for its flags)
  sluice rules COMMAND    read, validate, apply and watch the rules in etcd
  sluice tiers COMMAND    read, validate and apply the service tiers in etcd
  sluice keys COMMAND     create, list and revoke API keys in etcd
  sluice version          print the version and whether it reads NVML (cgo) or not (nonvml)
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// run is the whole program: it parses args and runs a subcommand until ctx
// ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{"no command given"}
	}
	switch args[0] {
	case "serve":
		err := serve(ctx, args[1:], stderr)
		if errors.Is(err, flag.ErrHelp) {
			return nil // -h printed the flags
		}
		return err
	case "rules":
		return rulesCmd(ctx, args[1:], stdout, stderr)
	case "tiers":
		return tiersCmd(ctx, args[1:], stdout, stderr)
	case "keys":
		return keysCmd(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, versionLine())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
