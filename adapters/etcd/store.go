package etcd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/rules"
)

// DefaultPrefix is where sluice keeps its keys unless told otherwise.
const DefaultPrefix = "/sluice"

// ClientConfig says how to reach etcd, with etcdctl's options.
type ClientConfig struct {
	Endpoints          []string
	DialTimeout        time.Duration // default 5s
	CACert, Cert, Key  string        // TLS files; any set turns TLS on
	InsecureSkipVerify bool
	Username, Password string
	// KeepAliveTime and KeepAliveTimeout make the client ping etcd over a
	// connection quiet for KeepAliveTime and drop it when no answer comes
	// within KeepAliveTimeout (defaults 10s and 5s), even with no call in
	// flight: a half-open connection (a peer gone without a word, a
	// frozen network path) is found and dialled again instead of holding
	// watches that will never hear of a change. etcd refuses pings more
	// often than every 5s (its --grpc-keepalive-min-time).
	KeepAliveTime, KeepAliveTimeout time.Duration
}

// Default keepalives of NewClient.
const (
	DefaultKeepAliveTime    = 10 * time.Second
	DefaultKeepAliveTimeout = 5 * time.Second
)

// NewClient connects to etcd. The connection is made lazily; calls fail
// with a timeout while etcd cannot be reached.
func NewClient(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.KeepAliveTime <= 0 {
		cfg.KeepAliveTime = DefaultKeepAliveTime
	}
	if cfg.KeepAliveTimeout <= 0 {
		cfg.KeepAliveTimeout = DefaultKeepAliveTimeout
	}
	cc := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.KeepAliveTime,
		DialKeepAliveTimeout: cfg.KeepAliveTimeout,
		PermitWithoutStream:  true,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zapNop(),
	}
	if cfg.CACert != "" || cfg.Cert != "" || cfg.Key != "" || cfg.InsecureSkipVerify {
		t, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		cc.TLS = t
	}
	c, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return c, nil
}

func tlsConfig(cfg ClientConfig) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // only when asked for
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("etcd: CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd: CA certificate %s: no PEM certificates", cfg.CACert)
		}
		t.RootCAs = pool
	}
	if (cfg.Cert == "") != (cfg.Key == "") {
		return nil, errors.New("etcd: --cert and --key go together")
	}
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd: client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}

// Store reads and writes rule documents under a prefix. Every write
// validates the whole candidate rule set first and is conditional on the
// keys it read, so concurrent writers cannot lose each other's changes.
type Store struct {
	c      *clientv3.Client
	prefix string
}

// NewStore uses c under prefix (DefaultPrefix when empty).
func NewStore(c *clientv3.Client, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{c: c, prefix: strings.TrimSuffix(prefix, "/")}
}

// Client is the etcd client the store uses.
func (s *Store) Client() *clientv3.Client { return s.c }

// Prefix is the store's key prefix.
func (s *Store) Prefix() string { return s.prefix }

// RulesPrefix is the prefix every rule document's key starts with.
func (s *Store) RulesPrefix() string { return s.rulesPrefix() }

func (s *Store) rulesPrefix() string    { return s.prefix + "/rules/" }
func (s *Store) resourcePrefix() string { return s.prefix + "/rules/resources/" }
func (s *Store) systemKey() string      { return s.prefix + "/rules/system" }

// Key is the etcd key of a resource's document, or of the system document
// for "system".
func (s *Store) Key(name string) string {
	if name == "system" {
		return s.systemKey()
	}
	return s.resourcePrefix() + name
}

// Snapshot is the rule documents in etcd at one revision.
type Snapshot struct {
	Revision int64
	// Values maps each key to its document.
	Values map[string][]byte
	// ModRevisions maps each key to the revision that last wrote it.
	ModRevisions map[string]int64
}

// Load reads every rule document.
func (s *Store) Load(ctx context.Context) (*Snapshot, error) {
	resp, err := s.c.Get(ctx, s.rulesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: list %s: %w", s.rulesPrefix(), err)
	}
	snap := &Snapshot{Revision: resp.Header.Revision, Values: make(map[string][]byte, len(resp.Kvs)), ModRevisions: make(map[string]int64, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		snap.Values[string(kv.Key)] = kv.Value
		snap.ModRevisions[string(kv.Key)] = kv.ModRevision
	}
	return snap, nil
}

// Build parses every document of a snapshot's values and builds the rule
// set. Each key holds exactly one document, and it must be the document
// its key names. Errors name the key as the file.
func (s *Store) Build(values map[string][]byte) (*rules.Set, error) {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var (
		docs []rules.Document
		all  rules.Errors
	)
	for _, key := range keys {
		d, err := s.parseKey(key, values[key])
		if err != nil {
			var list rules.Errors
			if errors.As(err, &list) {
				all = append(all, list...)
				continue
			}
			all = append(all, &rules.Error{File: key, Msg: err.Error()})
			continue
		}
		docs = append(docs, d)
	}
	if len(all) > 0 {
		return nil, all
	}
	return rules.Build(docs)
}

// parseKey decodes the one document under key and checks it is the one the
// key names.
func (s *Store) parseKey(key string, value []byte) (rules.Document, error) {
	want, ok := s.nameOf(key)
	if !ok {
		return rules.Document{}, fmt.Errorf("unexpected key: rule documents live at %s<resource> and %s", s.resourcePrefix(), s.systemKey())
	}
	docs, err := rules.Parse(key, value)
	if err != nil {
		return rules.Document{}, err
	}
	if len(docs) != 1 {
		return rules.Document{}, fmt.Errorf("holds %d documents; a key holds exactly one", len(docs))
	}
	if got := docs[0].Name(); got != want {
		return rules.Document{}, fmt.Errorf("holds the document of %s; this key is for %s", got, want)
	}
	return docs[0], nil
}

func (s *Store) nameOf(key string) (string, bool) {
	if key == s.systemKey() {
		return "system", true
	}
	name, ok := strings.CutPrefix(key, s.resourcePrefix())
	return name, ok && name != "" && !strings.Contains(name, "/")
}

// Change says what a write did to one document.
type Change struct {
	Name   string // resource or "system"
	Key    string
	Action string // "created", "changed", "unchanged" or "deleted"
}

// Put validates doc (one document, YAML or JSON) as resource's document
// together with the rules in etcd, and writes it. resource is a resource
// name or "system".
func (s *Store) Put(ctx context.Context, resource string, doc []byte) (int64, error) {
	key := s.Key(resource)
	d, err := s.parseKey(key, doc)
	if err != nil {
		var list rules.Errors
		if errors.As(err, &list) {
			return 0, list
		}
		return 0, rules.Errors{{File: key, Msg: err.Error()}}
	}
	// On its own first, so that its problems carry their lines in doc
	// (Apply judges the form it would store).
	if _, err := rules.Build([]rules.Document{d}); err != nil {
		return 0, err
	}
	_, rev, err := s.Apply(ctx, []rules.Document{d})
	return rev, err
}

// Delete removes a resource's document (or the system document): its rules
// stop applying. It touches that key only: another key holding an invalid
// document does not stop it (the gateway keeps its last good rules until
// that one is fixed, with or without this document). Only a problem the
// delete itself would bring is refused.
func (s *Store) Delete(ctx context.Context, resource string) (int64, error) {
	key := s.Key(resource)
	_, rev, err := s.write(ctx, func(snap *Snapshot) ([]clientv3.Op, []Change, error) {
		if _, ok := snap.Values[key]; !ok {
			return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		next := maps.Clone(snap.Values)
		delete(next, key)
		if err := s.newProblems(snap.Values, next); err != nil {
			return nil, nil, err
		}
		return []clientv3.Op{clientv3.OpDelete(key)}, []Change{{Name: resource, Key: key, Action: "deleted"}}, nil
	})
	return rev, err
}

// newProblems validates the rule set after a change, and returns the
// problems it has that the set before did not have (nil when none): those
// the change brings.
func (s *Store) newProblems(before, after map[string][]byte) error {
	_, err := s.Build(after)
	var now rules.Errors
	if err == nil || !errors.As(err, &now) {
		return err
	}
	_, err = s.Build(before)
	var was rules.Errors
	errors.As(err, &was)
	old := make(map[string]bool, len(was))
	for _, e := range was {
		old[e.Error()] = true
	}
	var added rules.Errors
	for _, e := range now {
		if !old[e.Error()] {
			added = append(added, e)
		}
	}
	if len(added) == 0 {
		return nil
	}
	return added
}

// ErrNotFound is returned when deleting a document that is not there.
var ErrNotFound = errors.New("no such rule document")

// Apply writes documents in one transaction, after validating the rules
// they make together with the other documents in etcd. Documents equal to
// what etcd holds are left alone. It returns what changed.
func (s *Store) Apply(ctx context.Context, docs []rules.Document) ([]Change, int64, error) {
	return s.ApplySince(ctx, docs, nil)
}

// ErrChangedSince is ApplySince's refusal: a document's key changed in
// etcd after the snapshot it was compared with.
var ErrChangedSince = errors.New("changed in etcd since it was compared")

// ApplySince is Apply, refusing with ErrChangedSince (writing nothing)
// when the key of any of docs was written or deleted after seen: what an
// operator confirmed, compared with seen, is what is replaced. nil seen
// checks nothing.
func (s *Store) ApplySince(ctx context.Context, docs []rules.Document, seen *Snapshot) ([]Change, int64, error) {
	return s.write(ctx, func(snap *Snapshot) ([]clientv3.Op, []Change, error) {
		if seen != nil {
			for _, d := range docs {
				key := s.Key(d.Name())
				if was, now := seen.ModRevisions[key], snap.ModRevisions[key]; was != now {
					return nil, nil, fmt.Errorf("%s: %w (mod revision %d, now %d); nothing was written", key, ErrChangedSince, was, now)
				}
			}
		}
		next := maps.Clone(snap.Values)
		var (
			ops     []clientv3.Op
			changed []Change
		)
		for _, d := range docs {
			key := s.Key(d.Name())
			value, err := rules.Encode(d)
			if err != nil {
				return nil, nil, err
			}
			c := Change{Name: d.Name(), Key: key, Action: "created"}
			if old, ok := snap.Values[key]; ok {
				c.Action = "changed"
				if bytes.Equal(old, value) || s.sameDocument(key, old, d) {
					c.Action = "unchanged"
				}
			}
			changed = append(changed, c)
			if c.Action != "unchanged" {
				next[key] = value
				ops = append(ops, clientv3.OpPut(key, string(value)))
			}
		}
		if _, err := s.Build(next); err != nil {
			return nil, nil, err
		}
		return ops, changed, nil
	})
}

// Seed writes set's documents if etcd holds no rule documents at all, and
// reports whether it did.
func (s *Store) Seed(ctx context.Context, set *rules.Set) (bool, error) {
	seeded := false
	_, _, err := s.write(ctx, func(snap *Snapshot) ([]clientv3.Op, []Change, error) {
		seeded = false
		if len(snap.Values) > 0 {
			return nil, nil, nil
		}
		var ops []clientv3.Op
		for _, d := range set.Docs {
			value, err := rules.Encode(d)
			if err != nil {
				return nil, nil, err
			}
			ops = append(ops, clientv3.OpPut(s.Key(d.Name()), string(value)))
		}
		seeded = len(ops) > 0
		return ops, nil, nil
	})
	return seeded, err
}

// errConflict means another writer changed the documents between our read
// and our write.
var errConflict = errors.New("etcd: the rules changed while writing; try again")

// write reads a snapshot, lets plan decide the operations, and commits them
// only if none of the keys changed since the snapshot (nor appeared),
// retrying a few times when another writer got there first.
func (s *Store) write(ctx context.Context, plan func(*Snapshot) ([]clientv3.Op, []Change, error)) ([]Change, int64, error) {
	for range 3 {
		snap, err := s.Load(ctx)
		if err != nil {
			return nil, 0, err
		}
		ops, changes, err := plan(snap)
		if err != nil {
			return nil, 0, err
		}
		if len(ops) == 0 {
			return changes, snap.Revision, nil
		}
		// Nothing under the prefix may have changed since the snapshot: no
		// key written since (which also catches a new key appearing), and
		// every key read still there at the revision read (which catches a
		// key deleted meanwhile).
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.rulesPrefix()).WithPrefix(), "<", snap.Revision+1)}
		for k, rev := range snap.ModRevisions {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
		}
		resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, 0, fmt.Errorf("etcd: write rules: %w", err)
		}
		if resp.Succeeded {
			return changes, resp.Header.Revision, nil
		}
	}
	return nil, 0, errConflict
}

// sameDocument reports whether old, as stored under key, means the same as
// d: a document written by hand may differ in layout only.
func (s *Store) sameDocument(key string, old []byte, d rules.Document) bool {
	prev, err := s.parseKey(key, old)
	return err == nil && reflect.DeepEqual(prev.Resource, d.Resource) && reflect.DeepEqual(prev.System, d.System) && reflect.DeepEqual(prev.GPU, d.GPU)
}
