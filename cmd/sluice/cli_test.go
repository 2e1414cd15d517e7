package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/adapters/etcd"
)

// sluiceTTY runs the command line as on a terminal whose operator answers
// answer to a confirmation.
func sluiceTTY(t *testing.T, answer string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runWith(context.Background(), args, streams{in: strings.NewReader(answer), out: &out, errOut: &errOut, tty: true})
	return out.String(), errOut.String(), exitCode(err)
}

// etcdValue reads one key of the etcd at ep.
func etcdValue(t *testing.T, ep, key string) (string, int64) {
	t.Helper()
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", resp.Header.Revision
	}
	return string(resp.Kvs[0].Value), resp.Header.Revision
}

const fullPerson = `resource: ddcolor_person
flow: [{threshold: 4}]
hotspot: [{param: origin, threshold: 2}]
ban: {blocks: 3, within: 10s, for: 1m}
`

// TestExitCodes: one mapping, one code per kind of failure.
func TestExitCodes(t *testing.T) {
	ep := startEtcd(t)
	dir := writeFiles(t, map[string]string{
		"bad.yaml":    "resource: ddcolor_person\nflow: [{threshold: -1}]\n",
		"full.yaml":   fullPerson,
		"narrow.yaml": "resource: ddcolor_person\nflow: [{threshold: 6}]\n",
	})
	if _, errOut, code := sluice(t, "rules", "apply", "-f", filepath.Join(dir, "full.yaml"), "--endpoints", ep); code != 0 {
		t.Fatalf("seed: %d %s", code, errOut)
	}
	unreachableEtcd := []string{"--endpoints", "127.0.0.1:1", "--dial-timeout", "200ms", "--command-timeout", "500ms"}
	for _, tc := range []struct {
		name string
		args []string
		want int
		msg  string
	}{
		{"ok", []string{"version"}, exitOK, ""},
		{"unknown command", []string{"bogus"}, exitUsage, `unknown command "bogus" for "sluice"`},
		{"unknown subcommand", []string{"rules", "frobnicate"}, exitUsage, `unknown command "frobnicate" for "sluice rules"`},
		{"no command", []string{}, exitUsage, "no command given"},
		{"group without command", []string{"keys"}, exitUsage, "keys: no command given"},
		{"unknown flag", []string{"rules", "get", "--bogus"}, exitUsage, "unknown flag: --bogus"},
		{"single-dash long flag", []string{"serve", "-listen", ":0"}, exitUsage, "unknown shorthand flag"},
		{"missing argument", []string{"rules", "delete"}, exitUsage, "rules delete: missing RESOURCE"},
		{"extra argument", []string{"keys", "list", "extra"}, exitUsage, "keys list takes no arguments"},
		{"missing -f", []string{"rules", "diff"}, exitUsage, "missing -f FILE|DIR"},
		{"missing required flag", []string{"keys", "create", "--tenant", "acme"}, exitUsage, "missing --tenant or --tier"},
		{"bad -o", []string{"rules", "get", "-o", "xml"}, exitUsage, "--output must be yaml or json"},
		{"invalid file", []string{"rules", "validate", "-f", filepath.Join(dir, "bad.yaml")}, exitInvalid, "flow[0].threshold: must be > 0, got -1"},
		{"unknown resource", []string{"rules", "delete", "ddcolor_cat", "--endpoints", ep}, exitInvalid, `unknown resource "ddcolor_cat"`},
		{"etcd unreachable", append([]string{"rules", "get"}, unreachableEtcd...), exitUnreachable, "context deadline exceeded"},
		{"etcd unreachable, keys", append([]string{"keys", "list"}, unreachableEtcd...), exitUnreachable, ""},
		// With --user clientv3 authenticates while it dials: still unreachable, not invalid.
		{"help of an unknown command", []string{"help", "bogus"}, exitUsage, "unknown help topic"},
		{"etcd unreachable, with a user", append([]string{"rules", "get", "--user", "root:pw"}, unreachableEtcd...), exitUnreachable, ""},
		{"etcd unreachable, with a user, tiers", append([]string{"tiers", "get", "--user", "root:pw"}, unreachableEtcd...), exitUnreachable, ""},
		{"declined: no terminal", []string{"rules", "apply", "-f", filepath.Join(dir, "narrow.yaml"), "--endpoints", ep}, exitAborted,
			"would lose ddcolor_person hotspot[0] (param origin), ddcolor_person ban: not applied (no terminal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := sluice(t, tc.args...)
			if code != tc.want || !strings.Contains(errOut, tc.msg) {
				t.Fatalf("sluice %q: exit %d, want %d; stderr %q, want it to say %q", tc.args, code, tc.want, errOut, tc.msg)
			}
			if tc.want == exitUsage && !strings.Contains(errOut, "--help' for usage.") {
				t.Fatalf("a usage error without the pointer to --help: %q", errOut)
			}
		})
	}
	// Declined on a terminal: exit 3, and nothing written.
	before, rev := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person")
	_, errOut, code := sluiceTTY(t, "n\n", "rules", "apply", "-f", filepath.Join(dir, "narrow.yaml"), "--endpoints", ep)
	if code != exitAborted || !strings.Contains(errOut, "Apply all the same? [y/N]") || !strings.Contains(errOut, "-ban:") {
		t.Fatalf("declined: exit %d, %q", code, errOut)
	}
	if after, rev2 := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person"); after != before || rev2 != rev {
		t.Fatalf("a declined apply wrote: %q at %d", after, rev2)
	}
	// Accepted on a terminal: written.
	out, errOut, code := sluiceTTY(t, "y\n", "rules", "apply", "-f", filepath.Join(dir, "narrow.yaml"), "--endpoints", ep)
	if code != exitOK || !strings.Contains(out, "ddcolor_person     changed") {
		t.Fatalf("accepted: exit %d, %q %q", code, out, errOut)
	}
	if after, _ := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person"); strings.Contains(after, "ban") || !strings.Contains(after, "threshold: 6") {
		t.Fatalf("after the accepted apply etcd holds %q", after)
	}
	if exitCode(nil) != exitOK || exitCode(errors.New("x")) != exitInvalid || exitCode(fmt.Errorf("wrapped: %w", aborted(errors.New("no")))) != exitAborted {
		t.Fatal("exitCode maps plain, nil or wrapped errors wrongly")
	}
}

// TestRulesDiffAndDryRun: diff and --dry-run show the unified diff and the
// lost rules and write nothing; --yes applies without a question.
func TestRulesDiffAndDryRun(t *testing.T) {
	ep := startEtcd(t)
	dir := writeFiles(t, map[string]string{
		"full.yaml":   fullPerson,
		"narrow.yaml": "resource: ddcolor_person\nflow: [{threshold: 6}]\n---\nresource: zimage_generate\nflow: [{threshold: 2}]\n",
		"clash.yaml":  "resource: zimage_generate\nflow: [{threshold: 1}]\ncost: {param: size, values: {\"2048\": 5}}\n",
	})
	if _, errOut, code := sluice(t, "rules", "apply", "-f", filepath.Join(dir, "full.yaml"), "--endpoints", ep); code != 0 {
		t.Fatalf("seed: %d %s", code, errOut)
	}
	_, rev := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person")
	narrow := filepath.Join(dir, "narrow.yaml")
	wants := []string{
		"--- ddcolor_person (in force)\n+++ ddcolor_person (candidate)\n",
		"-  - threshold: 4\n",
		"+  - threshold: 6\n",
		"-hotspot:\n",
		"-ban:\n",
		"ddcolor_person loses: hotspot[0] (param origin), ban\n",
		"--- zimage_generate (in force)\n+++ zimage_generate (candidate)\n",
		"+resource: zimage_generate\n",
	}
	out, errOut, code := sluice(t, "rules", "diff", "-f", narrow, "--endpoints", ep)
	for _, w := range wants {
		if code != 0 || !strings.Contains(out, w) {
			t.Fatalf("diff: exit %d, want %q in:\n%s%s", code, w, out, errOut)
		}
	}
	out, errOut, code = sluice(t, "rules", "apply", "-f", narrow, "--dry-run", "--endpoints", ep)
	for _, w := range append(wants, "dry run: valid with the rules in etcd") {
		if code != 0 || !strings.Contains(out, w) {
			t.Fatalf("dry run: exit %d, want %q in:\n%s%s", code, w, out, errOut)
		}
	}
	if _, rev2 := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person"); rev2 != rev {
		t.Fatalf("diff or dry run wrote: revision %d → %d", rev, rev2)
	}
	// A dry run judges the candidate with the rules in etcd: invalid, exit 1.
	if _, errOut, code := sluice(t, "rules", "apply", "-f", filepath.Join(dir, "clash.yaml"), "--dry-run", "--endpoints", ep); code != exitInvalid || !strings.Contains(errOut, "costs 5 but flow[0].threshold is 1") {
		t.Fatalf("invalid dry run: exit %d %q", code, errOut)
	}
	// --yes: applied without a question, even without a terminal.
	out, errOut, code = sluice(t, "rules", "apply", "-f", narrow, "--yes", "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "ddcolor_person     changed") || !strings.Contains(out, "zimage_generate    created") {
		t.Fatalf("apply --yes: %d %q %q", code, out, errOut)
	}
	if out, _, _ := sluice(t, "rules", "diff", "-f", narrow, "--endpoints", ep); out != "ddcolor_person: unchanged\nzimage_generate: unchanged\n" {
		t.Fatalf("diff after apply: %q", out)
	}
}

// TestRulesDeleteBesideAnInvalidDocument: `rules delete R` touches only R's
// key, though another key holds a document that does not validate.
func TestRulesDeleteBesideAnInvalidDocument(t *testing.T) {
	ep := startEtcd(t)
	dir := writeFiles(t, map[string]string{"z.yaml": "resource: zimage_generate\nflow: [{threshold: 2}]\n"})
	if _, errOut, code := sluice(t, "rules", "apply", "-f", dir, "--endpoints", ep); code != 0 {
		t.Fatal(errOut)
	}
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := "resource: ddcolor_person\nflow: [{threshold: -1}]\n"
	if _, err := c.Put(context.Background(), "/sluice/rules/resources/ddcolor_person", bad); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := sluice(t, "rules", "delete", "zimage_generate", "--endpoints", ep); code != 0 || !strings.Contains(out, "zimage_generate deleted") {
		t.Fatalf("delete: %d %q %q", code, out, errOut)
	}
	if v, _ := etcdValue(t, ep, "/sluice/rules/resources/zimage_generate"); v != "" {
		t.Fatalf("not deleted: %q", v)
	}
	if v, _ := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person"); v != bad {
		t.Fatalf("the other key changed: %q", v)
	}
}

// TestEveryCommandHasHelp: every command has a short and a long text and
// examples, and its help shows them with the --long flags.
func TestEveryCommandHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%s: short %q, long %d bytes, example %q", c.CommandPath(), c.Short, len(c.Long), c.Example)
		}
		n++
		for _, sub := range c.Commands() {
			if sub.Name() != "help" {
				walk(sub)
			}
		}
	}
	walk(newRootCmd(streams{}))
	if n < 19 {
		t.Fatalf("walked %d commands, want every one of sluice's 19", n)
	}
	for _, args := range [][]string{{"rules", "get", "--help"}, {"keys", "create", "-h"}, {"serve", "--help"}, {"plan", "--help"}} {
		out, errOut, code := sluice(t, args...)
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "Usage:") {
			t.Fatalf("%q: %d %q %q", args, code, out, errOut)
		}
	}
	out, _, _ := sluice(t, "rules", "get", "--help")
	if !strings.Contains(out, "--endpoints string") || !strings.Contains(out, "-o, --output string") || !strings.Contains(out, "get [RESOURCE]") {
		t.Fatalf("rules get --help: %q", out)
	}
	out, _, _ = sluice(t, "serve", "--help")
	if !strings.Contains(out, `--listen string`) || !strings.Contains(out, `(default "127.0.0.1:8080")`) || !strings.Contains(out, "$SLUICE_ADMIN_TOKEN") {
		t.Fatalf("serve --help: %q", out)
	}
}

// TestServeFlagsKeepNamesDefaultsAndEnv: serve's flags parse with two
// dashes, keep their defaults, and fall back to the environment.
func TestServeFlagsKeepNamesDefaultsAndEnv(t *testing.T) {
	t.Setenv("SLUICE_ADMIN_TOKEN", "from-env")
	f, fs, err := parseServe([]string{"--listen", ":9", "--comfyui", "http://a", "--comfyui=http://b", "--slots", "2", "--jwt-key-file", "k.pem"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if f.listen != ":9" || len(f.comfyui) != 2 || f.comfyui[1] != "http://b" || f.slots != 2 || f.adminToken != "from-env" ||
		f.queueMax != 64 || f.etcd.prefix != "/sluice" || len(f.jwt.keyFiles) != 1 || !fs.Changed("listen") || fs.Changed("rules") {
		t.Fatalf("parsed %+v", f)
	}
	if f, _, _ := parseServe([]string{"--admin-token", "flag"}, &bytes.Buffer{}); f.adminToken != "flag" {
		t.Fatalf("the flag did not win over the environment: %q", f.adminToken)
	}
}

// TestPlanCommand: plan's flags are checked, and a gateway that cannot be
// reached is exit 2.
func TestPlanCommand(t *testing.T) {
	if _, errOut, code := sluice(t, "plan", "-o", "xml"); code != exitUsage || !strings.Contains(errOut, "--output must be text or yaml or json") {
		t.Fatalf("plan -o xml: %d %q", code, errOut)
	}
	_, err := http.Get("http://127.0.0.1:1/api/plan") //nolint:noctx // refused at once
	if got := exitCode(gatewayError(err)); got != exitUnreachable {
		t.Fatalf("connection refused: exit %d", got)
	}
	if got := exitCode(gatewayError(&net.DNSError{Err: "no such host", Name: "gw"})); got != exitUnreachable {
		t.Fatalf("unknown host: exit %d", got)
	}
	if got := exitCode(gatewayError(errors.New("gateway answered 403"))); got != exitInvalid {
		t.Fatalf("a refusal: exit %d", got)
	}
	if got := exitCode(gatewayError(usagef("x"))); got != exitUsage {
		t.Fatalf("a usage error: exit %d", got)
	}
}

// answerAfter is an operator who, before answering, lets another writer
// change etcd: write runs on the first read.
type answerAfter struct {
	write  func()
	answer *strings.Reader
}

func (a *answerAfter) Read(p []byte) (int, error) {
	if a.write != nil {
		a.write()
		a.write = nil
	}
	return a.answer.Read(p)
}

// TestApplyRefusesWhatChangedDuringTheQuestion: the operator confirmed a
// diff; a document changed meanwhile is not replaced (exit 1).
func TestApplyRefusesWhatChangedDuringTheQuestion(t *testing.T) {
	ep := startEtcd(t)
	dir := writeFiles(t, map[string]string{"full.yaml": fullPerson, "narrow.yaml": "resource: ddcolor_person\nflow: [{threshold: 6}]\n"})
	if _, errOut, code := sluice(t, "rules", "apply", "-f", filepath.Join(dir, "full.yaml"), "--endpoints", ep); code != 0 {
		t.Fatal(errOut)
	}
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	meanwhile := "resource: ddcolor_person\nflow: [{threshold: 4}]\nconcurrency: 3\n"
	in := &answerAfter{answer: strings.NewReader("y\n"), write: func() {
		if _, err := c.Put(context.Background(), "/sluice/rules/resources/ddcolor_person", meanwhile); err != nil {
			t.Error(err)
		}
	}}
	var out, errOut bytes.Buffer
	err = runWith(context.Background(), []string{"rules", "apply", "-f", filepath.Join(dir, "narrow.yaml"), "--endpoints", ep},
		streams{in: in, out: &out, errOut: &errOut, tty: true})
	if exitCode(err) != exitInvalid || !strings.Contains(errOut.String(), "changed in etcd since it was compared") {
		t.Fatalf("exit %d: %v %q", exitCode(err), err, errOut.String())
	}
	if v, _ := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person"); v != meanwhile {
		t.Fatalf("replaced what the operator never saw: %q", v)
	}
}
