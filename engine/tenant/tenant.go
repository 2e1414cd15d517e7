// Package tenant names who is calling: an anonymous client known by its
// origin, or a tenant identified by an API key or a JWT, with the service
// tier that sets its daily quota, its jobs in flight and its priority for
// the GPUs. It holds only plain types shared by the identity, quota,
// dispatch and HTTP packages; it does no I/O.
package tenant

import (
	"errors"
	"fmt"
	"time"
)

// Kind is how a caller was identified.
type Kind uint8

const (
	// Anonymous callers carry no credential: their tenant is their origin
	// (an IPv4 address or an IPv6 prefix).
	Anonymous Kind = iota
	// APIKey callers sent a key sluice issued (Authorization: Bearer or
	// X-API-Key).
	APIKey
	// JWT callers sent a token signed by a configured issuer.
	JWT
)

// String returns "anonymous", "key" or "jwt".
func (k Kind) String() string {
	switch k {
	case APIKey:
		return "key"
	case JWT:
		return "jwt"
	default:
		return "anonymous"
	}
}

// AnonymousTier is the tier every anonymous caller is in; the tiers
// document must define it.
const AnonymousTier = "anonymous"

// Identity is who a request comes from.
type Identity struct {
	// Tenant is who is billed: the origin for an anonymous caller, the
	// key's or token's tenant otherwise. Identified tenants never look
	// like an IP address or prefix, so the two cannot collide.
	Tenant string
	// Tier names the caller's service tier (AnonymousTier when anonymous).
	Tier string
	// Kind says how the caller was identified.
	Kind Kind
	// Credential names the credential without revealing it: the key's ID
	// ("key 3f9c2a…"), or "jwt" with the issuer. Never the secret.
	Credential string
}

// Anonymous reports whether the caller carried no credential.
func (id Identity) Anonymous() bool { return id.Kind == Anonymous }

// Class is a priority class in the GPU queue: a higher class is served
// first.
type Class int8

const (
	Low    Class = 0
	Medium Class = 1
	High   Class = 2
)

// String returns "low", "medium" or "high".
func (c Class) String() string {
	switch c {
	case Medium:
		return "medium"
	case High:
		return "high"
	default:
		return "low"
	}
}

// ParseClass reads "low", "medium" or "high".
func ParseClass(s string) (Class, error) {
	switch s {
	case "low":
		return Low, nil
	case "medium":
		return Medium, nil
	case "high":
		return High, nil
	}
	return Low, fmt.Errorf("priority %q: want low, medium or high", s)
}

// AuthError says why a credential that was sent is refused (unknown or
// revoked key, bad signature, expired token). It is answered 401 with
// WWW-Authenticate; it never falls back to anonymous. Reason is safe to
// show the caller and to log: it never holds the credential itself.
type AuthError struct {
	// Scheme is the WWW-Authenticate scheme, "Bearer" unless set.
	Scheme string
	Reason string
}

func (e *AuthError) Error() string { return "unauthorized: " + e.Reason }

// Unlimited is the quota limit of a tier without a daily quota.
const Unlimited int64 = -1

// Usage is a tenant's quota for one day.
type Usage struct {
	// Day is the quota day, "2006-01-02" in the tiers' time zone.
	Day string
	// Used is what the tenant spent that day (jobs or cost units).
	Used int64
	// Limit is the tier's daily quota, or Unlimited.
	Limit int64
	// Reset is when the next day starts.
	Reset time.Time
}

// Remaining is what is left of the quota (0 when spent, -1 when
// unlimited).
func (u Usage) Remaining() int64 {
	if u.Limit == Unlimited {
		return -1
	}
	return max(u.Limit-u.Used, 0)
}

// Ticket is a quota charge, kept to refund it to the day it was charged
// to (a job taken at 23:59 and failed at 00:01 refunds yesterday).
type Ticket struct {
	Tenant string
	Day    string
	Units  int64
}

// ErrQuotaContended is what a quota store answers, wrapped, when other
// replicas kept changing a tenant's count while it tried to charge it: the
// store works, that tenant is busy. It is no reason to leave the store
// alone for every tenant.
var ErrQuotaContended = errors.New("the count kept changing while writing")

// QuotaExceeded is the error of a quota take that would pass the day's
// limit; Usage is the tenant's usage as it stands (nothing taken).
type QuotaExceeded struct {
	Usage Usage
}

func (e *QuotaExceeded) Error() string {
	return fmt.Sprintf("daily quota exceeded: %d of %d used on %s; it resets at %s",
		e.Usage.Used, e.Usage.Limit, e.Usage.Day, e.Usage.Reset.UTC().Format(time.RFC3339))
}
