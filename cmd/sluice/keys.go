package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/identity"
	"github.com/sluicehq/sluice/rules"
)

func newKeysCmd(s streams) *cobra.Command {
	var ef etcdFlags
	c := newGroupCmd("keys", "Create, list and revoke API keys in etcd",
		`keys manages the API keys in etcd. A key names its tenant (who is billed: quotas and
fair queueing are per tenant) and its tier. etcd keeps only a key's hash: the key is
printed once, by create. A revoked key is refused by every gateway within a second.

A tier not in the tiers in force (the tiers document in etcd, else the built-in tiers)
is warned about on stderr; the key is made all the same.`,
		`  sluice keys create --tenant acme --tier registered --name "ci runner"
  sluice keys list -o json
  sluice keys revoke 3f2a9c0d1b4e5f60`,
		newKeysCreateCmd(s, &ef), newKeysListCmd(s, &ef), newKeysRevokeCmd(s, &ef))
	ef.register(c.PersistentFlags())
	return c
}

func newKeysCreateCmd(s streams, ef *etcdFlags) *cobra.Command {
	var spec identity.KeySpec
	c := &cobra.Command{
		Use:   "create --tenant TENANT --tier TIER [--name NAME]",
		Short: "Make an API key; it is printed once, never again",
		Long: `create makes an API key for TENANT in TIER and prints it with its ID. Store it at once:
etcd keeps only its hash. Call the API with it as Authorization: Bearer KEY or X-API-Key.`,
		Example: `  sluice keys create --tenant acme --tier vip --name "batch colouring"`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if !c.Flags().Changed("tenant") || !c.Flags().Changed("tier") {
				return usagef("keys create: missing --tenant or --tier")
			}
			return keysCreate(c.Context(), ef, spec, s.out, s.errOut)
		},
	}
	c.Flags().StringVar(&spec.Tenant, "tenant", "", "tenant the key bills (a-z, 0-9, . _ @ -; never an IP address)")
	c.Flags().StringVar(&spec.Tier, "tier", "", "service tier of the key (registered, vip, …)")
	c.Flags().StringVar(&spec.Name, "name", "", "what the key is for")
	return c
}

func newKeysListCmd(s streams, ef *etcdFlags) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "list",
		Short: "List the keys: id, tenant, tier, name, created",
		Long:  `list shows every API key's ID, tenant, tier, name and creation time; never the key nor its hash.`,
		Example: `  sluice keys list
  sluice keys list -o json`,
		Args: noArgs,
		PreRunE: func(c *cobra.Command, _ []string) error {
			return oneOf(c, "output", output, "table", "json")
		},
		RunE: func(c *cobra.Command, _ []string) error {
			return keysList(c.Context(), ef, output, s.out)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return c
}

func newKeysRevokeCmd(s streams, ef *etcdFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "Delete a key; every gateway refuses it within a second",
		Long:    `revoke deletes the key with ID (as 'sluice keys list' shows it). Calls with it get 401.`,
		Example: `  sluice keys revoke 3f2a9c0d1b4e5f60`,
		Args:    exactArgs(1, "one key ID (as `sluice keys list` shows it)"),
		RunE: func(c *cobra.Command, args []string) error {
			return keysRevoke(c.Context(), ef, args[0], s.out)
		},
	}
}

// keyError gives a key command's error its exit code.
func keyError(err error) error {
	if errors.Is(err, identity.ErrInvalidSpec) || errors.Is(err, identity.ErrKeyNotFound) {
		return invalid(err)
	}
	return unreachable(err)
}

func keysCreate(ctx context.Context, ef *etcdFlags, spec identity.KeySpec, stdout, stderr io.Writer) error {
	if err := spec.Validate(); err != nil {
		return invalid(err)
	}
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		warning, err := tierWarning(ctx, store, spec.Tier)
		if err != nil {
			return unreachable(err)
		}
		if warning != "" {
			fmt.Fprintln(stderr, "warning: "+warning)
		}
		key, rec, err := identity.CreateKey(ctx, store.Client(), ef.prefix, spec, nil)
		if err != nil {
			return keyError(err)
		}
		fmt.Fprintf(stdout, "key     %s\nid      %s\ntenant  %s\ntier    %s\nname    %s\n\n", key, rec.ID, rec.Tenant, rec.Tier, rec.Name)
		fmt.Fprintln(stdout, "Store the key now: it is not shown again (etcd keeps only its hash).")
		fmt.Fprintf(stdout, "Call with:  curl -H 'Authorization: Bearer %s' …   Revoke with:  sluice keys revoke %s\n", key, rec.ID)
		return nil
	})
}

// tierWarning says why a key of tier would not be served as it is now: the
// tier is not in the tiers in force (the tiers document in etcd, or the
// built-in tiers without one), or that document cannot be read. The key is
// made all the same: the tier may be added to the document later. The
// error is etcd's only.
func tierWarning(ctx context.Context, store *etcd.Store, tier string) (string, error) {
	doc, err := store.GetTiers(ctx)
	if err != nil {
		return "", err
	}
	tiers, source := rules.DefaultTiers(), "the built-in tiers (no tiers document at "+store.TiersKey()+")"
	if len(doc.Value) > 0 {
		if tiers, err = rules.ParseTiers(store.TiersKey(), doc.Value); err != nil {
			return fmt.Sprintf("tier %q not checked: the tiers document in etcd is invalid: %v", tier, err), nil
		}
		source = "the tiers document at " + store.TiersKey()
	}
	if _, ok := tiers.Tier(tier); ok {
		return "", nil
	}
	names := make([]string, len(tiers.Tiers))
	for i, t := range tiers.Tiers {
		names[i] = t.Name
	}
	return fmt.Sprintf("tier %q is not in the tiers in force (%s, from %s): calls with this key are refused (403) until `sluice tiers apply` defines it",
		tier, strings.Join(names, ", "), source), nil
}

func keysList(ctx context.Context, ef *etcdFlags, output string, stdout io.Writer) error {
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		recs, err := identity.ListKeys(ctx, store.Client(), ef.prefix)
		if err != nil {
			return keyError(err)
		}
		type shown struct {
			ID      string    `json:"id"`
			Tenant  string    `json:"tenant"`
			Tier    string    `json:"tier"`
			Name    string    `json:"name"`
			Created time.Time `json:"created"`
		}
		out := make([]shown, len(recs))
		for i, r := range recs {
			out[i] = shown{ID: r.ID, Tenant: r.Tenant, Tier: r.Tier, Name: r.Name, Created: r.Created}
		}
		if output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(struct {
				Keys []shown `json:"keys"`
			}{out})
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTENANT\tTIER\tNAME\tCREATED")
		for _, k := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Tenant, k.Tier, k.Name, k.Created.Format(time.RFC3339))
		}
		return tw.Flush()
	})
}

func keysRevoke(ctx context.Context, ef *etcdFlags, id string, stdout io.Writer) error {
	return ef.withStore(ctx, func(ctx context.Context, store *etcd.Store) error {
		if err := identity.RevokeKey(ctx, store.Client(), ef.prefix, id); err != nil {
			return keyError(err)
		}
		fmt.Fprintf(stdout, "key %s revoked\n", id)
		return nil
	})
}

// jwtFlags are serve's JWT flags; JWT is on when --jwt-jwks-url or
// --jwt-key-file is given. serve registers them and passes config() to
// identity.New.
type jwtFlags struct {
	jwksURL     string
	keyFiles    stringList
	algs        string
	issuer      string
	audience    string
	leeway      time.Duration
	tenantClaim string
	tierClaim   string
}

func (f *jwtFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.jwksURL, "jwt-jwks-url", "", "JWKS URL of the JWT issuer (turns JWT on)")
	fs.Var(&f.keyFiles, "jwt-key-file", "PEM public key or certificate of the JWT issuer (repeatable; turns JWT on)")
	fs.StringVar(&f.algs, "jwt-alg", "RS256,ES256,EdDSA", "allowed JWT algorithms, comma-separated (never none or HS*)")
	fs.StringVar(&f.issuer, "jwt-issuer", "", "required iss of JWTs (unchecked when empty)")
	fs.StringVar(&f.audience, "jwt-audience", "", "required aud of JWTs (unchecked when empty)")
	fs.DurationVar(&f.leeway, "jwt-leeway", 30*time.Second, "clock skew allowed on exp, nbf and iat")
	fs.StringVar(&f.tenantClaim, "jwt-tenant-claim", "sub", "JWT claim naming the tenant")
	fs.StringVar(&f.tierClaim, "jwt-tier-claim", "tier", "JWT claim naming the tier (absent: "+identity.DefaultJWTTier+")")
}

// config is the JWT configuration the flags give; nil when JWT is off.
func (f *jwtFlags) config() *identity.JWTConfig {
	if f.jwksURL == "" && len(f.keyFiles) == 0 {
		return nil
	}
	leeway := f.leeway
	if leeway == 0 {
		leeway = -1 // identity reads 0 as its default; the flag's 0 means none
	}
	var algs []string
	for _, a := range strings.Split(f.algs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			algs = append(algs, a)
		}
	}
	return &identity.JWTConfig{JWKSURL: f.jwksURL, KeyFiles: f.keyFiles, Algorithms: algs, Issuer: f.issuer,
		Audience: f.audience, Leeway: leeway, TenantClaim: f.tenantClaim, TierClaim: f.tierClaim}
}
