package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/rules"
)

// Exit codes of `sluice rules`: 1 invalid input, 2 etcd cannot be reached.
const (
	exitInvalid     = 1
	exitUnreachable = 2
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

const rulesUsage = `Usage: sluice rules COMMAND [flags]

  get [RESOURCE] [-o yaml|json]   print the rule documents in etcd
  apply -f FILE|DIR               validate, then write every document in one transaction
  validate -f FILE|DIR            validate locally, without etcd
  delete RESOURCE                 remove a resource's document ("system" for the system one)
  watch                           print rule changes as they happen

Flags, as etcdctl has them: --endpoints, --cacert, --cert, --key, --user, --password,
--insecure-skip-tls-verify, --dial-timeout, --command-timeout, and --prefix (default /sluice).
Exit codes: 0 ok, 1 invalid input, 2 etcd cannot be reached.
`

// etcdFlags are the connection flags of every etcd command.
type etcdFlags struct {
	endpoints      string
	prefix         string
	cacert         string
	cert, key      string
	user, password string
	insecure       bool
	dialTimeout    time.Duration
	commandTimeout time.Duration
}

func (f *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.endpoints, "endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
	fs.StringVar(&f.prefix, "prefix", etcd.DefaultPrefix, "key prefix of sluice's documents")
	fs.StringVar(&f.cacert, "cacert", "", "CA bundle to verify etcd's certificate")
	fs.StringVar(&f.cert, "cert", "", "client certificate for TLS")
	fs.StringVar(&f.key, "key", "", "client key for TLS")
	fs.StringVar(&f.user, "user", "", "username[:password] for etcd authentication")
	fs.StringVar(&f.password, "password", "", "password for etcd authentication (instead of user:password)")
	fs.BoolVar(&f.insecure, "insecure-skip-tls-verify", false, "skip verifying etcd's certificate (testing only)")
	fs.DurationVar(&f.dialTimeout, "dial-timeout", 2*time.Second, "time to connect to etcd")
	fs.DurationVar(&f.commandTimeout, "command-timeout", 5*time.Second, "time a command may take")
}

func (f *etcdFlags) clientConfig() etcd.ClientConfig {
	user, password := f.user, f.password
	if u, p, ok := strings.Cut(f.user, ":"); ok && password == "" {
		user, password = u, p
	}
	var eps []string
	for _, e := range strings.Split(f.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return etcd.ClientConfig{Endpoints: eps, DialTimeout: f.dialTimeout, CACert: f.cacert, Cert: f.cert, Key: f.key,
		InsecureSkipVerify: f.insecure, Username: user, Password: password}
}

// withStore connects to etcd, runs fn with a context bounded by
// --command-timeout, and closes the connection.
func (f *etcdFlags) withStore(ctx context.Context, fn func(context.Context, *etcd.Store) error) error {
	c, err := etcd.NewClient(f.clientConfig())
	if err != nil {
		return invalid(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, f.commandTimeout)
	defer cancel()
	return fn(ctx, etcd.NewStore(c, f.prefix))
}

func rulesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, rulesUsage)
		return invalid(errors.New("rules: no command given"))
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("sluice rules "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		ef     etcdFlags
		file   string
		output string
	)
	switch cmd {
	case "get", "apply", "delete", "watch":
		ef.register(fs)
	case "validate":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, rulesUsage)
		return nil
	default:
		fmt.Fprint(stderr, rulesUsage)
		return invalid(fmt.Errorf("rules: unknown command %q", cmd))
	}
	switch cmd {
	case "apply", "validate":
		fs.StringVar(&file, "f", "", "rule file or folder")
	case "get":
		fs.StringVar(&output, "o", "yaml", "output format: yaml or json")
	}
	if err := fs.Parse(interleave(args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return invalid(err)
	}
	rest := fs.Args()
	switch cmd {
	case "validate":
		return rulesValidate(file, rest, stdout)
	case "apply":
		return rulesApply(ctx, &ef, file, rest, stdout)
	case "get":
		return rulesGet(ctx, &ef, output, rest, stdout)
	case "delete":
		return rulesDelete(ctx, &ef, rest, stdout)
	default:
		return rulesWatch(ctx, &ef, rest, stdout)
	}
}

// interleave moves positional arguments after the flags, so that
// `rules get ddcolor_person -o json` works as it does in etcdctl.
func interleave(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-"):
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) && !isBoolFlag(a) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			pos = append(pos, a)
		}
	}
	return append(flags, pos...)
}

func isBoolFlag(a string) bool {
	return strings.TrimLeft(a, "-") == "insecure-skip-tls-verify"
}

// localDocs reads and validates a file or folder on its own.
func localDocs(file string, rest []string) ([]rules.Document, error) {
	if file == "" {
		return nil, invalid(errors.New("-f FILE|DIR is required"))
	}
	if len(rest) > 0 {
		return nil, invalid(fmt.Errorf("unexpected arguments %q", rest))
	}
	set, _, err := loadRules(file, true)
	if err != nil {
		return nil, invalid(err)
	}
	return set.Docs, nil
}

func rulesValidate(file string, rest []string, stdout io.Writer) error {
	docs, err := localDocs(file, rest)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d documents, valid\n", file, len(docs))
	return nil
}

func rulesApply(ctx context.Context, ef *etcdFlags, file string, rest []string, stdout io.Writer) error {
	docs, err := localDocs(file, rest)
	if err != nil {
		return err
	}
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		changes, rev, err := store.Apply(ctx, docs)
		if err != nil {
			return classify(err)
		}
		for _, c := range changes {
			fmt.Fprintf(stdout, "%-18s %-10s %s\n", c.Name, c.Action, c.Key)
		}
		fmt.Fprintf(stdout, "revision %d\n", rev)
		return nil
	})
}

func rulesDelete(ctx context.Context, ef *etcdFlags, rest []string, stdout io.Writer) error {
	if len(rest) != 1 {
		return invalid(errors.New("delete takes one RESOURCE (or system)"))
	}
	if name := rest[0]; name != "system" && !slices.Contains(rules.Resources, name) {
		return invalid(fmt.Errorf("unknown resource %q; known resources are %s and system", name, strings.Join(rules.Resources, ", ")))
	}
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		rev, err := store.Delete(ctx, rest[0])
		if err != nil {
			return classify(err)
		}
		fmt.Fprintf(stdout, "%s deleted\nrevision %d\n", rest[0], rev)
		return nil
	})
}

// getDocument is one document of `rules get -o json`.
type getDocument struct {
	Key         string          `json:"key"`
	ModRevision int64           `json:"mod_revision"`
	Resource    *rules.Resource `json:"resource,omitempty"`
	System      *rules.System   `json:"system,omitempty"`
	GPU         *rules.GPU      `json:"gpu,omitempty"`
	Raw         string          `json:"raw,omitempty"` // a value that does not parse
}

func rulesGet(ctx context.Context, ef *etcdFlags, output string, rest []string, stdout io.Writer) error {
	if output != "yaml" && output != "json" {
		return invalid(fmt.Errorf("-o must be yaml or json, got %q", output))
	}
	if len(rest) > 1 {
		return invalid(errors.New("get takes at most one RESOURCE"))
	}
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		snap, err := store.Load(ctx)
		if err != nil {
			return classify(err)
		}
		keys := make([]string, 0, len(snap.Values))
		for k := range snap.Values {
			if len(rest) == 0 || k == store.Key(rest[0]) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		if len(rest) == 1 && len(keys) == 0 {
			return invalid(fmt.Errorf("no rule document for %s in etcd (%s)", rest[0], store.Key(rest[0])))
		}
		if output == "yaml" {
			fmt.Fprintf(stdout, "# revision %d\n", snap.Revision)
			for i, k := range keys {
				if i > 0 {
					fmt.Fprintln(stdout, "---")
				}
				fmt.Fprintf(stdout, "# %s (mod revision %d)\n%s", k, snap.ModRevisions[k], strings.TrimRight(string(snap.Values[k]), "\n")+"\n")
			}
			return nil
		}
		out := struct {
			Revision  int64         `json:"revision"`
			Documents []getDocument `json:"documents"`
		}{Revision: snap.Revision, Documents: []getDocument{}}
		for _, k := range keys {
			d := getDocument{Key: k, ModRevision: snap.ModRevisions[k]}
			if docs, err := rules.Parse(k, snap.Values[k]); err == nil && len(docs) == 1 {
				d.Resource, d.System, d.GPU = docs[0].Resource, docs[0].System, docs[0].GPU
			} else {
				d.Raw = string(snap.Values[k])
			}
			out.Documents = append(out.Documents, d)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	})
}

func rulesWatch(ctx context.Context, ef *etcdFlags, rest []string, stdout io.Writer) error {
	if len(rest) > 0 {
		return invalid(fmt.Errorf("unexpected arguments %q", rest))
	}
	c, err := etcd.NewClient(ef.clientConfig())
	if err != nil {
		return invalid(err)
	}
	defer c.Close()
	store := etcd.NewStore(c, ef.prefix)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	lctx, cancel := context.WithTimeout(ctx, ef.commandTimeout)
	snap, err := store.Load(lctx)
	cancel()
	if err != nil {
		return classify(err)
	}
	// Judge every change as the gateway's watcher does: the whole rule set
	// after it.
	values := snap.Values
	fmt.Fprintf(stdout, "watching %s from revision %d\n", store.RulesPrefix(), snap.Revision+1)
	ch := c.Watch(clientv3.WithRequireLeader(ctx), store.RulesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(snap.Revision+1))
	for resp := range ch {
		if err := resp.Err(); err != nil {
			return unreachable(fmt.Errorf("watch: %w", err))
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				delete(values, string(ev.Kv.Key))
			} else {
				values[string(ev.Kv.Key)] = ev.Kv.Value
			}
			verdict := "rules valid"
			if _, err := store.Build(values); err != nil {
				verdict = "rules invalid, the gateway keeps its last good rules: " + strings.ReplaceAll(err.Error(), "\n", "; ")
			}
			fmt.Fprintf(stdout, "%s %s revision %d: %s\n", ev.Type, ev.Kv.Key, ev.Kv.ModRevision, verdict)
		}
	}
	return nil
}

// classify gives an etcd-side error its exit code: rule errors and missing
// documents are invalid input, everything else means etcd could not be
// reached or refused the request.
func classify(err error) error {
	var list rules.Errors
	if errors.As(err, &list) || errors.Is(err, etcd.ErrNotFound) {
		return invalid(err)
	}
	return unreachable(err)
}
