package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/rules"
)

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

// register defines the flags on fs: a group's persistent flags, so that
// every subcommand takes them.
func (f *etcdFlags) register(fs *pflag.FlagSet) {
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

// clientError sorts a failure to open the etcd client: a bad TLS file or
// setting is invalid input (exit 1); a timeout or an etcd that does not
// answer — clientv3 authenticates while it dials when --user is given —
// cannot be reached (exit 2).
func clientError(err error) error {
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable:
		return unreachable(err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return unreachable(err)
	}
	return invalid(err)
}

// withStore connects to etcd, runs fn with a context bounded by
// --command-timeout, and closes the connection.
func (f *etcdFlags) withStore(ctx context.Context, fn func(context.Context, *etcd.Store) error) error {
	c, err := etcd.NewClient(f.clientConfig())
	if err != nil {
		return clientError(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, f.commandTimeout)
	defer cancel()
	return fn(ctx, etcd.NewStore(c, f.prefix))
}

// connect opens a connection to etcd: the store, and its closing.
func (f *etcdFlags) connect() (*etcd.Store, func(), error) {
	c, err := etcd.NewClient(f.clientConfig())
	if err != nil {
		return nil, nil, clientError(err)
	}
	return etcd.NewStore(c, f.prefix), func() { c.Close() }, nil
}

func newRulesCmd(s streams) *cobra.Command {
	var ef etcdFlags
	c := newGroupCmd("rules", "Read, check, diff, apply, delete and watch the rules in etcd",
		`rules manages the rule documents in etcd: one per resource (ddcolor_person,
ddcolor_building, zimage_generate) at <prefix>/rules/resources/<resource>, and the
system document (system and gpu rules) at <prefix>/rules/system. A document written
replaces the one in etcd whole: a one-rule file drops the resource's other rules, so
apply shows what would be lost and asks first.

Every gateway watching etcd enforces a change within a second; a change that makes
the rule set invalid is refused before it is written.`,
		`  # What is in force, as YAML or JSON
  sluice rules get
  sluice rules get ddcolor_person -o json

  # Check a file, see what it changes, apply it
  sluice rules validate -f rules/
  sluice rules diff -f tight.yaml
  sluice rules apply -f tight.yaml

  # Against a TLS etcd with authentication
  sluice rules get --endpoints https://etcd:2379 --cacert ca.pem --user sluice:s3cret`,
		newRulesGetCmd(s, &ef), newRulesApplyCmd(s, &ef), newRulesValidateCmd(s), newRulesDiffCmd(s, &ef),
		newRulesDeleteCmd(s, &ef), newRulesWatchCmd(s, &ef))
	ef.register(c.PersistentFlags())
	return c
}

func newRulesGetCmd(s streams, ef *etcdFlags) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "get [RESOURCE]",
		Short: "Print the rule documents in etcd",
		Long: `get prints the rule documents in etcd, all of them or the one of RESOURCE ("system" for
the system document), as stored (YAML) or as JSON with each key's mod revision.`,
		Example: `  sluice rules get
  sluice rules get zimage_generate
  sluice rules get system -o json`,
		Args: maxArgs(1, "one RESOURCE"),
		PreRunE: func(c *cobra.Command, _ []string) error {
			return oneOf(c, "output", output, "yaml", "json")
		},
		RunE: func(c *cobra.Command, args []string) error {
			return rulesGet(c.Context(), ef, output, args, s.out)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "yaml", "output format: yaml or json")
	return c
}

func newRulesValidateCmd(s streams) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "validate -f FILE|DIR",
		Short: "Check rule files locally, without etcd",
		Long: `validate reads a rule file, or every *.yaml, *.yml and *.json file of a folder, and checks
them as one rule set, with the messages the gateway gives: each names the file, the
document, the field and its line.`,
		Example: `  sluice rules validate -f testdata/rules
  sluice rules validate -f tight.yaml`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			docs, err := localDocs(s, file)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "%s: %d documents, valid\n", file, len(docs))
			return nil
		},
	}
	c.Flags().StringVarP(&file, "filename", "f", "", "rule file or folder (- for standard input)")
	return c
}

func newRulesDiffCmd(s streams, ef *etcdFlags) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "diff -f FILE|DIR",
		Short: "Show what applying rule files would change in etcd",
		Long: `diff validates the files, then prints, for each document, the unified diff between the
document in etcd and the file's (both in the form etcd stores), and the rules the
document would lose: its rules in etcd that the file's document does not have. It
writes nothing.`,
		Example: `  sluice rules diff -f tight.yaml
  sluice rules diff -f rules/ --endpoints etcd:2379`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			docs, err := localDocs(s, file)
			if err != nil {
				return err
			}
			return ef.withStore(c.Context(), func(ctx context.Context, store *etcd.Store) error {
				snap, err := store.Load(ctx)
				if err != nil {
					return classify(err)
				}
				changes, err := diffDocs(store, snap, docs)
				if err != nil {
					return invalid(err)
				}
				printChanges(s.out, changes)
				return nil
			})
		},
	}
	c.Flags().StringVarP(&file, "filename", "f", "", "rule file or folder (- for standard input)")
	return c
}

func newRulesApplyCmd(s streams, ef *etcdFlags) *cobra.Command {
	var (
		file        string
		dryRun, yes bool
	)
	c := &cobra.Command{
		Use:   "apply -f FILE|DIR",
		Short: "Validate rule files, then write them to etcd in one transaction",
		Long: `apply validates the files on their own, then together with the other documents in etcd,
then writes every document in one transaction (conditional on nothing having changed
meanwhile), and prints what it created, changed or left unchanged.

Each document replaces the one in etcd whole. When one would lose rules (a flow rule,
a hotspot rule, concurrency, cost, ban, a system or gpu rule), apply shows the diff and
asks on the terminal first; --yes skips the question. Without a terminal and without
--yes it refuses (exit 3), naming the rules that would be lost.

--dry-run validates and prints the diff and the lost rules, and writes nothing.`,
		Example: `  # Write a folder of rule documents
  sluice rules apply -f testdata/rules

  # See the change first, then apply it without a question (in a script)
  sluice rules apply -f tight.yaml --dry-run
  sluice rules apply -f tight.yaml --yes`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return rulesApply(c.Context(), s, ef, file, dryRun, yes)
		},
	}
	c.Flags().StringVarP(&file, "filename", "f", "", "rule file or folder (- for standard input)")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "validate against etcd and show the diff; write nothing")
	c.Flags().BoolVarP(&yes, "yes", "y", false, "apply without asking, even when documents lose rules")
	return c
}

func newRulesDeleteCmd(s streams, ef *etcdFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete RESOURCE",
		Short: "Remove one resource's rule document (or the system one)",
		Long: `delete removes the rule document of RESOURCE ("system" for the system document): its
rules stop applying. It touches that key only; another document being invalid does
not stop it.`,
		Example: `  sluice rules delete zimage_generate
  sluice rules delete system`,
		Args: exactArgs(1, "RESOURCE (or system)"),
		RunE: func(c *cobra.Command, args []string) error {
			return rulesDelete(c.Context(), ef, args[0], s.out)
		},
	}
}

func newRulesWatchCmd(s streams, ef *etcdFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "watch",
		Short: "Print rule changes as they happen, and whether the rules stay valid",
		Long: `watch prints every change to the rule documents in etcd as it happens, with the verdict
the gateways reach: the rules valid, or invalid (the gateways keep their last good
rules) and why. It runs until interrupted.`,
		Example: `  sluice rules watch --endpoints etcd:2379`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return rulesWatch(c.Context(), ef, s.out)
		},
	}
}

// localDocs reads and validates a file or folder on its own.
func localDocs(s streams, file string) ([]rules.Document, error) {
	if file == "" {
		return nil, usagef("missing -f FILE|DIR")
	}
	if file == "-" { // standard input: sluice plan -o yaml | sluice rules apply -f - --yes
		data, err := io.ReadAll(io.LimitReader(s.in, maxStdinRules+1))
		if err != nil {
			return nil, invalid(fmt.Errorf("reading rules from standard input: %w", err))
		}
		if len(data) > maxStdinRules {
			return nil, invalid(fmt.Errorf("standard input: more than %d bytes of rules", maxStdinRules))
		}
		set, err := rules.ParseSet("stdin", data)
		if err != nil {
			return nil, invalid(err)
		}
		return set.Docs, nil
	}
	set, _, err := loadRules(file, true)
	if err != nil {
		return nil, invalid(err)
	}
	return set.Docs, nil
}

// maxStdinRules bounds the rules read from standard input (-f -).
const maxStdinRules = 8 << 20

// docChange is what writing one document would change in etcd.
type docChange struct {
	name, key string
	value     []byte   // the document as it would be stored
	diff      string   // unified diff, etcd → file; "" when unchanged
	lost      []string // rules in etcd the document lacks
	created   bool
}

// diffDocs compares each document with the one etcd holds for it.
func diffDocs(store *etcd.Store, snap *etcd.Snapshot, docs []rules.Document) ([]docChange, error) {
	out := make([]docChange, 0, len(docs))
	for _, d := range docs {
		ch := docChange{name: d.Name(), key: store.Key(d.Name())}
		value, err := rules.Encode(d)
		if err != nil {
			return nil, err
		}
		ch.value = value
		old, ok := snap.Values[ch.key]
		switch prev, perr := rules.Parse(ch.key, old); {
		case !ok:
			ch.created = true
			ch.diff, err = rules.Diff(ch.name, nil, &d)
		case perr == nil && len(prev) == 1 && valid(prev[0]):
			ch.diff, err = rules.Diff(ch.name, &prev[0], &d)
			ch.lost = rules.LostDocument(&prev[0], &d)
		default: // what etcd holds is not a valid document: compare the text
			ch.diff, err = rules.DiffText(ch.name+" (in etcd, invalid)", ch.name+" (candidate)", old, value)
			// The gateways still enforce an older, valid version of it,
			// whose rules this one may not have: ask.
			ch.lost = []string{"its document in etcd, which is not valid (the gateways enforce an older version)"}
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ch)
	}
	return out, nil
}

// valid says whether d is a valid document on its own.
func valid(d rules.Document) bool {
	_, err := rules.Build([]rules.Document{d})
	return err == nil
}

// printChanges prints each document's diff and the rules it loses.
func printChanges(w io.Writer, changes []docChange) {
	for _, ch := range changes {
		if ch.diff == "" {
			fmt.Fprintf(w, "%s: unchanged\n", ch.name)
			continue
		}
		fmt.Fprint(w, ch.diff)
		if len(ch.lost) > 0 {
			fmt.Fprintf(w, "%s loses: %s\n", ch.name, strings.Join(ch.lost, ", "))
		}
	}
}

// lostRules lists every document's lost rules, each named with its
// document: "ddcolor_person ban".
func lostRules(changes []docChange) []string {
	var all []string
	for _, ch := range changes {
		for _, l := range ch.lost {
			all = append(all, ch.name+" "+l)
		}
	}
	return all
}

func rulesApply(ctx context.Context, s streams, ef *etcdFlags, file string, dryRun, yes bool) error {
	docs, err := localDocs(s, file)
	if file == "-" {
		s.tty = false // standard input held the rules: no answer can come from it
	}
	if err != nil {
		return err
	}
	store, closeStore, err := ef.connect()
	if err != nil {
		return err
	}
	defer closeStore()
	// The question may take longer than --command-timeout: each etcd call
	// gets its own.
	lctx, cancel := context.WithTimeout(ctx, ef.commandTimeout)
	snap, err := store.Load(lctx)
	cancel()
	if err != nil {
		return classify(err)
	}
	changes, err := diffDocs(store, snap, docs)
	if err != nil {
		return invalid(err)
	}
	if dryRun {
		printChanges(s.out, changes)
		next := maps.Clone(snap.Values)
		for _, ch := range changes {
			next[ch.key] = ch.value
		}
		if _, err := store.Build(next); err != nil {
			return invalid(err)
		}
		fmt.Fprintf(s.out, "dry run: valid with the rules in etcd (revision %d); nothing written\n", snap.Revision)
		return nil
	}
	if lost := lostRules(changes); len(lost) > 0 && !yes {
		if s.tty {
			for _, ch := range changes {
				if len(ch.lost) > 0 {
					printChanges(s.errOut, []docChange{ch})
				}
			}
		}
		if err := confirm(s, yes, "applying "+file, lost); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, ef.commandTimeout)
	defer cancel()
	// Replace only what was compared: a document changed meanwhile is
	// refused, and the operator runs the command again.
	written, rev, err := store.ApplySince(wctx, docs, snap)
	if err != nil {
		return classify(err)
	}
	for _, c := range written {
		fmt.Fprintf(s.out, "%-18s %-10s %s\n", c.Name, c.Action, c.Key)
	}
	fmt.Fprintf(s.out, "revision %d\n", rev)
	return nil
}

func rulesDelete(ctx context.Context, ef *etcdFlags, name string, stdout io.Writer) error {
	if name != "system" && !slices.Contains(rules.Resources, name) {
		return invalid(fmt.Errorf("unknown resource %q; known resources are %s and system", name, strings.Join(rules.Resources, ", ")))
	}
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		rev, err := store.Delete(ctx, name)
		if err != nil {
			return classify(err)
		}
		fmt.Fprintf(stdout, "%s deleted\nrevision %d\n", name, rev)
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

func rulesWatch(ctx context.Context, ef *etcdFlags, stdout io.Writer) error {
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
	if errors.As(err, &list) || errors.Is(err, etcd.ErrNotFound) || errors.Is(err, etcd.ErrChangedSince) || errors.Is(err, etcd.ErrConflict) {
		return invalid(err)
	}
	return unreachable(err)
}
