package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// KeyPrefix is the text every API key starts with.
const KeyPrefix = "sk_"

const (
	idBytes     = 8  // a key ID is 16 hex digits
	secretBytes = 32 // a key's secret is 32 random bytes, base64url
	// maxKeyLen is a key's length: sk_, the ID, _ and the secret.
	maxKeyLen = len(KeyPrefix) + 2*idBytes + 1 + (secretBytes*8+5)/6
)

// KeySpec says whom a new key is for.
type KeySpec struct {
	// Tenant is who the key bills: see ValidateTenant.
	Tenant string
	// Tier names the key's service tier: see ValidateTier.
	Tier string
	// Name says what the key is for ("ci", "alice's laptop"); optional.
	Name string
}

// KeyRecord is a key as etcd holds it: its hash, never the key.
type KeyRecord struct {
	ID      string    `json:"id"`
	Hash    string    `json:"hash"` // hex SHA-256 of the whole key
	Tenant  string    `json:"tenant"`
	Tier    string    `json:"tier"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// ErrKeyNotFound is returned, wrapped, when a key ID names no key.
var ErrKeyNotFound = errors.New("no such key")

// ErrInvalidSpec is returned, wrapped, when a KeySpec is not valid.
var ErrInvalidSpec = errors.New("invalid key")

const maxNameLen = 128

// ValidateTenant checks an identified tenant's name: 1 to 128 characters
// of a-z, 0-9 and . _ @ -, starting with a letter or digit, and never an
// IP address or prefix, so an identified tenant cannot be taken for an
// anonymous origin.
func ValidateTenant(name string) error {
	if name == "" {
		return errors.New("tenant is empty")
	}
	if len(name) > 128 {
		return fmt.Errorf("tenant is %d characters long, at most 128 are allowed", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '@' || c == '-'):
		default:
			return fmt.Errorf("tenant %q: only a-z, 0-9 and . _ @ - are allowed, starting with a letter or digit", name)
		}
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("tenant %q looks like an IP address, which names anonymous callers", name)
	}
	if _, err := netip.ParsePrefix(name); err == nil {
		return fmt.Errorf("tenant %q looks like an IP prefix, which names anonymous callers", name)
	}
	return nil
}

// ValidateTier checks a tier name's syntax: 1 to 64 characters of a-z, 0-9,
// _ and -, starting with a letter. Whether the tier exists is for the tiers
// document to say.
func ValidateTier(name string) error {
	if name == "" {
		return errors.New("tier is empty")
	}
	if len(name) > 64 {
		return fmt.Errorf("tier is %d characters long, at most 64 are allowed", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("tier %q: only a-z, 0-9, _ and - are allowed, starting with a letter", name)
		}
	}
	return nil
}

// Validate checks every field of s; the error names each one wrong.
func (s KeySpec) Validate() error {
	var errs []error
	if err := ValidateTenant(s.Tenant); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateTier(s.Tier); err != nil {
		errs = append(errs, err)
	}
	if len(s.Name) > maxNameLen {
		errs = append(errs, fmt.Errorf("name is %d bytes long, at most %d are allowed", len(s.Name), maxNameLen))
	}
	for _, r := range s.Name {
		if r < 0x20 || r == 0x7f {
			errs = append(errs, errors.New("name holds a control character"))
			break
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, errors.Join(errs...))
	}
	return nil
}

// keysPrefix is where the keys live: <prefix>/keys/.
func keysPrefix(prefix string) string {
	if prefix == "" {
		prefix = etcd.DefaultPrefix
	}
	return strings.TrimSuffix(prefix, "/") + "/keys/"
}

// hashKey is the hex SHA-256 of a whole key, as stored.
func hashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// validID reports whether id has the form of a key ID (16 hex digits).
func validID(id string) bool {
	if len(id) != 2*idBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// splitKey returns a key's ID, or false when key does not have the form
// sk_<id>_<secret>.
func splitKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok {
		return "", false
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || !validID(id) || len(secret) != base64.RawURLEncoding.EncodedLen(secretBytes) {
		return "", false
	}
	return id, true
}

// CreateKey makes a key for spec, stores its hash in etcd under prefix
// (etcd.DefaultPrefix when empty) and returns the key — the only time it is
// ever seen — and its record.
func CreateKey(ctx context.Context, c *clientv3.Client, prefix string, spec KeySpec, clk clock.Clock) (string, KeyRecord, error) {
	if err := spec.Validate(); err != nil {
		return "", KeyRecord{}, err
	}
	var raw [idBytes + secretBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", KeyRecord{}, fmt.Errorf("create key: reading random bytes: %w", err)
	}
	id := hex.EncodeToString(raw[:idBytes])
	key := KeyPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(raw[idBytes:])
	rec := KeyRecord{ID: id, Hash: hashKey(key), Tenant: spec.Tenant, Tier: spec.Tier, Name: spec.Name,
		Created: clock.Or(clk).Now().UTC().Truncate(time.Second)}
	val, err := json.Marshal(rec)
	if err != nil {
		return "", KeyRecord{}, fmt.Errorf("create key: %w", err)
	}
	k := keysPrefix(prefix) + id
	resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, string(val))).Commit()
	if err != nil {
		return "", KeyRecord{}, fmt.Errorf("create key: writing %s: %w", k, err)
	}
	if !resp.Succeeded {
		return "", KeyRecord{}, fmt.Errorf("create key: key ID %s is taken; try again", id)
	}
	return key, rec, nil
}

// ListKeys returns every key's record under prefix, oldest first. Records
// that do not parse are skipped.
func ListKeys(ctx context.Context, c *clientv3.Client, prefix string) ([]KeyRecord, error) {
	p := keysPrefix(prefix)
	resp, err := c.Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list keys under %s: %w", p, err)
	}
	out := make([]KeyRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		rec, err := parseRecord(p, kv.Key, kv.Value)
		if err != nil {
			continue
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b KeyRecord) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// RevokeKey deletes the key with ID id; every Resolver refuses it once its
// watch sees the deletion. An ID that names no key is ErrKeyNotFound.
func RevokeKey(ctx context.Context, c *clientv3.Client, prefix string, id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: %q is not a key ID (16 hex digits, as `sluice keys list` shows them)", ErrKeyNotFound, id)
	}
	k := keysPrefix(prefix) + id
	resp, err := c.Delete(ctx, k)
	if err != nil {
		return fmt.Errorf("revoke key %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: no key with ID %s", ErrKeyNotFound, id)
	}
	return nil
}

// parseRecord reads a stored key record and checks it against its etcd key.
func parseRecord(prefix string, key, value []byte) (KeyRecord, error) {
	var rec KeyRecord
	dec := json.NewDecoder(strings.NewReader(string(value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return KeyRecord{}, fmt.Errorf("%s: %w", key, err)
	}
	id := strings.TrimPrefix(string(key), prefix)
	switch {
	case rec.ID != id || !validID(id):
		return KeyRecord{}, fmt.Errorf("%s: the record's id %q does not match its etcd key", key, rec.ID)
	case len(rec.Hash) != 2*sha256.Size:
		return KeyRecord{}, fmt.Errorf("%s: hash is not a hex SHA-256", key)
	}
	if _, err := hex.DecodeString(rec.Hash); err != nil {
		return KeyRecord{}, fmt.Errorf("%s: hash is not a hex SHA-256", key)
	}
	if err := ValidateTenant(rec.Tenant); err != nil {
		return KeyRecord{}, fmt.Errorf("%s: %w", key, err)
	}
	if err := ValidateTier(rec.Tier); err != nil {
		return KeyRecord{}, fmt.Errorf("%s: %w", key, err)
	}
	return rec, nil
}

// keyIdentity is what a known key resolves to.
func keyIdentity(rec KeyRecord) tenant.Identity {
	return tenant.Identity{Tenant: rec.Tenant, Tier: rec.Tier, Kind: tenant.APIKey, Credential: "key " + rec.ID}
}
