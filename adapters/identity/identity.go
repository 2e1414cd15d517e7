package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/adapters/etcd"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// Config configures a Resolver.
type Config struct {
	// Client reads the API keys from etcd; nil: no API keys (a key is
	// refused as unknown).
	Client *clientv3.Client
	// Prefix is the etcd prefix of sluice's documents (default /sluice);
	// keys live under <prefix>/keys/.
	Prefix string
	// JWT turns on JSON Web Tokens; nil: a bearer that is not an API key is
	// refused.
	JWT *JWTConfig
	// Clock tells the time for tokens' exp, nbf and iat and the JWKS
	// refresh limit; nil: the system clock. (The backoff between listings
	// runs on real time.)
	Clock  clock.Clock
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before listing the keys
	// again after a failure (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
	// ProgressInterval is how long the key watch may be quiet before the
	// resolver asks etcd how far it has got (default 5s); a watch that
	// hears nothing for three intervals is dropped and the keys listed
	// again.
	ProgressInterval time.Duration
}

// Resolver turns a request's credential into an identity. Identify is safe
// for concurrent use; Run keeps its API keys in step with etcd.
type Resolver struct {
	client   *clientv3.Client
	prefix   string
	jwt      *verifier // nil: JWT off
	clock    clock.Clock
	log      *slog.Logger
	min, max time.Duration
	interval time.Duration

	keys    atomic.Pointer[keyTable]
	ready   chan struct{}
	readyMu sync.Once

	// beforeWatch, when set (tests), runs between a listing and the watch
	// that follows it.
	beforeWatch func(listRevision int64)
	// heard counts the watch's answers: changes and progress.
	heard atomic.Uint64

	mu      sync.Mutex
	rev     int64         // etcd revision of the table
	changed chan struct{} // closed and replaced when the table changes
}

// keyTable is an immutable snapshot of the keys, replaced whole.
type keyTable struct {
	byID    map[string]*keyEntry
	revoked map[string]struct{} // IDs deleted while this process watched
}

type keyEntry struct {
	hash [sha256.Size]byte
	id   tenant.Identity
}

// maxRevoked bounds the IDs remembered as revoked (to say "revoked"
// instead of "unknown").
const maxRevoked = 10000

// New makes a Resolver; Run starts it. It fails when the JWT configuration
// is invalid.
func New(cfg Config) (*Resolver, error) {
	r := &Resolver{
		client:   cfg.Client,
		prefix:   keysPrefix(cfg.Prefix),
		clock:    clock.Or(cfg.Clock),
		log:      cfg.Logger,
		min:      cfg.MinBackoff,
		max:      cfg.MaxBackoff,
		interval: cfg.ProgressInterval,
		ready:    make(chan struct{}),
		changed:  make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if cfg.JWT != nil {
		v, err := newVerifier(*cfg.JWT, r.clock, r.log)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		r.jwt = v
	}
	r.keys.Store(&keyTable{byID: map[string]*keyEntry{}, revoked: map[string]struct{}{}})
	return r, nil
}

// Ready is closed once Run has listed the keys (at once without etcd) and
// started the JWKS cache, if any.
func (r *Resolver) Ready() <-chan struct{} { return r.ready }

func (r *Resolver) markReady() { r.readyMu.Do(func() { close(r.ready) }) }

// Run keeps the keys in step with etcd and the JWKS cached until ctx ends.
// Failures never stop it: it lists again with backoff, and the keys last
// seen stay in force meanwhile.
func (r *Resolver) Run(ctx context.Context) error {
	if r.jwt != nil {
		stop, err := r.jwt.start(ctx)
		if err != nil {
			return fmt.Errorf("identity: %w", err)
		}
		defer stop()
	}
	if r.client == nil {
		r.markReady()
		<-ctx.Done()
		return nil
	}
	f := etcd.Follower{Client: r.client, Key: r.prefix, Prefix: true, Name: "API keys", Logger: r.log,
		Clock: r.clock, ProgressInterval: r.interval, MinBackoff: r.min, MaxBackoff: r.max,
		List: r.list, Apply: r.apply, Heard: r.heardAt, BeforeWatch: r.beforeWatch}
	f.Run(ctx)
	return nil
}

// list reads every key and replaces the table; it returns the listing's
// revision.
func (r *Resolver) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := r.client.Get(lctx, r.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", r.prefix, err)
	}
	old := r.keys.Load()
	t := &keyTable{byID: make(map[string]*keyEntry, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		r.put(t, kv.Key, kv.Value)
	}
	// Keys gone while the watch was down count as revoked too.
	revoked := revokedSet{m: old.revoked}
	for id := range old.byID {
		if _, ok := t.byID[id]; !ok {
			revoked.add(id)
		}
	}
	t.revoked = revoked.m
	r.swap(t, resp.Header.Revision)
	r.log.Info("API keys loaded from etcd", slog.Int("keys", len(t.byID)), slog.Int64("revision", resp.Header.Revision))
	r.markReady()
	return resp.Header.Revision, nil
}

// put adds a stored record to t, or logs why not.
func (r *Resolver) put(t *keyTable, key, value []byte) {
	rec, err := parseRecord(r.prefix, key, value)
	if err != nil {
		r.log.Warn("ignoring an API key record that does not parse", slog.String("key", string(key)), slog.Any("error", err))
		return
	}
	e := &keyEntry{id: keyIdentity(rec)}
	if _, err := hex.Decode(e.hash[:], []byte(rec.Hash)); err != nil {
		return // parseRecord checked it
	}
	t.byID[rec.ID] = e
}

// swap installs t as seen at revision rev.
func (r *Resolver) swap(t *keyTable, rev int64) {
	r.keys.Store(t)
	r.mu.Lock()
	r.rev = rev
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// WaitRevision waits until the key table reflects etcd revision rev or
// later, or ctx ends.
func (r *Resolver) WaitRevision(ctx context.Context, rev int64) error {
	for {
		r.mu.Lock()
		have, ch := r.rev, r.changed
		r.mu.Unlock()
		if have >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// apply takes the key changes after the listing, on a copy of the table
// that then replaces it.
func (r *Resolver) apply(events []*clientv3.Event) {
	old := r.keys.Load()
	t := &keyTable{byID: make(map[string]*keyEntry, len(old.byID)+len(events))}
	revoked := revokedSet{m: old.revoked}
	for id, e := range old.byID {
		t.byID[id] = e
	}
	for _, ev := range events {
		id := strings.TrimPrefix(string(ev.Kv.Key), r.prefix)
		if ev.Type == clientv3.EventTypeDelete {
			if _, ok := t.byID[id]; ok {
				delete(t.byID, id)
				revoked.add(id)
				r.log.Info("API key revoked", slog.String("key_id", id))
			}
			continue
		}
		delete(t.byID, id)
		r.put(t, ev.Kv.Key, ev.Kv.Value)
	}
	t.revoked = revoked.m
	r.swap(t, events[len(events)-1].Kv.ModRevision)
}

// heardAt records an answer of the watch at etcd revision rev: a quiet
// watch's progress moves the table's revision on (WaitRevision).
func (r *Resolver) heardAt(rev int64) {
	r.heard.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev > r.rev {
		r.rev = rev
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// revokedSet is the revoked IDs of a table being built: copied from the
// installed table's on the first change, since tables are immutable once
// installed.
type revokedSet struct {
	m      map[string]struct{}
	copied bool
}

func (s *revokedSet) add(id string) {
	if len(s.m) >= maxRevoked {
		return
	}
	if !s.copied {
		m := make(map[string]struct{}, len(s.m)+1)
		for k := range s.m {
			m[k] = struct{}{}
		}
		s.m, s.copied = m, true
	}
	s.m[id] = struct{}{}
}

// Reasons answered for credentials; none holds the credential.
const (
	reasonBothHeaders   = "Authorization and X-API-Key carry different credentials; send one"
	reasonManyHeaders   = "more than one Authorization or X-API-Key header; send one credential"
	reasonScheme        = "the Authorization header must be Bearer <API key or JWT>"
	reasonEmpty         = "the credential is empty"
	reasonMalformedKey  = "malformed API key: want sk_<id>_<secret> as `sluice keys create` prints it"
	reasonUnknownKey    = "unknown API key"
	reasonRevokedKey    = "the API key was revoked"
	reasonJWTOff        = "the bearer is not an API key (sk_...) and JWT is not configured"
	reasonXAPIKeyNotKey = "X-API-Key must hold an API key (sk_...)"
)

// refuse is the error of a credential refused for reason.
func refuse(reason string) error { return &tenant.AuthError{Reason: reason} }

// Identify says who sent req. Without a credential the caller is anonymous
// with origin as its tenant; a credential in Authorization (Bearer) or
// X-API-Key — both only when equal — is an API key when it starts with sk_,
// else a JWT. A credential that is present but wrong is a *tenant.AuthError.
func (r *Resolver) Identify(req *http.Request, origin string) (tenant.Identity, error) {
	auth, err := oneHeader(req.Header, "Authorization")
	if err != nil {
		return tenant.Identity{}, err
	}
	apiKey, err := oneHeader(req.Header, "X-Api-Key")
	if err != nil {
		return tenant.Identity{}, err
	}
	if auth == "" && apiKey == "" {
		return tenant.Identity{Tenant: origin, Tier: tenant.AnonymousTier, Kind: tenant.Anonymous}, nil
	}
	var bearer string
	if auth != "" {
		const scheme = "Bearer "
		if len(auth) < len(scheme) || !strings.EqualFold(auth[:len(scheme)], scheme) {
			return tenant.Identity{}, refuse(reasonScheme)
		}
		bearer = strings.TrimSpace(auth[len(scheme):])
		if bearer == "" {
			return tenant.Identity{}, refuse(reasonEmpty)
		}
	}
	apiKey = strings.TrimSpace(apiKey)
	switch {
	case bearer != "" && apiKey != "":
		if subtle.ConstantTimeCompare([]byte(bearer), []byte(apiKey)) != 1 {
			return tenant.Identity{}, refuse(reasonBothHeaders)
		}
	case bearer == "" && apiKey == "":
		return tenant.Identity{}, refuse(reasonEmpty)
	case bearer == "":
		if !strings.HasPrefix(apiKey, KeyPrefix) {
			return tenant.Identity{}, refuse(reasonXAPIKeyNotKey)
		}
		bearer = apiKey
	}
	if strings.HasPrefix(bearer, KeyPrefix) {
		return r.identifyKey(bearer)
	}
	if r.jwt == nil {
		return tenant.Identity{}, refuse(reasonJWTOff)
	}
	return r.jwt.identify(bearer)
}

// oneHeader returns the header's value, or an AuthError when it is sent
// more than once.
func oneHeader(h http.Header, name string) (string, error) {
	v := h[name]
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", refuse(reasonManyHeaders)
}

// ErrKeysNotLoaded is Identify's answer to an API key it cannot check
// yet: the keys have not been listed from etcd since the start. The HTTP
// API answers it 503 with Retry-After, never 401.
var ErrKeysNotLoaded = errors.New("identity: the API keys are not loaded from etcd yet")

// identifyKey looks an API key up: a map read and a constant-time compare
// of its hash.
func (r *Resolver) identifyKey(key string) (tenant.Identity, error) {
	id, ok := splitKey(key)
	if !ok {
		return tenant.Identity{}, refuse(reasonMalformedKey)
	}
	t := r.keys.Load()
	e, ok := t.byID[id]
	if !ok {
		select {
		case <-r.ready:
		default:
			// Not listed yet (etcd slow or down at start): the key may be
			// good, so say "try again" (503), not "unknown" (401).
			return tenant.Identity{}, ErrKeysNotLoaded
		}
		if _, gone := t.revoked[id]; gone {
			return tenant.Identity{}, refuse(reasonRevokedKey)
		}
		return tenant.Identity{}, refuse(reasonUnknownKey)
	}
	// splitKey bounded the key's length: hash it from a stack buffer, so a
	// request costs no allocation.
	var buf [maxKeyLen]byte
	sum := sha256.Sum256(append(buf[:0], key...))
	if subtle.ConstantTimeCompare(sum[:], e.hash[:]) != 1 {
		return tenant.Identity{}, refuse(reasonUnknownKey)
	}
	return e.id, nil
}
