package dashboardapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine"
	"github.com/sluicehq/sluice/rules"
)

// The values of GET /api/blocked's shadow parameter.
const (
	shadowInclude = "include" // refusals and would-refusals (the default)
	shadowOnly    = "only"    // what shadow rules would have refused
	shadowExclude = "exclude" // real refusals only
)

// blockedFilter is the query of GET /api/blocked.
type blockedFilter struct {
	limit    int
	resource string
	kind     engine.Kind
	client   string
	// origin is client as an origin: canonicalised as the public API
	// records origins (see canonicalOrigin).
	origin string
	shadow string
}

func (f *blockedFilter) match(b engine.Blocked) bool {
	switch {
	case f.resource != "" && b.Resource != f.resource,
		f.kind != "" && b.Kind != f.kind,
		f.client != "" && b.Origin != f.origin && b.Tenant != f.client,
		f.shadow == shadowOnly && !b.Shadow,
		f.shadow == shadowExclude && b.Shadow:
		return false
	}
	return true
}

// parseBlockedFilter reads GET /api/blocked's query, or says what is wrong
// with it.
func parseBlockedFilter(c *gin.Context, ipv6Bits int) (*blockedFilter, string) {
	f := &blockedFilter{limit: defaultBlockedLimit, shadow: shadowInclude}
	if s, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxBlockedLimit {
			return nil, fmt.Sprintf("limit must be an integer from 1 to %d; got %q", maxBlockedLimit, s)
		}
		f.limit = n
	}
	if s, ok := c.GetQuery("resource"); ok {
		if !slices.Contains(rules.Resources, s) {
			return nil, fmt.Sprintf("resource must be one of %s; got %q", strings.Join(rules.Resources, ", "), s)
		}
		f.resource = s
	}
	if s, ok := c.GetQuery("kind"); ok {
		if !slices.Contains(engine.Kinds, engine.Kind(s)) {
			kinds := make([]string, len(engine.Kinds))
			for i, k := range engine.Kinds {
				kinds[i] = string(k)
			}
			return nil, fmt.Sprintf("kind must be one of %s; got %q", strings.Join(kinds, ", "), s)
		}
		f.kind = engine.Kind(s)
	}
	if s, ok := c.GetQuery("client"); ok {
		if s == "" {
			return nil, "client must name an origin (an IP address or IPv6 prefix) or a tenant; got \"\""
		}
		f.client, f.origin = s, canonicalOrigin(s, ipv6Bits)
	}
	if s, ok := c.GetQuery("shadow"); ok {
		switch s {
		case shadowInclude, shadowOnly, shadowExclude:
			f.shadow = s
		default:
			return nil, fmt.Sprintf("shadow must be include, only or exclude; got %q", s)
		}
	}
	return f, ""
}

// blocked answers GET /api/blocked: the most recent refusals, newest
// first, those shadow rules would have made marked "shadow": true,
// filtered by resource, kind, client (origin or tenant) and shadow:
//
//	curl 'localhost:8080/api/blocked?resource=ddcolor_person&kind=hotspot&client=203.0.113.9&shadow=exclude&limit=20'
func (a *api) blocked(c *gin.Context) {
	f, bad := parseBlockedFilter(c, a.cfg.IPv6Prefix)
	if bad != "" {
		writeProblem(c, http.StatusBadRequest, "invalid-parameter", bad, nil)
		return
	}
	out := make([]engine.Blocked, 0, f.limit)
	for _, b := range a.cfg.Engine.Blocked(0) {
		if len(out) == f.limit {
			break
		}
		if f.match(b) {
			out = append(out, b)
		}
	}
	c.JSON(http.StatusOK, gin.H{"blocked": out})
}

// bans answers GET /api/bans: the bans in force, with their end and the
// seconds left; those a shadow ban rule would have imposed are marked
// "shadow": true and refuse nothing.
//
//	curl localhost:8080/api/bans
func (a *api) bans(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"bans": a.cfg.Engine.Bans()})
}

// unban answers DELETE /api/bans?resource=R&who=W (admin): it lifts W's
// bans (an origin or a tenant) on R, or on every resource without R, and
// forgets W's refusals there.
//
//	curl -X DELETE -H 'Authorization: Bearer s3cret' 'localhost:8080/api/bans?resource=ddcolor_person&who=203.0.113.9'
func (a *api) unban(c *gin.Context) {
	who := c.Query("who")
	if who == "" {
		writeProblem(c, http.StatusBadRequest, "invalid-parameter",
			"who must name the banned origin (an IP address or IPv6 prefix) or tenant: DELETE /api/bans?who=W[&resource=R]", nil)
		return
	}
	resource := c.Query("resource")
	if resource != "" && !slices.Contains(rules.Resources, resource) {
		writeProblem(c, http.StatusBadRequest, "invalid-parameter",
			fmt.Sprintf("resource must be one of %s, or left out for every resource; got %q", strings.Join(rules.Resources, ", "), resource), nil)
		return
	}
	n := a.cfg.Engine.Unban(resource, who)
	if origin := canonicalOrigin(who, a.cfg.IPv6Prefix); origin != who {
		// who as written may still be a tenant's name; as an origin it
		// is the form the engine keeps.
		n += a.cfg.Engine.Unban(resource, origin)
	}
	a.log.Info("operator API: bans lifted", slog.String("who", who), slog.String("resource", resource),
		slog.Int("lifted", n), slog.String("remote", c.ClientIP()))
	c.JSON(http.StatusOK, gin.H{"lifted": n})
}

// canonicalOrigin is s as the public API records an origin (see
// httpapi.Origin): an IPv4 address (IPv4-mapped IPv6 included) in
// canonical form, an IPv6 address as its prefix of ipv6Bits bits, and an
// IPv6 prefix in CIDR form masked and canonical. Anything else (a tenant)
// is returned as it is.
func canonicalOrigin(s string, ipv6Bits int) string {
	if _, err := netip.ParseAddr(s); err == nil {
		return httpapi.Origin(s, ipv6Bits)
	}
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
		return p.Masked().String()
	}
	return s
}
