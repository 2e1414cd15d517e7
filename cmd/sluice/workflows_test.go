package main

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// A mistake in a --workflows template stops serve with the file, node and
// input it is about, before the embedded etcd starts (its data folder stays
// empty).
func TestBadWorkflowsStopServeBeforeEtcd(t *testing.T) {
	wf := t.TempDir()
	files := map[string]string{
		"ddcolor_person.json": `{"1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}},
 "7": {"class_type": "Colorize", "inputs": {"image": ["1", 0], "size": 512}}}`,
		"ddcolor_person.sluice.yaml": "image: {node: 1, input: image}\nsize: {node: 7, input: model_input_size}\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(wf, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := t.TempDir()
	err := run(context.Background(), []string{"serve", "--rules", "../../testdata/rules", "--workflows", wf, "--listen", "127.0.0.1:0",
		"--etcd-listen", "http://127.0.0.1:0", "--data-dir", data}, io.Discard, io.Discard)
	want := "--workflows " + wf + `: ddcolor_person.sluice.yaml: node "7" (Colorize) has no input "model_input_size" (declared for size)`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant    %s", err, want)
	}
	if exitCode(err) != 1 {
		t.Errorf("exit code %d, want 1", exitCode(err))
	}
	if _, err := os.Stat(filepath.Join(data, "etcd")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the embedded etcd started before the templates were checked (%s/etcd: %v)", data, err)
	}
}
