package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
	// The quota day starts at midnight in the tiers' time zone: load IANA
	// zones from the binary, so a host without /usr/share/zoneinfo (a
	// distroless or scratch container) still knows Europe/Berlin.
	_ "time/tzdata"

	"github.com/sluicehq/sluice/adapters/etcd"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/rules"
)

const tiersUsage = `Usage: sluice tiers COMMAND [flags]

  get [-o yaml|json]     print the tiers document in etcd (or say the built-in tiers apply)
  apply FILE             validate FILE, then write it as the tiers document
  validate FILE          validate FILE locally, without etcd

Flags as for sluice rules: --endpoints, --cacert, --cert, --key, --user, --password,
--insecure-skip-tls-verify, --dial-timeout, --command-timeout, and --prefix (default /sluice);
the document lives at <prefix>/tiers.
Exit codes: 0 ok, 1 invalid input, 2 etcd cannot be reached.
`

func tiersCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, tiersUsage)
		return invalid(errors.New("tiers: no command given"))
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("sluice tiers "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		ef     etcdFlags
		file   string
		output string
	)
	switch cmd {
	case "get", "apply":
		ef.register(fs)
	case "validate":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, tiersUsage)
		return nil
	default:
		fmt.Fprint(stderr, tiersUsage)
		return invalid(fmt.Errorf("tiers: unknown command %q", cmd))
	}
	switch cmd {
	case "apply", "validate":
		fs.StringVar(&file, "f", "", "tiers file (or give it as the argument)")
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
		_, ts, err := readTiersFile(file, rest)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d tiers, valid (quota days start at midnight %s)\n", tiersFileName(file, rest), len(ts.Tiers), ts.Timezone)
		return nil
	case "apply":
		doc, _, err := readTiersFile(file, rest)
		if err != nil {
			return err
		}
		return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
			rev, err := store.PutTiers(ctx, doc)
			if err != nil {
				return classify(err)
			}
			fmt.Fprintf(stdout, "tiers written to %s\nrevision %d\n", store.TiersKey(), rev)
			return nil
		})
	default:
		if len(rest) > 0 {
			return invalid(fmt.Errorf("unexpected arguments %q", rest))
		}
		return tiersGet(ctx, &ef, output, stdout)
	}
}

func tiersFileName(file string, rest []string) string {
	if file == "" && len(rest) == 1 {
		return rest[0]
	}
	return file
}

// readTiersFile reads and validates the tiers file named by -f or the one
// argument; errors name the file.
func readTiersFile(file string, rest []string) ([]byte, *rules.Tiers, error) {
	name := tiersFileName(file, rest)
	if name == "" || (file != "" && len(rest) > 0) || len(rest) > 1 {
		return nil, nil, invalid(errors.New("give one tiers FILE"))
	}
	doc, err := os.ReadFile(name)
	if err != nil {
		return nil, nil, invalid(fmt.Errorf("read tiers: %w", err))
	}
	ts, err := rules.ParseTiers(name, doc)
	if err != nil {
		return nil, nil, invalid(err)
	}
	return doc, ts, nil
}

func tiersGet(ctx context.Context, ef *etcdFlags, output string, stdout io.Writer) error {
	if output != "yaml" && output != "json" {
		return invalid(fmt.Errorf("-o must be yaml or json, got %q", output))
	}
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		d, err := store.GetTiers(ctx)
		if err != nil {
			return classify(err)
		}
		if output == "yaml" {
			if d.Value == nil {
				fmt.Fprintf(stdout, "# revision %d: no tiers document at %s; the built-in tiers apply:\n%s", d.Revision, store.TiersKey(), rules.DefaultTiersSource())
				return nil
			}
			fmt.Fprintf(stdout, "# %s (mod revision %d)\n%s\n", store.TiersKey(), d.ModRevision, strings.TrimRight(string(d.Value), "\n"))
			return nil
		}
		out := struct {
			Key         string       `json:"key"`
			Revision    int64        `json:"revision"`
			ModRevision int64        `json:"mod_revision,omitempty"`
			Source      string       `json:"source"`
			Tiers       *rules.Tiers `json:"tiers,omitempty"`
			Raw         string       `json:"raw,omitempty"` // a value that does not parse
			Errors      []string     `json:"errors,omitempty"`
		}{Key: store.TiersKey(), Revision: d.Revision, ModRevision: d.ModRevision, Source: "etcd"}
		if d.Value == nil {
			out.Source, out.Tiers = "built-in", rules.DefaultTiers()
		} else if ts, err := rules.ParseTiers(store.TiersKey(), d.Value); err == nil {
			out.Tiers = ts
		} else {
			var list rules.Errors
			errors.As(err, &list)
			out.Raw, out.Errors = string(d.Value), list.Messages()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	})
}

// tierSource is the tiers document in etcd feeding the gateway: a running
// TiersWatcher. It is the operator API's dashboardapi.TierSource and the
// HTTP API's source of the tiers in force.
type tierSource struct {
	store   *etcd.Store
	watcher *etcd.TiersWatcher
	stop    context.CancelFunc
	done    chan struct{}
}

var _ dashboardapi.TierSource = (*tierSource)(nil)

// loadTiers reads the --tiers file, or the built-in document when path is
// empty, and validates it.
func loadTiers(path string) ([]byte, string, error) {
	if path == "" {
		return rules.DefaultTiersSource(), "built-in", nil
	}
	doc, _, err := readTiersFile(path, nil)
	return doc, path, err
}

// startTiers seeds etcd with seed when it holds no tiers document (as the
// rules are seeded), then keeps the tiers in step with etcd, handing every
// tiers put in force to onChange (nil: none). It waits up to readyWait for
// the first read; the built-in tiers apply until then. Close stops it;
// call it before the store's client is closed.
func startTiers(ctx context.Context, store *etcd.Store, seed []byte, seedSource string, onChange func(*rules.Tiers), readyWait, commandTimeout time.Duration, log *slog.Logger) *tierSource {
	sctx, cancel := context.WithTimeout(ctx, commandTimeout)
	seeded, err := store.SeedTiers(sctx, seed)
	cancel()
	switch {
	case err != nil:
		log.Warn("could not seed the tiers document; the built-in tiers apply until etcd has one", slog.Any("error", err))
	case seeded:
		log.Info("etcd held no tiers document: seeded", slog.String("from", seedSource), slog.String("key", store.TiersKey()))
	}
	ts := &tierSource{store: store, done: make(chan struct{})}
	ts.watcher = etcd.NewTiersWatcher(etcd.TiersWatcherConfig{Store: store, Logger: log, OnChange: onChange})
	wctx, stop := context.WithCancel(context.Background())
	ts.stop = stop
	go func() {
		defer close(ts.done)
		ts.watcher.Run(wctx)
	}()
	select {
	case <-ts.watcher.Ready():
	case <-time.After(readyWait):
		log.Warn("no tiers from etcd yet; the built-in tiers apply", slog.Duration("waited", readyWait))
	case <-ctx.Done():
	}
	return ts
}

// Close stops the watcher.
func (ts *tierSource) Close() {
	ts.stop()
	<-ts.done
}

// Tiers returns the tiers in force.
func (ts *tierSource) Tiers() *rules.Tiers { return ts.watcher.Tiers() }

// TiersStatus says where the tiers in force come from.
func (ts *tierSource) TiersStatus() dashboardapi.TiersStatus {
	st := ts.watcher.Status()
	out := dashboardapi.TiersStatus{Source: st.Source, Revision: st.AppliedRevision, AppliedAt: st.AppliedAt}
	if r := st.LastRejection; r != nil {
		out.LastRejection = &dashboardapi.Rejection{Key: r.Key, Revision: r.Revision, Errors: r.Errors, At: r.At}
	}
	return out
}

// PutTiers writes the document and waits, briefly, until the watcher has
// put it in force, so that a client answered 200 sees it apply.
func (ts *tierSource) PutTiers(ctx context.Context, doc []byte) (int64, error) {
	rev, err := ts.store.PutTiers(ctx, doc)
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ts.watcher.WaitRevision(wctx, rev) // best effort: the write is in etcd either way
	return rev, nil
}
