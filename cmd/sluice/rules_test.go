package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/adapters/etcd"
)

func startEtcd(t *testing.T) string {
	t.Helper()
	e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e.Endpoints()[0]
}

// sluice runs the command line and returns its output and exit code.
func sluice(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	// No terminal: a confirmation cannot be asked.
	err := runWith(context.Background(), args, streams{in: strings.NewReader(""), out: &out, errOut: &errOut})
	code := 0
	if err != nil {
		code = exitCode(err)
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), code
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestRulesCLI(t *testing.T) {
	ep := startEtcd(t)
	good := writeFiles(t, map[string]string{
		"person.yaml": "resource: ddcolor_person\nflow: [{threshold: 2}]\n",
		"system.yaml": "system: {cpu_usage: 0.9}\n",
	})
	mixed := writeFiles(t, map[string]string{
		"a.yaml": "resource: ddcolor_building\nflow: [{threshold: 3}]\n",
		"b.yaml": "resource: zimage_generate\nflow: [{threshold: -1}]\n",
	})

	if out, _, code := sluice(t, "rules", "validate", "-f", good); code != 0 || !strings.Contains(out, "2 documents, valid") {
		t.Fatalf("validate good: %d %q", code, out)
	}
	_, errOut, code := sluice(t, "rules", "validate", "-f", mixed)
	if code != 1 || !strings.Contains(errOut, "b.yaml: document 1 (zimage_generate): flow[0].threshold: must be > 0, got -1") {
		t.Fatalf("validate bad: %d %q", code, errOut)
	}

	// A folder with one bad document writes nothing.
	if _, errOut, code := sluice(t, "rules", "apply", "-f", mixed, "--endpoints", ep); code != 1 || !strings.Contains(errOut, "must be > 0") {
		t.Fatalf("apply bad: %d %q", code, errOut)
	}
	out, _, code := sluice(t, "rules", "get", "-o", "json", "--endpoints", ep)
	var got struct {
		Documents []json.RawMessage `json:"documents"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got.Documents) != 0 {
		t.Fatalf("after a bad apply etcd holds %q", out)
	}

	out, errOut, code = sluice(t, "rules", "apply", "-f", good, "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "ddcolor_person     created") || !strings.Contains(out, "system             created") {
		t.Fatalf("apply: %d %q %q", code, out, errOut)
	}
	if out, _, _ := sluice(t, "rules", "apply", "-f", good, "--endpoints", ep); !strings.Contains(out, "ddcolor_person     unchanged") {
		t.Fatalf("re-apply: %q", out)
	}
	out, _, code = sluice(t, "rules", "get", "ddcolor_person", "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "# /sluice/rules/resources/ddcolor_person") || !strings.Contains(out, "threshold: 2") || strings.Contains(out, "system") {
		t.Fatalf("get one: %d %q", code, out)
	}
	if _, _, code := sluice(t, "rules", "get", "zimage_generate", "--endpoints", ep); code != 1 {
		t.Fatalf("get of a missing document: exit %d", code)
	}
	if out, _, code := sluice(t, "rules", "delete", "system", "--endpoints", ep); code != 0 || !strings.Contains(out, "system deleted") {
		t.Fatalf("delete: %d %q", code, out)
	}
	if _, _, code := sluice(t, "rules", "delete", "system", "--endpoints", ep); code != 1 {
		t.Fatalf("delete again: exit %d, want 1", code)
	}
	if _, _, code := sluice(t, "rules", "delete", "ddcolor_cat", "--endpoints", ep); code != 1 {
		t.Fatalf("delete of an unknown resource: exit %d, want 1", code)
	}
}

func TestRulesCLIUnreachable(t *testing.T) {
	dir := writeFiles(t, map[string]string{"r.yaml": "resource: ddcolor_person\nflow: [{threshold: 2}]\n"})
	for _, args := range [][]string{
		{"rules", "apply", "-f", dir},
		{"rules", "get"},
		{"rules", "delete", "ddcolor_person"},
	} {
		args = append(args, "--endpoints", "127.0.0.1:1", "--dial-timeout", "200ms", "--command-timeout", "500ms")
		if _, errOut, code := sluice(t, args...); code != 2 {
			t.Errorf("%v: exit %d (%s), want 2", args, code, errOut)
		}
	}
	if _, _, code := sluice(t, "rules", "frobnicate"); code != exitUsage {
		t.Errorf("unknown rules command: exit %d, want %d", code, exitUsage)
	}
	if _, _, code := sluice(t, "rules", "apply"); code != exitUsage {
		t.Errorf("apply without -f: exit %d, want %d", code, exitUsage)
	}
}

// `-f -` reads the rules from standard input (sluice plan -o yaml | sluice
// rules apply -f -): applied when nothing is lost, and, since standard
// input held the rules, a document that loses rules needs --yes.
func TestRulesApplyFromStandardInput(t *testing.T) {
	ep := startEtcd(t)
	stdin := func(in string, args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		err := runWith(context.Background(), args, streams{in: strings.NewReader(in), out: &out, errOut: &errOut, tty: true})
		if err != nil {
			return out.String(), errOut.String() + err.Error(), exitCode(err)
		}
		return out.String(), errOut.String(), 0
	}
	person := "resource: ddcolor_person\nflow: [{threshold: 2}]\nconcurrency: 4\n"
	if out, errOut, code := stdin(person, "rules", "apply", "-f", "-", "--endpoints", ep); code != 0 || !strings.Contains(out, "ddcolor_person     created") {
		t.Fatalf("apply from stdin: %d %q %q", code, out, errOut)
	}
	// Losing concurrency: no confirmation can be read from the rules' own input.
	less := "resource: ddcolor_person\nflow: [{threshold: 3}]\n"
	if _, errOut, code := stdin(less, "rules", "apply", "-f", "-", "--endpoints", ep); code != exitAborted || !strings.Contains(errOut, "concurrency") {
		t.Fatalf("apply losing a rule from stdin without --yes: %d %q", code, errOut)
	}
	if out, _, code := stdin(less, "rules", "apply", "-f", "-", "--yes", "--endpoints", ep); code != 0 || !strings.Contains(out, "ddcolor_person     changed") {
		t.Fatalf("apply from stdin with --yes: %d %q", code, out)
	}
	if _, errOut, code := stdin("resource: ddcolor_person\nflow: [{threshold: -1}]\n", "rules", "validate", "-f", "-"); code != 1 || !strings.Contains(errOut, "stdin: document 1 (ddcolor_person): flow[0].threshold: must be > 0, got -1") {
		t.Fatalf("validate bad stdin: %d %q", code, errOut)
	}
}

// A document in etcd that is not valid (written around sluice) is not
// what the gateways enforce: they keep an older, valid version, whose
// rules the new one may lack. Replacing it asks first, like a loss.
func TestApplyOverAnInvalidDocumentAsks(t *testing.T) {
	ep := startEtcd(t)
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(context.Background(), "/sluice/rules/resources/ddcolor_person", "resource: ddcolor_person\nflow: [{threshold: -1}]\n"); err != nil {
		t.Fatal(err)
	}
	good := writeFiles(t, map[string]string{"person.yaml": "resource: ddcolor_person\nflow: [{threshold: 2}]\n"})
	if _, errOut, code := sluice(t, "rules", "apply", "-f", good, "--endpoints", ep); code != exitAborted || !strings.Contains(errOut, "is not valid") {
		t.Fatalf("apply over an invalid document without --yes: %d %q", code, errOut)
	}
	if v, _ := etcdValue(t, ep, "/sluice/rules/resources/ddcolor_person"); !strings.Contains(v, "threshold: -1") {
		t.Fatalf("written without a confirmation: %q", v)
	}
	if out, errOut, code := sluice(t, "rules", "apply", "-f", good, "--yes", "--endpoints", ep); code != 0 || !strings.Contains(out, "changed") {
		t.Fatalf("apply --yes: %d %q %q", code, out, errOut)
	}
}
