package rules

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/engine/tenant"
)

// Quota units of a tier.
const (
	// QuotaJobs counts every admitted job as one.
	QuotaJobs = "jobs"
	// QuotaCost counts a job's cost units (the resource's cost rule).
	QuotaCost = "cost"
)

// Tiers is the tiers document: every service tier, and the time zone whose
// midnight starts a quota day. It is one YAML or JSON document:
//
//	timezone: UTC
//	tiers:
//	  - name: anonymous
//	    daily_quota: 50        # an integer >= 0, or "unlimited"
//	    quota_unit: jobs       # jobs (default) or cost
//	    in_flight: 1           # jobs running or waiting per tenant (default 1)
//	    priority: low          # low (default), medium or high
//	    rate: {threshold: 2, window: 1s}   # optional, per tenant
//	    resources: [ddcolor_person]        # optional; absent: every resource
//	    max_size: 1024                     # optional; 0 or absent: no limit
//
// ParseTiers decodes and validates one; a Tiers it returns is never
// changed afterwards and may be shared.
type Tiers struct {
	// Timezone is the IANA name of the quota day's time zone ("UTC").
	Timezone string `json:"timezone"`
	// Location is Timezone loaded.
	Location *time.Location `json:"-"`
	Tiers    []Tier         `json:"tiers"`
}

// Tier is one service tier.
type Tier struct {
	Name string
	// DailyQuota is what a tenant may spend per day in QuotaUnit, or
	// tenant.Unlimited.
	DailyQuota int64
	// QuotaUnit is QuotaJobs or QuotaCost.
	QuotaUnit string
	// InFlight is how many jobs a tenant may have running or waiting.
	InFlight int
	// Priority is the tier's class in the GPU queue.
	Priority tenant.Class
	// Rate, when set, limits each tenant's requests per window.
	Rate *TierRate
	// Resources lists the resources the tier may use; empty: all.
	Resources []string
	// MaxSize is the largest size the tier may ask for; 0: no limit.
	MaxSize int
}

// TierRate is a per-tenant rate: at most Threshold requests per Window.
type TierRate struct {
	Threshold int64    `json:"threshold" yaml:"threshold"`
	Window    Duration `json:"window" yaml:"window"`
}

// tierDoc is a tier as written in the document.
type tierDoc struct {
	Name       string     `json:"name" yaml:"name"`
	DailyQuota quotaValue `json:"daily_quota" yaml:"daily_quota"`
	QuotaUnit  string     `json:"quota_unit" yaml:"quota_unit"`
	InFlight   *int       `json:"in_flight" yaml:"in_flight"`
	Priority   string     `json:"priority" yaml:"priority"`
	Rate       *TierRate  `json:"rate,omitempty" yaml:"rate"`
	Resources  []string   `json:"resources,omitempty" yaml:"resources"`
	MaxSize    int        `json:"max_size,omitempty" yaml:"max_size"`
}

type tiersDoc struct {
	Timezone string    `yaml:"timezone"`
	Tiers    []tierDoc `yaml:"tiers"`
}

// quotaValue is a daily quota as written: an integer >= 0 or "unlimited".
type quotaValue struct {
	n   int64
	set bool
}

const unlimitedWord = "unlimited"

func (q *quotaValue) want() string { return `an integer >= 0 or "unlimited"` }

// UnmarshalText reads an integer >= 0 or "unlimited".
func (q *quotaValue) UnmarshalText(b []byte) error {
	s := string(b)
	if s == unlimitedWord {
		*q = quotaValue{n: tenant.Unlimited, set: true}
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("want %s, got %q", q.want(), s)
	}
	if n < 0 {
		return fmt.Errorf("want %s, got %d", q.want(), n)
	}
	*q = quotaValue{n: n, set: true}
	return nil
}

// MarshalJSON writes the quota as a number, or "unlimited".
func (q quotaValue) MarshalJSON() ([]byte, error) {
	if q.n == tenant.Unlimited {
		return []byte(`"` + unlimitedWord + `"`), nil
	}
	return strconv.AppendInt(nil, q.n, 10), nil
}

// MarshalJSON writes the tier as the document spells it ("unlimited",
// "high", "1s").
func (t Tier) MarshalJSON() ([]byte, error) {
	inFlight := t.InFlight
	return json.Marshal(tierDoc{
		Name: t.Name, DailyQuota: quotaValue{n: t.DailyQuota, set: true}, QuotaUnit: t.QuotaUnit,
		InFlight: &inFlight, Priority: t.Priority.String(), Rate: t.Rate, Resources: t.Resources, MaxSize: t.MaxSize,
	})
}

// UnmarshalJSON reads the document as ParseTiers does, validating it: the
// JSON that Tiers marshals to reads back.
func (ts *Tiers) UnmarshalJSON(b []byte) error {
	parsed, err := ParseTiers("JSON", b)
	if err != nil {
		return err
	}
	*ts = *parsed
	return nil
}

// Tier returns the tier called name.
func (ts *Tiers) Tier(name string) (Tier, bool) {
	for _, t := range ts.Tiers {
		if t.Name == name {
			return t, true
		}
	}
	return Tier{}, false
}

// Rates returns each tier's per-tenant rate, for the tiers that have one
// (what engine.SetTierRates takes).
func (ts *Tiers) Rates() map[string]TierRate {
	out := make(map[string]TierRate)
	for _, t := range ts.Tiers {
		if t.Rate != nil {
			out[t.Name] = *t.Rate
		}
	}
	return out
}

// ErrNotInTier is wrapped by Allows' refusals: the request asks for what
// its tier does not offer (answered 403).
var ErrNotInTier = errors.New("not offered by the tier")

// Allows says whether a tier may use resource at size: nil, or an error
// wrapping ErrNotInTier that says why not.
func (ts *Tiers) Allows(tier, resource string, size int) error {
	t, ok := ts.Tier(tier)
	if !ok {
		return fmt.Errorf("%w: unknown tier %q", ErrNotInTier, tier)
	}
	if len(t.Resources) > 0 && !slices.Contains(t.Resources, resource) {
		return fmt.Errorf("%w: tier %s may use %s, not %s", ErrNotInTier, t.Name, strings.Join(t.Resources, ", "), resource)
	}
	if t.MaxSize > 0 && size > t.MaxSize {
		return fmt.Errorf("%w: tier %s may ask for size %d at most, not %d", ErrNotInTier, t.Name, t.MaxSize, size)
	}
	return nil
}

//go:embed tiers.yaml
var defaultTiers []byte

// DefaultTiersSource returns the built-in tiers document's YAML.
func DefaultTiersSource() []byte { return bytes.Clone(defaultTiers) }

// DefaultTiers returns the built-in tiers: anonymous 50 jobs a day, 1 in
// flight, low priority; registered 200, 2, medium; vip unlimited, 3, high;
// quota days start at midnight UTC.
func DefaultTiers() *Tiers {
	ts, err := ParseTiers("built-in tiers.yaml", defaultTiers)
	if err != nil {
		// The built-in document is tested; this is a broken build.
		panic(fmt.Sprintf("rules: built-in tiers: %v", err))
	}
	return ts
}

var tierName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// ParseTiers decodes and validates a tiers document (YAML or JSON). name
// is used in error messages, which name the field and the value:
//
//	tiers.yaml: tiers[1].daily_quota: want an integer >= 0 or "unlimited", got "lots"
//
// Every problem is reported at once, as Errors; a document with any
// problem yields no tiers.
func ParseTiers(name string, data []byte) (*Tiers, error) {
	c := &errs{file: name}
	if len(data) > MaxSourceBytes {
		c.add("", "source is %d bytes; the limit is %d", len(data), MaxSourceBytes)
		return nil, c.err()
	}
	root, err := singleDocument(data)
	if err != nil {
		c.add("", "%v", err)
		return nil, c.err()
	}
	var doc tiersDoc
	if root == nil {
		c.add("", "empty: the tiers document needs tiers: with at least the %s tier", tenant.AnonymousTier)
		return nil, c.err()
	}
	if root.Kind != yaml.MappingNode {
		c.add("", "the tiers document must be a mapping with timezone and tiers, got %s", describe(root))
		return nil, c.err()
	}
	decodeInto(c, root, reflect.ValueOf(&doc).Elem(), "")
	if len(c.list) > 0 {
		return nil, c.err()
	}
	ts := validateTiers(c, &doc)
	if err := c.err(); err != nil {
		return nil, err
	}
	return ts, nil
}

// singleDocument decodes the one YAML document of data; nil when there is
// none.
func singleDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root *yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return root, nil
		}
		if err != nil {
			return nil, errors.New("not valid YAML or JSON: " + strings.TrimPrefix(err.Error(), "yaml: "))
		}
		r := &n
		if r.Kind == yaml.DocumentNode {
			if len(r.Content) == 0 {
				continue
			}
			r = r.Content[0]
		}
		if r.Kind == yaml.ScalarNode && r.Tag == "!!null" {
			continue
		}
		if root != nil {
			return nil, errors.New("holds more than one document; the tiers are one document")
		}
		root = r
	}
}

func validateTiers(c *errs, doc *tiersDoc) *Tiers {
	ts := &Tiers{Timezone: doc.Timezone}
	if ts.Timezone == "" {
		ts.Timezone = "UTC"
	}
	loc, err := time.LoadLocation(ts.Timezone)
	if err != nil || ts.Timezone == "Local" {
		c.add("timezone", "want an IANA time zone such as UTC or Europe/Berlin, got %q", doc.Timezone)
	}
	ts.Location = loc
	if len(doc.Tiers) == 0 {
		c.add("tiers", "missing: the document needs at least the %s tier", tenant.AnonymousTier)
		return ts
	}
	seen := make(map[string]int, len(doc.Tiers))
	for i, d := range doc.Tiers {
		at := fmt.Sprintf("tiers[%d]", i)
		t := Tier{Name: d.Name, DailyQuota: d.DailyQuota.n, QuotaUnit: d.QuotaUnit, InFlight: 1, Resources: d.Resources, MaxSize: d.MaxSize}
		switch prev, dup := seen[d.Name]; {
		case !tierName.MatchString(d.Name):
			c.add(at+".name", "want a name matching %s, got %q", tierName, d.Name)
		case dup:
			c.add(at+".name", "%q appears twice (also tiers[%d])", d.Name, prev)
		default:
			seen[d.Name] = i
		}
		if !d.DailyQuota.set {
			c.add(at+".daily_quota", "missing: want %s", d.DailyQuota.want())
		}
		switch d.QuotaUnit {
		case "":
			t.QuotaUnit = QuotaJobs
		case QuotaJobs, QuotaCost:
		default:
			c.add(at+".quota_unit", "want jobs or cost, got %q", d.QuotaUnit)
		}
		if d.InFlight != nil {
			t.InFlight = *d.InFlight
			if t.InFlight < 1 {
				c.add(at+".in_flight", "must be >= 1, got %d", t.InFlight)
			}
		}
		if d.Priority != "" {
			class, err := tenant.ParseClass(d.Priority)
			if err != nil {
				c.add(at+".priority", "want low, medium or high, got %q", d.Priority)
			}
			t.Priority = class
		}
		if d.Rate != nil {
			r := *d.Rate
			if r.Threshold < 1 {
				c.add(at+".rate.threshold", "must be >= 1, got %d", r.Threshold)
			}
			if r.Window == 0 {
				r.Window = Duration(DefaultWindow)
			}
			// The same windows as a hotspot rule: the tier rate is one.
			if w := time.Duration(r.Window); w < time.Second || w%time.Second != 0 || w > 24*time.Hour {
				c.add(at+".rate.window", "must be whole seconds between 1s and 24h, got %s", r.Window)
			}
			t.Rate = &r
		}
		for j, res := range d.Resources {
			if !slices.Contains(Resources, res) {
				c.add(fmt.Sprintf("%s.resources[%d]", at, j), "unknown resource %q; known resources are %s", res, strings.Join(Resources, ", "))
			}
		}
		if d.MaxSize < 0 {
			c.add(at+".max_size", "must be >= 0 (0: no limit), got %d", d.MaxSize)
		}
		ts.Tiers = append(ts.Tiers, t)
	}
	if _, ok := seen[tenant.AnonymousTier]; !ok {
		c.add("tiers", "no tier named %q: anonymous callers need it", tenant.AnonymousTier)
	}
	return ts
}
