package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/httprc/v3/errsink"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
)

// DefaultJWTTier is the tier of a token without a tier claim.
const DefaultJWTTier = "registered"

// JWTConfig turns on JSON Web Tokens. A token is accepted when it is
// signed by one of the keys (JWKS or static) with an allowed algorithm,
// has not expired (exp is required), is valid already (nbf), and names
// the configured issuer and audience when they are set.
type JWTConfig struct {
	// JWKSURL is the issuer's JSON Web Key Set (http or https). It is
	// fetched when Run starts, cached, and fetched again when a token
	// names a kid it does not hold — at most once per MinRefresh.
	JWKSURL string
	// StaticKeys are public keys (*rsa.PublicKey, *ecdsa.PublicKey,
	// ed25519.PublicKey) tried when the JWKS has no key for a token.
	StaticKeys []crypto.PublicKey
	// KeyFiles are PEM files of public keys or certificates, added to
	// StaticKeys.
	KeyFiles []string
	// Algorithms are the allowed "alg" values (default RS256, ES256,
	// EdDSA); RS*, PS*, ES* and EdDSA are known. "none" and HMAC (HS*) are
	// refused: sluice holds no shared secrets.
	Algorithms []string
	// Issuer and Audience, when set, must be the token's iss and one of its
	// aud.
	Issuer, Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat (0: 30s;
	// negative: none).
	Leeway time.Duration
	// TenantClaim names the claim that holds the tenant (default "sub");
	// it must be a valid tenant name (see ValidateTenant).
	TenantClaim string
	// TierClaim names the claim that holds the tier (default "tier"); a
	// token without it is in DefaultJWTTier.
	TierClaim string
	// HTTPClient fetches the JWKS (default: a client with a 10s timeout).
	HTTPClient *http.Client
	// MinRefresh is the least time between two fetches of the JWKS caused
	// by unknown kids (default 30s), so that tokens with random kids cannot
	// make sluice hammer the issuer.
	MinRefresh time.Duration
}

// knownAlgs are the algorithms sluice can verify, with the key type each
// needs.
var knownAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// keyFits reports whether key may verify a token signed with alg: an RSA
// key (2048 bits or more) for RS*/PS*, an EC key on the alg's curve for
// ES*, an Ed25519 key for EdDSA. Nothing else, so no key is ever used with
// another family's algorithm.
func keyFits(alg string, key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return (strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")) && k.N.BitLen() >= 2048
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// verifier checks JWTs.
type verifier struct {
	parser      *jwt.Parser
	algs        []string
	static      []crypto.PublicKey
	jwksURL     string
	httpClient  *http.Client
	minRefresh  time.Duration
	tenantClaim string
	tierClaim   string
	clock       clock.Clock
	log         *slog.Logger

	cache    atomic.Pointer[jwk.Cache]
	resource atomic.Pointer[httprc.ResourceBase[jwk.Set]]
	keys     atomic.Pointer[jwksKeys] // derived from the resource's set

	refreshMu   sync.Mutex
	lastRefresh time.Time // guarded by refreshMu
}

// jwksKeys are a JWKS's usable keys, by kid.
type jwksKeys struct {
	set   jwk.Set
	byKID map[string]jwksKey
	all   []jwksKey
}

type jwksKey struct {
	alg string // "" when the JWK does not say
	pub any
}

func newVerifier(cfg JWTConfig, clk clock.Clock, log *slog.Logger) (*verifier, error) {
	v := &verifier{
		jwksURL:     cfg.JWKSURL,
		httpClient:  cfg.HTTPClient,
		minRefresh:  cfg.MinRefresh,
		tenantClaim: cfg.TenantClaim,
		tierClaim:   cfg.TierClaim,
		clock:       clk,
		log:         log,
	}
	if v.httpClient == nil {
		v.httpClient = &http.Client{Timeout: 10 * time.Second}
	}
	if v.minRefresh <= 0 {
		v.minRefresh = 30 * time.Second
	}
	if v.tenantClaim == "" {
		v.tenantClaim = "sub"
	}
	if v.tierClaim == "" {
		v.tierClaim = "tier"
	}
	v.algs = cfg.Algorithms
	if len(v.algs) == 0 {
		v.algs = []string{"RS256", "ES256", "EdDSA"}
	}
	for _, a := range v.algs {
		switch {
		case strings.EqualFold(a, "none"):
			return nil, errors.New(`jwt: algorithm "none" is never allowed`)
		case strings.HasPrefix(strings.ToUpper(a), "HS"):
			return nil, fmt.Errorf("jwt: algorithm %q is HMAC (a shared secret); only public-key algorithms are allowed: %s", a, strings.Join(knownAlgs, ", "))
		case !slices.Contains(knownAlgs, a):
			return nil, fmt.Errorf("jwt: unknown algorithm %q; known: %s", a, strings.Join(knownAlgs, ", "))
		}
	}
	if v.jwksURL != "" {
		u, err := url.Parse(v.jwksURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("jwt: JWKS URL %q: want an http or https URL", v.jwksURL)
		}
	}
	for i, k := range cfg.StaticKeys {
		if err := checkStatic(k); err != nil {
			return nil, fmt.Errorf("jwt: static key %d: %w", i, err)
		}
		v.static = append(v.static, k)
	}
	for _, f := range cfg.KeyFiles {
		keys, err := readKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("jwt: %w", err)
		}
		v.static = append(v.static, keys...)
	}
	if v.jwksURL == "" && len(v.static) == 0 {
		return nil, errors.New("jwt: needs a JWKS URL or static public keys")
	}
	leeway := cfg.Leeway
	switch {
	case leeway == 0:
		leeway = 30 * time.Second
	case leeway < 0:
		leeway = 0
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.algs),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(clk.Now),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

func checkStatic(k crypto.PublicKey) error {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits; at least 2048 are needed", k.N.BitLen())
		}
		return nil
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("%T is not an RSA, ECDSA or Ed25519 public key", k)
}

// readKeyFile reads the public keys and certificates of a PEM file.
func readKeyFile(name string) ([]crypto.PublicKey, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	var out []crypto.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		var k any
		switch b.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(b.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(b.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(b.Bytes); err == nil {
				k = c.PublicKey
			}
		default:
			return nil, fmt.Errorf("key file %s: a %q block; want PUBLIC KEY or CERTIFICATE (never a private key)", name, b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("key file %s: %w", name, err)
		}
		if err := checkStatic(k); err != nil {
			return nil, fmt.Errorf("key file %s: %w", name, err)
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("key file %s holds no PEM public key", name)
	}
	return out, nil
}

// start starts the JWKS cache, when there is a JWKS URL; stop shuts it
// down.
func (v *verifier) start(ctx context.Context) (stop func(), err error) {
	if v.jwksURL == "" {
		return func() {}, nil
	}
	sink := errsink.NewFunc(func(_ context.Context, err error) {
		v.log.Warn("cannot refresh the JWKS; keeping the keys last fetched", slog.String("url", v.jwksURL), slog.Any("error", err))
	})
	cache, err := jwk.NewCache(ctx, httprc.NewClient(httprc.WithHTTPClient(v.httpClient), httprc.WithErrorSink(sink)))
	if err != nil {
		return nil, fmt.Errorf("jwks cache: %w", err)
	}
	stop = func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := cache.Shutdown(sctx); err != nil {
			v.log.Debug("jwks cache shutdown", slog.Any("error", err))
		}
	}
	if err := cache.Register(ctx, v.jwksURL, jwk.WithHTTPClient(v.httpClient), jwk.WithWaitReady(false)); err != nil {
		stop()
		return nil, fmt.Errorf("jwks cache: %w", err)
	}
	res, err := cache.LookupResource(ctx, v.jwksURL)
	if err != nil {
		stop()
		return nil, fmt.Errorf("jwks cache: %w", err)
	}
	v.cache.Store(cache)
	v.resource.Store(res)
	return stop, nil
}

// current returns the JWKS's keys as last fetched (nil before the first
// fetch).
func (v *verifier) current() *jwksKeys {
	res := v.resource.Load()
	if res == nil {
		return nil
	}
	set := res.Resource()
	if set == nil {
		return nil
	}
	if k := v.keys.Load(); k != nil && k.set == set {
		return k
	}
	k := &jwksKeys{set: set, byKID: map[string]jwksKey{}}
	for i := range set.Len() {
		key, ok := set.Key(i)
		if !ok {
			continue
		}
		if use, ok := key.KeyUsage(); ok && use != "sig" {
			continue // an encryption key never verifies a token
		}
		pub, err := jwk.PublicRawKeyOf(key)
		if err != nil {
			continue
		}
		var e jwksKey
		e.pub = pub
		if a, ok := key.Algorithm(); ok {
			e.alg = a.String()
		}
		k.all = append(k.all, e)
		if kid, ok := key.KeyID(); ok && kid != "" {
			k.byKID[kid] = e
		}
	}
	v.keys.Store(k)
	return k
}

// currentOrFetch returns the JWKS's keys, fetching them first (within the
// refresh limit) when none has been fetched yet.
func (v *verifier) currentOrFetch() *jwksKeys {
	if k := v.current(); k != nil {
		return k
	}
	v.refresh()
	return v.current()
}

// refresh fetches the JWKS again, unless it was fetched for an unknown kid
// less than MinRefresh ago. Callers wait for a fetch under way.
func (v *verifier) refresh() {
	cache := v.cache.Load()
	if cache == nil {
		return
	}
	v.refreshMu.Lock()
	defer v.refreshMu.Unlock()
	now := v.clock.Now()
	if !v.lastRefresh.IsZero() && now.Sub(v.lastRefresh) < v.minRefresh {
		return
	}
	v.lastRefresh = now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cache.Refresh(ctx, v.jwksURL); err != nil {
		v.log.Warn("cannot fetch the JWKS", slog.String("url", v.jwksURL), slog.Any("error", err))
	}
}

// keyError is a keyfunc's refusal, carried through jwt's error.
type keyError struct{ reason string }

func (e *keyError) Error() string { return e.reason }

// keyFor finds the keys that may verify t.
func (v *verifier) keyFor(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	if v.jwksURL != "" {
		if kid != "" {
			keys := v.current()
			e, ok := jwksKey{}, false
			if keys != nil {
				e, ok = keys.byKID[kid]
			}
			if !ok {
				v.refresh()
				if keys = v.current(); keys != nil {
					e, ok = keys.byKID[kid]
				}
			}
			if ok {
				if (e.alg != "" && e.alg != alg) || !keyFits(alg, e.pub) {
					return nil, &keyError{"the key named by kid is not for alg " + alg}
				}
				return e.pub, nil
			}
		} else if keys := v.currentOrFetch(); keys != nil {
			var set jwt.VerificationKeySet
			for _, e := range keys.all {
				if (e.alg == "" || e.alg == alg) && keyFits(alg, e.pub) {
					set.Keys = append(set.Keys, e.pub)
				}
			}
			set.Keys = append(set.Keys, v.fitting(alg)...)
			if len(set.Keys) > 0 {
				return set, nil
			}
		}
	}
	if keys := v.fitting(alg); len(keys) > 0 {
		return jwt.VerificationKeySet{Keys: keys}, nil
	}
	if kid != "" {
		return nil, &keyError{"unknown key ID (kid): the issuer's key set does not hold it"}
	}
	return nil, &keyError{"no key for alg " + alg}
}

// fitting returns the static keys that may verify alg.
func (v *verifier) fitting(alg string) []jwt.VerificationKey {
	var out []jwt.VerificationKey
	for _, k := range v.static {
		if keyFits(alg, k) {
			out = append(out, k)
		}
	}
	return out
}

// identify verifies a token and reads its tenant and tier.
func (v *verifier) identify(token string) (tenant.Identity, error) {
	claims := jwt.MapClaims{}
	t, err := v.parser.ParseWithClaims(token, claims, v.keyFor)
	if err != nil {
		return tenant.Identity{}, refuse(v.reason(t, err))
	}
	sub, ok := claims[v.tenantClaim].(string)
	if !ok || sub == "" {
		return tenant.Identity{}, refuse(fmt.Sprintf("the token has no %s claim (a string naming the tenant)", v.tenantClaim))
	}
	if err := ValidateTenant(sub); err != nil {
		return tenant.Identity{}, refuse(fmt.Sprintf("the token's %s claim is not a valid tenant: %v", v.tenantClaim, err))
	}
	tier := DefaultJWTTier
	if raw, ok := claims[v.tierClaim]; ok {
		s, ok := raw.(string)
		if !ok {
			return tenant.Identity{}, refuse(fmt.Sprintf("the token's %s claim is not a string", v.tierClaim))
		}
		if err := ValidateTier(s); err != nil {
			return tenant.Identity{}, refuse(fmt.Sprintf("the token's %s claim is not a valid tier: %v", v.tierClaim, err))
		}
		tier = s
	}
	cred := "jwt"
	if iss, _ := claims["iss"].(string); iss != "" {
		cred = "jwt " + iss
	}
	return tenant.Identity{Tenant: sub, Tier: tier, Kind: tenant.JWT, Credential: cred}, nil
}

// reason says why a token was refused, without the token.
func (v *verifier) reason(t *jwt.Token, err error) string {
	var ke *keyError
	if errors.As(err, &ke) {
		return ke.reason
	}
	if t != nil && (errors.Is(err, jwt.ErrTokenSignatureInvalid) || errors.Is(err, jwt.ErrTokenUnverifiable)) {
		alg, _ := t.Header["alg"].(string)
		if !slices.Contains(v.algs, alg) {
			shown := "this alg"
			if alg == "none" || slices.Contains(knownAlgs, alg) || strings.HasPrefix(alg, "HS") && len(alg) <= 5 {
				shown = "alg " + alg
			}
			return shown + " is not allowed; allowed: " + strings.Join(v.algs, ", ")
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired (exp)"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "the token is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the token was issued in the future (iat)"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer (iss)"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience (aud)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "the token lacks a required claim (exp, and iss and aud when configured)"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "the token cannot be verified"
	}
	return "invalid token"
}
