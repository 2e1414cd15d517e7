package comfyui

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// The templates in testdata/workflows are what tests and `make run` read; the
// embedded ones are what the binary ships. They must not drift apart.
func TestEmbeddedWorkflowsMatchTestdata(t *testing.T) {
	embedded, err := fs.Glob(embeddedWorkflows, "workflows/*")
	if err != nil {
		t.Fatal(err)
	}
	copies, err := filepath.Glob("../../testdata/workflows/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(embedded) != 6 {
		t.Errorf("embedded %q, want three templates and their sidecars", embedded)
	}
	if len(embedded) != len(copies) {
		t.Fatalf("embedded %d templates, testdata/workflows has %d", len(embedded), len(copies))
	}
	for _, name := range embedded {
		want, err := embeddedWorkflows.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("../../testdata/workflows", filepath.Base(name)))
		if err != nil {
			t.Fatalf("testdata copy of %s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("testdata/workflows/%s differs from adapters/comfyui/%s", filepath.Base(name), name)
		}
	}
}

func TestDefaultWorkflows(t *testing.T) {
	w := DefaultWorkflows()
	got := strings.Join(w.Names(), ",")
	if got != "ddcolor_building,ddcolor_person,zimage_generate" {
		t.Fatalf("Names() = %s", got)
	}
	wf, _ := w.Template("ddcolor_building")
	if v := wf["2"].Inputs["model_input_size"]; v != json.Number("1280") {
		t.Errorf("building model_input_size = %v, want 1280", v)
	}
	dir, err := LoadWorkflows(os.DirFS("../../testdata/workflows"))
	if err != nil {
		t.Fatalf("LoadWorkflows(testdata/workflows): %v", err)
	}
	if strings.Join(dir.Names(), ",") != got {
		t.Errorf("testdata names = %v", dir.Names())
	}
}

func TestLoadWorkflowsErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"empty folder", map[string]string{"README": "x"}, "no *.json workflow templates"},
		{"sidecar alone", map[string]string{"a.json": `{"1": {"class_type": "X", "inputs": {}}}`, "b.sluice.yaml": "image: {node: 1, input: image}"}, "b.sluice.yaml: no template b.json next to it"},
		{"not JSON", map[string]string{"a.json": "{"}, "a.json: not a JSON object"},
		{"UI format", map[string]string{"a.json": `{"nodes": [], "links": []}`}, `a.json: UI-format workflow`},
		{"no class_type", map[string]string{"a.json": `{"1": {"inputs": {}}}`}, `a.json: node "1": class_type missing`},
		{"unknown field", map[string]string{"a.json": `{"1": {"class_type": "X", "input": {}}}`}, `a.json: node "1": json: unknown field "input"`},
		{"dangling link", map[string]string{"a.json": `{"1": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}`}, `a.json: node "1" (SaveImage): input images: link to missing node "7"`},
		{"built-in lacks node", map[string]string{"ddcolor_person.json": `{"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}`},
			"ddcolor_person.json: every ddcolor_person job sends size, and no DDColor_Colorize node"},
		{"found node lacks input", map[string]string{"ddcolor_person.json": `{"1": {"class_type": "LoadImage", "inputs": {}}}`},
			`ddcolor_person.json: node "1" (LoadImage) has no input "image" (for image, found by class_type)`},
		{"built-in has two", map[string]string{"zimage_generate.json": `{
			"1": {"class_type": "CLIPTextEncode", "inputs": {}}, "2": {"class_type": "EmptySD3LatentImage", "inputs": {}},
			"3": {"class_type": "KSampler", "inputs": {}}, "4": {"class_type": "KSampler", "inputs": {}}}`}, "zimage_generate.json: 2 KSampler nodes (3, 4): say which takes seed in zimage_generate.sluice.yaml"},
		{"two loaders", map[string]string{"two_loaders.json": `{
			"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
			"2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}}`}, "two_loaders.json: 2 LoadImage nodes (1, 2): say which takes image in two_loaders.sluice.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for name, body := range tt.files {
				fsys[name] = &fstest.MapFile{Data: []byte(body)}
			}
			_, err := LoadWorkflows(fsys)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// sdxl has two CLIPTextEncode nodes: the prompt goes where KSampler's
// positive input comes from, the negative prompt to its negative input.
const sdxl = `{
 "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
 "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "pos", "clip": ["4", 1]}},
 "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "neg", "clip": ["4", 1]}},
 "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
 "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
 "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}`

func TestBind(t *testing.T) {
	fsys := fstest.MapFS{"sdxl.json": {Data: []byte(sdxl)}}
	sub, _ := fs.Sub(embeddedWorkflows, "workflows")
	for _, name := range []string{"ddcolor_person.json", "ddcolor_building.json", "zimage_generate.json",
		"ddcolor_person.sluice.yaml", "ddcolor_building.sluice.yaml", "zimage_generate.sluice.yaml"} {
		b, _ := fs.ReadFile(sub, name)
		fsys[name] = &fstest.MapFile{Data: b}
	}
	w, err := LoadWorkflows(fsys)
	if err != nil {
		t.Fatal(err)
	}

	type want struct {
		node, input string
		value       any
	}
	tests := []struct {
		name    string
		job     Job
		image   string
		want    []want
		wantErr string
	}{
		{
			name:  "ddcolor image and size",
			job:   Job{Resource: "ddcolor_person", Size: 768},
			image: "sluice/in.png",
			want:  []want{{"1", "image", "sluice/in.png"}, {"2", "model_input_size", 768}, {"2", "checkpoint", "ddcolor_modelscope.pth"}, {"3", "filename_prefix", "ddcolor/person"}},
		},
		{
			name:  "ddcolor zero size keeps the template's",
			job:   Job{Resource: "ddcolor_building"},
			image: "in.png",
			want:  []want{{"2", "model_input_size", json.Number("1280")}},
		},
		{
			name:    "ddcolor without image",
			job:     Job{Resource: "ddcolor_person", Size: 512},
			wantErr: "workflow ddcolor_person: node 1 (LoadImage) input image needs an input image",
		},
		{
			name: "zimage all parameters",
			job:  Job{Resource: "zimage_generate", Prompt: "a lighthouse", NegativePrompt: "blur", Width: 768, Height: 512, Steps: 6, Seed: 1 << 60},
			want: []want{{"27", "text", "a lighthouse"}, {"13", "width", 768}, {"13", "height", 512}, {"13", "batch_size", json.Number("1")}, {"3", "steps", 6}, {"3", "seed", int64(1 << 60)}, {"3", "cfg", json.Number("1")}},
		},
		{
			name: "zimage zero values keep the template's",
			job:  Job{Resource: "zimage_generate", Prompt: "x"},
			want: []want{{"13", "width", json.Number("1024")}, {"3", "seed", json.Number("42")}, {"3", "steps", json.Number("8")}},
		},
		{
			name:    "zimage takes no image",
			job:     Job{Resource: "zimage_generate", Prompt: "x"},
			image:   "in.png",
			wantErr: "workflow zimage_generate: cannot take image: zimage_generate.sluice.yaml declares no image",
		},
		{
			name:    "ddcolor takes no prompt",
			job:     Job{Resource: "ddcolor_person", Prompt: "x"},
			image:   "in.png",
			wantErr: "cannot take prompt: ddcolor_person.sluice.yaml declares no prompt",
		},
		{
			name:    "ddcolor takes no width",
			job:     Job{Resource: "ddcolor_person", Width: 64},
			image:   "in.png",
			wantErr: "cannot take width: ddcolor_person.sluice.yaml declares no width",
		},
		{
			name: "two encoders follow the sampler's links",
			job:  Job{Resource: "sdxl", Prompt: "a cat", NegativePrompt: "a dog", Width: 1024},
			want: []want{{"6", "text", "a cat"}, {"7", "text", "a dog"}, {"5", "width", 1024}, {"5", "height", json.Number("512")}},
		},
		{
			name:    "found by class: no DDColor node",
			job:     Job{Resource: "sdxl", Prompt: "p", Size: 512},
			wantErr: "workflow sdxl: cannot take size: no DDColor_Colorize node",
		},
		{
			name:    "unknown resource",
			job:     Job{Resource: "nope"},
			wantErr: `no workflow template for resource "nope" (have ddcolor_building, ddcolor_person, sdxl, zimage_generate)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := w.Template(tt.job.Resource)
			got, err := w.Bind(tt.job, tt.image)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.want {
				if v := got[want.node].Inputs[want.input]; v != want.value {
					t.Errorf("node %s %s = %#v, want %#v", want.node, want.input, v, want.value)
				}
			}
			// The template itself is untouched.
			after, _ := w.Template(tt.job.Resource)
			b1, _ := json.Marshal(before)
			b2, _ := json.Marshal(after)
			if !bytes.Equal(b1, b2) {
				t.Errorf("Bind changed the template:\n%s\n%s", b1, b2)
			}
		})
	}
	if !errors.Is(func() error { _, err := w.Bind(Job{Resource: "nope"}, ""); return err }(), ErrUnknownResource) {
		t.Error("unknown resource error does not wrap ErrUnknownResource")
	}
}

// Z-Image-Turbo's negative conditioning is zeroed, not encoded: a negative
// prompt has nowhere to go and leaves the workflow as it was.
func TestBindZImageIgnoresNegativePrompt(t *testing.T) {
	w := DefaultWorkflows()
	a, err := w.Bind(Job{Resource: "zimage_generate", Prompt: "p"}, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.Bind(Job{Resource: "zimage_generate", Prompt: "p", NegativePrompt: "n"}, "")
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Errorf("negative prompt changed the Z-Image workflow:\n%s\n%s", ja, jb)
	}
}

func TestBindDeepCopies(t *testing.T) {
	w := DefaultWorkflows()
	a, _ := w.Bind(Job{Resource: "zimage_generate", Prompt: "one"}, "")
	a["3"].Inputs["model"].([]any)[0] = "changed"
	b, _ := w.Bind(Job{Resource: "zimage_generate", Prompt: "two"}, "")
	if got := b["3"].Inputs["model"].([]any)[0]; got != "11" {
		t.Fatalf("a bound workflow shares a link with the template: %v", got)
	}
}
