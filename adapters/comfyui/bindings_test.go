package comfyui

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// The built-in templates now say where their parameters go in sidecars;
// what Bind makes of them must be what it made when it found the nodes by
// class_type. testdata/bind_golden.json was written by that older Bind.
func TestBuiltinBindingsUnchanged(t *testing.T) {
	cases := []struct {
		name  string
		job   Job
		image string
	}{
		{"ddcolor_person image and size", Job{Resource: "ddcolor_person", Size: 768}, "sluice/in.png"},
		{"ddcolor_person image only", Job{Resource: "ddcolor_person"}, "in.png"},
		{"ddcolor_building image and size", Job{Resource: "ddcolor_building", Size: 1024}, "sluice/b.png"},
		{"zimage_generate every parameter", Job{Resource: "zimage_generate", Prompt: "a lighthouse", NegativePrompt: "blur", Width: 768, Height: 512, Steps: 6, Seed: 1 << 60}, ""},
		{"zimage_generate prompt only", Job{Resource: "zimage_generate", Prompt: "x"}, ""},
		{"zimage_generate width only", Job{Resource: "zimage_generate", Prompt: "y", Width: 640, Seed: 7}, ""},
	}
	data, err := os.ReadFile("testdata/bind_golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var golden []struct {
		Name     string          `json:"name"`
		Workflow json.RawMessage `json:"workflow"`
	}
	if err := json.Unmarshal(data, &golden); err != nil {
		t.Fatal(err)
	}
	if len(golden) != len(cases) {
		t.Fatalf("%d golden workflows for %d cases", len(golden), len(cases))
	}
	w := DefaultWorkflows()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if golden[i].Name != c.name {
				t.Fatalf("golden %d is %q", i, golden[i].Name)
			}
			wf, err := w.Bind(c.job, c.image)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(wf)
			var want bytes.Buffer
			if err := json.Compact(&want, golden[i].Workflow); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Errorf("Bind =\n%s\nwant (the older Bind)\n%s", got, want.Bytes())
			}
		})
	}
	// Every built-in template has its sidecar: none is found by class_type.
	for _, name := range w.Names() {
		if b := w.byName[name].bind; b.found || b.from != name+".sluice.yaml" {
			t.Errorf("%s: bindings from %s (found by class_type: %v)", name, b.from, b.found)
		}
	}
}

// A colorizer and a generator from other node packs, with class names
// sluice has never heard of, take their parameters where their sidecars
// say. The colorizer also has a second LoadImage (a mask) that must not
// take the photo.
func TestBindOtherNodePacks(t *testing.T) {
	fsys := fstest.MapFS{
		"ddcolor_person.json": {Data: []byte(`{
 "10": {"class_type": "LoadImage", "inputs": {"image": "mask.png"}},
 "11": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
 "12": {"class_type": "BigColorize", "inputs": {"pixels": ["11", 0], "mask": ["10", 0], "resolution": 256, "model": "bigcolor.pt"}},
 "13": {"class_type": "Image Save", "inputs": {"images": ["12", 0], "output_path": "colorized"}}}`)},
		"ddcolor_person.sluice.yaml": {Data: []byte(`# a photo and a size
image: {node: "11", input: image}
size: {node: 12, input: resolution}
`)},
		"zimage_generate.json": {Data: []byte(`{
 "1": {"class_type": "CLIPTextEncodeFlux", "inputs": {"t5xxl": "P", "clip_l": "P", "guidance": 3.5, "clip": ["2", 0]}},
 "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5.safetensors", "clip_name2": "l.safetensors", "type": "flux"}},
 "3": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
 "4": {"class_type": "BasicScheduler", "inputs": {"steps": 20, "scheduler": "simple", "denoise": 1}},
 "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
 "6": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 30, "positive": ["1", 0], "negative": ["1", 0], "latent_image": ["5", 0]}}}`)},
		"zimage_generate.sluice.yaml": {Data: []byte(`prompt:
  - {node: "1", input: t5xxl}
  - {node: "1", input: clip_l}
seed: [{node: "3", input: noise_seed}]
steps: {node: "4", input: steps}
width: {node: "5", input: width}
height: {node: "5", input: height}
`)},
	}
	w, err := LoadWorkflows(fsys)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		node, input string
		value       any
	}
	for _, tt := range []struct {
		job   Job
		image string
		want  []want
	}{
		{Job{Resource: "ddcolor_person", Size: 512}, "sluice/in.png",
			[]want{{"11", "image", "sluice/in.png"}, {"10", "image", "mask.png"}, {"12", "resolution", 512}, {"12", "model", "bigcolor.pt"}}},
		{Job{Resource: "zimage_generate", Prompt: "a fox", NegativePrompt: "ignored", Seed: 99, Steps: 4, Width: 512, Height: 768}, "",
			[]want{{"1", "t5xxl", "a fox"}, {"1", "clip_l", "a fox"}, {"3", "noise_seed", int64(99)}, {"4", "steps", 4},
				{"5", "width", 512}, {"5", "height", 768}, {"6", "seed", json.Number("5")}, {"6", "steps", json.Number("30")}}},
	} {
		wf, err := w.Bind(tt.job, tt.image)
		if err != nil {
			t.Fatalf("%s: %v", tt.job.Resource, err)
		}
		for _, want := range tt.want {
			if v := wf[want.node].Inputs[want.input]; v != want.value {
				t.Errorf("%s: node %s %s = %#v, want %#v", tt.job.Resource, want.node, want.input, v, want.value)
			}
		}
	}
}

// Each mistake in a sidecar is refused at load with the file, the node and
// the input it is about.
func TestSidecarErrors(t *testing.T) {
	const person = `{
 "1": {"class_type": "LoadImage", "inputs": {"image": "upload.png"}},
 "7": {"class_type": "Colorize", "inputs": {"image": ["1", 0], "size": 512}}}`
	tests := []struct {
		name, sidecar, want string
	}{
		{"node missing", "image: {node: 1, input: image}\nsize: {node: 9, input: size}\n",
			`ddcolor_person.sluice.yaml: node "9" is not in ddcolor_person.json (declared for size)`},
		{"input missing", "image: {node: 1, input: image}\nsize: {node: 7, input: model_input_size}\n",
			`ddcolor_person.sluice.yaml: node "7" (Colorize) has no input "model_input_size" (declared for size)`},
		{"input is a link", "image: {node: 7, input: image}\nsize: {node: 7, input: size}\n",
			`ddcolor_person.sluice.yaml: node "7" (Colorize) input "image" is a link from node "1", not a value (declared for image)`},
		{"one input, two parameters", "image: {node: 1, input: image}\nsize: {node: 7, input: size}\nsteps: {node: 7, input: size}\n",
			`ddcolor_person.sluice.yaml: node "7" (Colorize) input "size" is declared for both size and steps`},
		{"required parameter missing", "image: {node: 1, input: image}\n",
			`ddcolor_person.sluice.yaml: every ddcolor_person job sends size, and ddcolor_person.sluice.yaml declares no size`},
		{"unknown parameter", "image: {node: 1, input: image}\nsise: {node: 7, input: size}\n",
			`ddcolor_person.sluice.yaml: line 2: unknown parameter "sise" (want one of image, size, prompt, negative_prompt, seed, width, height, steps)`},
		{"unknown key", "image: {node: 1, inptu: image}\n",
			`ddcolor_person.sluice.yaml: line 1: image: unknown key "inptu" (want node and input)`},
		{"no input", "image: {node: 1}\n", `ddcolor_person.sluice.yaml: line 1: image: want both node and input`},
		{"not a target", "image: 1\n", `ddcolor_person.sluice.yaml: line 1: image: want {node: ID, input: NAME} or a list of them`},
		{"declared twice", "image: {node: 1, input: image}\nimage: {node: 1, input: image}\n", `ddcolor_person.sluice.yaml: line 2: image declared twice`},
		{"empty", "# nothing\n", `ddcolor_person.sluice.yaml: declares no parameters`},
		{"not YAML", "image: {node: 1\n", `ddcolor_person.sluice.yaml: yaml:`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadWorkflows(fstest.MapFS{
				"ddcolor_person.json":        {Data: []byte(person)},
				"ddcolor_person.sluice.yaml": {Data: []byte(tt.sidecar)},
			})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// Whatever a sidecar holds, loading it returns bindings or an error, and
// bindings that load only name known parameters and whole targets.
func FuzzParseSidecar(f *testing.F) {
	f.Add("image: {node: 1, input: image}\nsize: {node: 7, input: size}\n")
	f.Add("seed:\n  - {node: \"3\", input: seed}\n  - {node: 4, input: noise_seed}\n")
	f.Add("image: [{node: 1, input: image}, {node: 1}]\n")
	f.Add("- image\n")
	f.Add("image: &a {node: 1, input: image}\nsize: *a\n")
	wf, err := ParseWorkflow([]byte(`{"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
 "7": {"class_type": "Colorize", "inputs": {"image": ["1", 0], "size": 512}}}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, src string) {
		b, err := parseSidecar("f.sluice.yaml", []byte(src))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.sluice.yaml: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for p, ts := range b.targets {
			if !slices.Contains(params[:], p) {
				t.Fatalf("unknown parameter %q accepted", p)
			}
			for _, tg := range ts {
				if tg.node == "" || tg.input == "" {
					t.Fatalf("%s: incomplete target %+v", p, tg)
				}
			}
		}
		if err := b.check(wf, "f.json"); err == nil {
			if _, err := (&Workflows{byName: map[string]*template{"f": {wf: wf, bind: b}}}).Bind(Job{Resource: "f", Size: 3}, "in.png"); err != nil &&
				!strings.Contains(err.Error(), "cannot take") {
				t.Fatalf("checked bindings fail to bind: %v", err)
			}
		}
	})
}
