package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/adapters/nvml"
)

// `sluice version` says whether this build reads NVML.
func TestVersionNamesNVMLVariant(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if want := "sluice dev (nvml: " + nvml.Variant + ", go"; !strings.HasPrefix(out.String(), want) {
		t.Fatalf("version = %q, want it to start %q", out.String(), want)
	}
	if b := buildInfo(); b.Version != "dev" || b.NVML != nvml.Variant {
		t.Fatalf("buildInfo() = %+v", b)
	}
}

// The other variant than this test binary's, built and run: a cgo test
// build checks the nonvml binary (-tags nonvml, what CGO_ENABLED=0 also
// selects), a CGO_ENABLED=0 one checks the cgo binary where a C compiler
// is. This test binary itself is the other: run without an NVIDIA driver
// (as here), the cgo build's serve tests show that it starts without one.
func TestBinaryOfTheOtherVariant(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds a binary")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	bin := filepath.Join(t.TempDir(), "sluice")
	args := []string{"build", "-o", bin, "-ldflags", "-X main.version=v0.0.0-test"}
	env, want := os.Environ(), "nonvml"
	if nvml.Variant == "nonvml" {
		cc, err := exec.Command(gobin, "env", "CC").Output()
		if _, lerr := exec.LookPath(strings.TrimSpace(string(cc))); err != nil || lerr != nil {
			t.Skip("no C compiler: the cgo build cannot be checked")
		}
		env, want = append(env, "CGO_ENABLED=1"), "cgo"
	} else {
		args = append(args, "-tags", "nonvml")
	}
	if raceBuild {
		args = append(args, "-race") // the packages this test was built from
	}
	cmd := exec.Command(gobin, append(args, ".")...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	if prefix := "sluice v0.0.0-test (nvml: " + want + ", go"; !strings.HasPrefix(string(out), prefix) {
		t.Fatalf("%s version = %q, want it to start %q", want, out, prefix)
	}
}
