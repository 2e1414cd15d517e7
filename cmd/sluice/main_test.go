package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestBadRulesFileFailsWithItsMessage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("resource: ddcolor_person\nflow:\n  - threshold: -1\n"), 0o644)
	err := run(context.Background(), []string{"serve", "--rules", bad, "--listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml: document 1 (ddcolor_person): flow[0].threshold: must be > 0, got -1") {
		t.Fatalf("err = %v", err)
	}
	if exitCode(err) != 1 {
		t.Errorf("exit code %d, want 1", exitCode(err))
	}
	// An explicit path that does not exist is an error, not the built-in rules.
	if err := run(context.Background(), []string{"serve", "--rules", filepath.Join(dir, "none")}, io.Discard, io.Discard); err == nil {
		t.Fatal("a missing --rules path was accepted")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"serve", "--no-such-flag"}, {"serve", "extra"}, {"serve", "--log-level", "loud"}} {
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || exitCode(err) != 2 {
			t.Errorf("run(%q) = %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "sluice ") {
		t.Errorf("version: %v %q", err, out.String())
	}
}

// TestServeWithDefaults runs `sluice serve` as `make run` does: the rules of
// testdata/rules and the built-in simulator, then shuts it down.
func TestServeWithDefaults(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--rules", "../../testdata/rules", "--listen", "127.0.0.1:0", "--sim-job-time", "10ms"}, io.Discard, pw)
		pw.Close()
	}()
	logs := bufio.NewScanner(pr)
	addrRE := regexp.MustCompile(`msg="sluice serving" addr=(\S+)`)
	var base string
	var sawSim bool
	for base == "" && logs.Scan() {
		line := logs.Text()
		sawSim = sawSim || strings.Contains(line, "built-in ComfyUI simulator")
		if m := addrRE.FindStringSubmatch(line); m != nil {
			base = m[1]
		}
	}
	if base == "" {
		t.Fatalf("serve never said where it listens: %v", <-done)
	}
	if !sawSim {
		t.Error("the log did not name the built-in simulator")
	}
	go io.Copy(io.Discard, pr) // keep draining the log

	resp, err := http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	img, _ := os.ReadFile("../../testdata/images/person.png")
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("image", "person.png")
	fw.Write(img)
	mw.Close()
	resp, err = http.Post(base+"/api/ddcolorize/person", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || len(out) == 0 {
		t.Fatalf("colorize: %d %s", resp.StatusCode, out)
	}

	resp, err = http.Get(base + "/api/resources")
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Resources []struct {
			Resource string `json:"resource"`
			Passed   int    `json:"passed_total"`
		} `json:"resources"`
	}
	json.NewDecoder(resp.Body).Decode(&stats)
	resp.Body.Close()
	if len(stats.Resources) != 3 || stats.Resources[0].Resource != "ddcolor_person" || stats.Resources[0].Passed != 1 {
		t.Fatalf("/api/resources: %+v", stats)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after its context ended")
	}
}
