// Package identity says who is calling: it turns a request's credential
// into a tenant.Identity. A request without a credential is anonymous (its
// tenant is its origin); one with an API key or a JWT is identified, with
// the tenant and tier the credential names; one whose credential is present
// but wrong gets a *tenant.AuthError, never an anonymous identity.
//
// API keys are random, shown once when made (CreateKey), and stored in etcd
// only as a SHA-256 hash under <prefix>/keys/<id> with their tenant, tier,
// name and creation time. A Resolver lists and watches that prefix, so a
// key revoked on one replica (RevokeKey) is refused by every replica within
// the watch's delay; a request costs a map read and a constant-time compare,
// never a call to etcd.
//
// JWTs are verified with github.com/golang-jwt/jwt/v5 against static public
// keys or a JWKS URL cached with github.com/lestrrat-go/jwx/v3 (refreshed on
// an unknown kid, at most once per MinRefresh). Only asymmetric algorithms
// are allowed, and a key is used only with its own algorithm family.
//
//	r, err := identity.New(identity.Config{Client: etcdClient})
//	go r.Run(ctx)
//	<-r.Ready()
//	id, err := r.Identify(req, origin)
//
// Keys and tokens never appear in the package's logs or errors: an
// AuthError's Reason names what is wrong, and a key is named by its ID.
package identity
