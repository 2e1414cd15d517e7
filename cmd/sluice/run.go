package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// The exit codes of every sluice command.
const (
	exitOK          = 0  // done
	exitInvalid     = 1  // invalid input or refused: a bad file, a rule error, a 4xx from the gateway
	exitUnreachable = 2  // etcd or the gateway cannot be reached
	exitAborted     = 3  // the operator declined the confirmation, or none could be asked
	exitUsage       = 64 // a usage error: unknown command or flag, a missing argument (EX_USAGE)
)

// exitError carries a command's exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func invalid(err error) error     { return &exitError{exitInvalid, err} }
func unreachable(err error) error { return &exitError{exitUnreachable, err} }
func aborted(err error) error     { return &exitError{exitAborted, err} }

// usageError is a mistake on the command line: exit code 64.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitCode maps a command's error to the process's exit code: the one place
// that does.
func exitCode(err error) int {
	var (
		ue *usageError
		ee *exitError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return exitUsage
	}
	return exitInvalid
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// streams are a command's standard input and output; tty says whether in
// is a terminal an operator can answer a confirmation on.
type streams struct {
	in          io.Reader
	out, errOut io.Writer
	tty         bool
}

// run is the whole program: it parses args and runs a command until ctx
// ends. Confirmations read the process's standard input when it is a
// terminal.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runWith(ctx, args, streams{in: os.Stdin, out: stdout, errOut: stderr, tty: isTerminal(os.Stdin)})
}

// runWith is run with the streams given.
func runWith(ctx context.Context, args []string, s streams) error {
	root := newRootCmd(s)
	root.SetArgs(args)
	root.SetIn(s.in)
	root.SetOut(s.out)
	root.SetErr(s.errOut)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil {
		fmt.Fprintln(s.errOut, "sluice:", err)
	}
	var ue *usageError
	if errors.As(err, &ue) && cmd != nil {
		fmt.Fprintf(s.errOut, "See '%s --help' for usage.\n", cmd.CommandPath())
	}
	return err
}

// name is a command's path without "sluice", for messages that main
// prefixes with it: "rules delete".
func name(c *cobra.Command) string {
	if !c.HasParent() {
		return "sluice"
	}
	return strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")
}

// isTerminal reports whether f is a terminal (not merely a character
// device: /dev/null is one too).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

func newRootCmd(s streams) *cobra.Command {
	root := &cobra.Command{
		Use:   "sluice",
		Short: "A GPU-aware flow-control gateway for ComfyUI image services",
		Long: `sluice guards ComfyUI image services with Sentinel-style rules (flow, hotspot,
concurrency, cost, ban, system and GPU rules) kept in etcd, and queues jobs fairly
over a farm of GPU backends.

Exit codes: 0 ok; 1 invalid input or refused (a bad file, a rule error, a 4xx from
the gateway); 2 etcd or the gateway cannot be reached; 3 aborted (a confirmation
declined, or none could be asked); 64 usage error (unknown command or flag, a
missing argument).`,
		Example: `  # Run the gateway with the rules of testdata/rules, an embedded etcd and the simulator
  sluice serve --rules testdata/rules

  # See what a rule file would change, then apply it
  sluice rules diff -f tight.yaml
  sluice rules apply -f tight.yaml

  # Propose rules from the measured job times of a running gateway
  sluice plan --server http://127.0.0.1:8080`,
		Version:           version,
		Args:              groupArgs,
		RunE:              groupRun,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{err.Error()}
	})
	root.AddCommand(newServeCmd(s), newRulesCmd(s), newTiersCmd(s), newKeysCmd(s), newVersionCmd(s), newPlanCmd(s))
	// `sluice help TOPIC` as cobra's, but an unknown topic is a usage
	// error (cobra's prints "Unknown help topic" and exits 0).
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || cmd == nil || len(rest) > 0 {
				return usagef("unknown help topic %q", strings.Join(args, " "))
			}
			return cmd.Help()
		},
	})
	// --version prints what `sluice version` does.
	root.Version = versionLine()
	return root
}

// groupArgs refuses an unknown subcommand of a command that only groups
// others (`sluice bogus`, `sluice rules bogus`) as a usage error, with
// cobra's suggestions.
func groupArgs(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if sugg := c.SuggestionsFor(args[0]); len(sugg) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(sugg, "\n\t")
	}
	return &usageError{msg}
}

// groupRun is a grouping command run without a subcommand: its help, on
// stderr, and a usage error.
func groupRun(c *cobra.Command, _ []string) error {
	c.SetOut(c.ErrOrStderr())
	c.Help() //nolint:errcheck // help goes to stderr; the usage error says what matters
	if !c.HasParent() {
		return usagef("no command given")
	}
	return usagef("%s: no command given", name(c))
}

// newGroupCmd is a command that groups subcommands.
func newGroupCmd(use, short, long, example string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Long: long, Example: example, Args: groupArgs, RunE: groupRun}
	c.AddCommand(subs...)
	return c
}

// exactArgs, maxArgs and noArgs check a command's positional arguments;
// a mismatch is a usage error naming what the command takes.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < n {
			return &usageError{fmt.Sprintf("%s: missing %s", name(c), what)}
		}
		if len(args) > n {
			return &usageError{fmt.Sprintf("%s takes %s, got %q", name(c), what, args)}
		}
		return nil
	}
}

func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) > n {
			return &usageError{fmt.Sprintf("%s takes at most %s, got %q", name(c), what, args)}
		}
		return nil
	}
}

func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageError{fmt.Sprintf("%s takes no arguments, got %q", name(c), args)}
	}
	return nil
}

// oneOf checks a flag's value against the values it takes: a usage error
// otherwise.
func oneOf(c *cobra.Command, flag, value string, values ...string) error {
	for _, v := range values {
		if value == v {
			return nil
		}
	}
	return &usageError{fmt.Sprintf("--%s must be %s, got %q", flag, strings.Join(values, " or "), value)}
}

// confirm asks the operator before a write that loses rules: what lost
// lists, of what. --yes (yes) skips the question; without a terminal to
// ask on, the write is refused (exit 3) naming what it would lose.
func confirm(s streams, yes bool, what string, lost []string) error {
	if len(lost) == 0 || yes {
		return nil
	}
	list := strings.Join(lost, ", ")
	if !s.tty {
		return aborted(fmt.Errorf("%s would lose %s: not applied (no terminal to confirm on; pass --yes to apply all the same)", what, list))
	}
	fmt.Fprintf(s.errOut, "%s would lose %s.\nApply all the same? [y/N] ", what, list)
	answer, err := bufio.NewReader(s.in).ReadString('\n')
	if err != nil && answer == "" {
		return aborted(fmt.Errorf("%s would lose %s: not applied (no answer)", what, list))
	}
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return aborted(fmt.Errorf("%s would lose %s: not applied", what, list))
}

// gatewayError gives an error from a call to a running gateway its exit
// code: cannot reach it (2), or anything else (1). Errors that carry a
// code keep it.
func gatewayError(err error) error {
	var (
		ee  *exitError
		use *usageError
		ue  *url.Error
		oe  *net.OpError
		dns *net.DNSError
	)
	switch {
	case err == nil, errors.As(err, &ee), errors.As(err, &use):
		return err
	case errors.As(err, &oe), errors.As(err, &dns), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ue) && ue.Timeout():
		return unreachable(err)
	}
	return invalid(err)
}

func newPlanCmd(s streams) *cobra.Command {
	var o planOptions
	c := &cobra.Command{
		Use:   "plan",
		Short: "Propose rules from a running gateway's farm and measured job times",
		Long: `plan asks a running gateway (GET /api/plan) for its farm (backends x slots) and the job
times it measured per resource and size, and prints the sustainable admissions per second
with proposed flow thresholds, cost weights, concurrency and queue settings, as rule YAML
ready for 'sluice rules apply'. Where nothing has been measured yet it says so and uses
the configured estimate.`,
		Example: `  # The plan of the gateway on this host, as text
  sluice plan

  # The proposed rules as YAML, in shadow mode, checked then applied
  sluice plan --server http://gw:8080 --shadow -o yaml > plan.yaml
  sluice rules diff -f plan.yaml && sluice rules apply -f plan.yaml`,
		Args: noArgs,
		PreRunE: func(c *cobra.Command, _ []string) error {
			if o.Token == "" {
				o.Token = os.Getenv("SLUICE_ADMIN_TOKEN")
			}
			return oneOf(c, "output", o.Output, "text", "yaml", "json")
		},
		RunE: func(c *cobra.Command, _ []string) error {
			return gatewayError(planMain(c.Context(), o, s.out))
		},
	}
	f := c.Flags()
	f.StringVar(&o.Server, "server", defaultPlanServer, "base URL of the running gateway")
	f.StringVar(&o.Token, "admin-token", "", "admin token, if the gateway protects its reads (or $SLUICE_ADMIN_TOKEN)")
	f.StringVarP(&o.Output, "output", "o", "text", "output format: text, yaml or json")
	f.BoolVar(&o.Shadow, "shadow", false, "the proposed rules carry mode: shadow (counted, never refusing)")
	f.DurationVar(&o.Timeout, "timeout", defaultPlanTimeout, "time the gateway has to answer")
	return c
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
func (l *stringList) Type() string       { return "stringArray" }

var _ pflag.Value = (*stringList)(nil)
