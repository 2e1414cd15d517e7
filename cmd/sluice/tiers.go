package main

import (
	"context"
	"encoding/json"
	"errors"
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

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/adapters/etcd"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
	"github.com/sluicehq/sluice/rules"
)

func newTiersCmd(s streams) *cobra.Command {
	var ef etcdFlags
	c := newGroupCmd("tiers", "Read, check and apply the service tiers in etcd",
		`tiers manages the service tiers document at <prefix>/tiers: each tier's daily quota,
rate and priority, and the time zone the quota days start in. Without a document the
built-in tiers apply. Every gateway follows a change within a second.`,
		`  sluice tiers get
  sluice tiers validate tiers.yaml
  sluice tiers apply tiers.yaml`,
		newTiersGetCmd(s, &ef), newTiersApplyCmd(s, &ef), newTiersValidateCmd(s))
	ef.register(c.PersistentFlags())
	return c
}

func newTiersGetCmd(s streams, ef *etcdFlags) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "get",
		Short: "Print the tiers document in etcd (or say the built-in tiers apply)",
		Long: `get prints the tiers document in etcd as stored (YAML), or as JSON with its source ("etcd"
or "built-in") and revision. Without a document it prints the built-in tiers.`,
		Example: `  sluice tiers get
  sluice tiers get -o json`,
		Args: noArgs,
		PreRunE: func(c *cobra.Command, _ []string) error {
			return oneOf(c, "output", output, "yaml", "json")
		},
		RunE: func(c *cobra.Command, _ []string) error {
			return tiersGet(c.Context(), ef, output, s.out)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "yaml", "output format: yaml or json")
	return c
}

func newTiersValidateCmd(s streams) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a tiers file locally, without etcd",
		Long:  `validate checks a tiers file with the messages the gateway gives, without etcd.`,
		Example: `  sluice tiers validate tiers.yaml
  sluice tiers validate -f tiers.yaml`,
		Args: maxArgs(1, "one FILE"),
		RunE: func(_ *cobra.Command, args []string) error {
			_, ts, err := readTiersFile(file, args)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "%s: %d tiers, valid (quota days start at midnight %s)\n", tiersFileName(file, args), len(ts.Tiers), ts.Timezone)
			return nil
		},
	}
	c.Flags().StringVarP(&file, "filename", "f", "", "tiers file (or give it as the argument)")
	return c
}

func newTiersApplyCmd(s streams, ef *etcdFlags) *cobra.Command {
	var (
		file string
		yes  bool
	)
	c := &cobra.Command{
		Use:   "apply FILE",
		Short: "Validate a tiers file, then write it as the tiers document",
		Long: `apply validates FILE, then writes it as the tiers document. The document replaces the
tiers in force whole: when it lacks a tier they have (those of etcd's document, else
the built-in ones), apply asks on the terminal first; --yes skips the question, and
without a terminal and without --yes it refuses (exit 3), naming the tiers lost. Keys
of a lost tier are refused (403) until a tier of that name is back.`,
		Example: `  sluice tiers apply tiers.yaml
  sluice tiers apply -f tiers.yaml --yes`,
		Args: maxArgs(1, "one FILE"),
		RunE: func(c *cobra.Command, args []string) error {
			doc, ts, err := readTiersFile(file, args)
			if err != nil {
				return err
			}
			return tiersApply(c.Context(), s, ef, doc, ts, tiersFileName(file, args), yes)
		},
	}
	c.Flags().StringVarP(&file, "filename", "f", "", "tiers file (or give it as the argument)")
	c.Flags().BoolVarP(&yes, "yes", "y", false, "apply without asking, even when tiers are lost")
	return c
}

// tiersApply writes doc (ts, read from name) as the tiers document, after
// the confirmation when it loses tiers.
func tiersApply(ctx context.Context, s streams, ef *etcdFlags, doc []byte, ts *rules.Tiers, name string, yes bool) error {
	store, closeStore, err := ef.connect()
	if err != nil {
		return err
	}
	defer closeStore()
	gctx, cancel := context.WithTimeout(ctx, ef.commandTimeout)
	d, err := store.GetTiers(gctx)
	cancel()
	if err != nil {
		return classify(err)
	}
	inForce := rules.DefaultTiers()
	if len(d.Value) > 0 {
		if inForce, err = rules.ParseTiers(store.TiersKey(), d.Value); err != nil {
			inForce = &rules.Tiers{} // an invalid document: nothing is in force from it
		}
	}
	var lost []string
	for _, t := range inForce.Tiers {
		if _, ok := ts.Tier(t.Name); !ok {
			lost = append(lost, "tier "+t.Name)
		}
	}
	if err := confirm(s, yes, "applying "+name, lost); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, ef.commandTimeout)
	defer cancel()
	rev, err := store.PutTiersSince(wctx, doc, d.ModRevision)
	if err != nil {
		return classify(err)
	}
	fmt.Fprintf(s.out, "tiers written to %s\nrevision %d\n", store.TiersKey(), rev)
	return nil
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
		return nil, nil, usagef("give one tiers FILE, as the argument or with -f")
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
