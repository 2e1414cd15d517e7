package comfyui

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
)

//go:embed workflows/*.json workflows/*.sluice.yaml
var embeddedWorkflows embed.FS

// Workflow is a ComfyUI workflow in API format: its nodes by node id.
// Numbers decoded from a template are json.Number, so that seeds and other
// large integers survive a round trip unchanged.
type Workflow map[string]*Node

// Node is one node of a Workflow. An input is either a literal value or a link
// to another node's output, written as [node id, output index].
type Node struct {
	ClassType string         `json:"class_type"`
	Inputs    map[string]any `json:"inputs"`
	Meta      map[string]any `json:"_meta,omitempty"`
}

// Clone returns a deep copy of wf.
func (wf Workflow) Clone() Workflow {
	out := make(Workflow, len(wf))
	for id, n := range wf {
		c := &Node{ClassType: n.ClassType, Inputs: cloneValue(n.Inputs).(map[string]any)}
		if n.Meta != nil {
			c.Meta = cloneValue(n.Meta).(map[string]any)
		}
		out[id] = c
	}
	return out
}

// NodesOf returns the ids of the nodes of the given class, in ascending id order.
func (wf Workflow) NodesOf(classType string) []string {
	var ids []string
	for id, n := range wf {
		if n.ClassType == classType {
			ids = append(ids, id)
		}
	}
	sortNodeIDs(ids)
	return ids
}

// ParseWorkflow decodes a workflow in API format and checks its shape: every
// node has a class_type and an inputs object, and every link names a node of
// the workflow. A workflow saved in the editor's UI format is refused with a
// hint to export it in API format.
func ParseWorkflow(data []byte) (Workflow, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if _, ok := top["nodes"]; ok {
		if _, ok := top["links"]; ok {
			return nil, errors.New(`UI-format workflow ("nodes", "links"): export it with "Export (API)"`)
		}
	}
	if len(top) == 0 {
		return nil, errors.New("workflow has no nodes")
	}
	wf := make(Workflow, len(top))
	for id, raw := range top {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		dec.DisallowUnknownFields()
		var n Node
		if err := dec.Decode(&n); err != nil {
			return nil, fmt.Errorf("node %q: %w", id, err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, fmt.Errorf("node %q: trailing data", id)
		}
		if n.ClassType == "" {
			return nil, fmt.Errorf("node %q: class_type missing", id)
		}
		if n.Inputs == nil {
			n.Inputs = map[string]any{}
		}
		wf[id] = &n
	}
	for _, id := range wf.ids() {
		n := wf[id]
		for _, name := range sortedKeys(n.Inputs) {
			if target, ok := linkTarget(n.Inputs[name]); ok {
				if _, ok := wf[target]; !ok {
					return nil, fmt.Errorf("node %q (%s): input %s: link to missing node %q", id, n.ClassType, name, target)
				}
			}
		}
	}
	return wf, nil
}

func (wf Workflow) ids() []string {
	ids := make([]string, 0, len(wf))
	for id := range wf {
		ids = append(ids, id)
	}
	sortNodeIDs(ids)
	return ids
}

// Workflows is an immutable set of workflow templates, by resource name,
// each with the node inputs its job parameters go to. It is safe for
// concurrent use.
type Workflows struct {
	byName map[string]*template
}

// template is one workflow template and where its parameters go.
type template struct {
	wf   Workflow
	bind *bindings
}

// LoadWorkflows reads every *.json file at the root of fsys as a template in
// API format; the file name without ".json" is the resource name. Next to a
// template, NAME.sluice.yaml says which node input takes each job parameter
// (image, size, prompt, negative_prompt, seed, width, height, steps):
//
//	image: {node: "1", input: image}
//	size: {node: "2", input: model_input_size}
//
// A parameter may go to a list of inputs. A template without one has its
// parameters found by class_type (see inferBindings: LoadImage,
// DDColor_Colorize, CLIPTextEncode, EmptySD3LatentImage, KSampler).
//
// Every declared node and input must exist in the template and hold a value
// (not a link), and the templates of the built-in resources must take the
// parameters their jobs always send. Errors name the file, the node and the
// input. Use it with os.DirFS for a --workflows folder.
func LoadWorkflows(fsys fs.FS) (*Workflows, error) {
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, errors.New("no *.json workflow templates found")
	}
	sidecars, err := fs.Glob(fsys, "*"+sidecarSuffix)
	if err != nil {
		return nil, err
	}
	for _, sc := range sidecars {
		tpl := strings.TrimSuffix(sc, sidecarSuffix) + ".json"
		if !slices.Contains(names, tpl) {
			return nil, fmt.Errorf("%s: no template %s next to it", sc, tpl)
		}
	}
	w := &Workflows{byName: make(map[string]*template, len(names))}
	for _, file := range names {
		name := strings.TrimSuffix(path.Base(file), ".json")
		t, err := loadTemplate(fsys, file, name+sidecarSuffix, slices.Contains(sidecars, name+sidecarSuffix))
		if err != nil {
			return nil, err
		}
		if err := t.bind.requires(name); err != nil {
			return nil, err
		}
		w.byName[name] = t
	}
	return w, nil
}

func loadTemplate(fsys fs.FS, file, sidecar string, hasSidecar bool) (*template, error) {
	data, err := fs.ReadFile(fsys, file)
	if err != nil {
		return nil, err
	}
	wf, err := ParseWorkflow(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var b *bindings
	if hasSidecar {
		data, err := fs.ReadFile(fsys, sidecar)
		if err != nil {
			return nil, err
		}
		if b, err = parseSidecar(sidecar, data); err != nil {
			return nil, err
		}
	} else if b, err = inferBindings(wf, file, sidecar); err != nil {
		return nil, err
	}
	if err := b.check(wf, file); err != nil {
		return nil, err
	}
	return &template{wf: wf, bind: b}, nil
}

var defaultWorkflows = sync.OnceValues(func() (*Workflows, error) {
	sub, err := fs.Sub(embeddedWorkflows, "workflows")
	if err != nil {
		return nil, err
	}
	return LoadWorkflows(sub)
})

// DefaultWorkflows returns the templates embedded in the binary:
// ddcolor_person, ddcolor_building and zimage_generate, each with its
// sidecar. It panics only if the embedded files are broken, which the
// package's tests rule out.
func DefaultWorkflows() *Workflows {
	w, err := defaultWorkflows()
	if err != nil {
		panic("comfyui: embedded workflows: " + err.Error())
	}
	return w
}

// Names returns the resource names, sorted.
func (w *Workflows) Names() []string {
	names := make([]string, 0, len(w.byName))
	for n := range w.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Template returns a copy of the template for resource.
func (w *Workflows) Template(resource string) (Workflow, bool) {
	t, ok := w.byName[resource]
	if !ok {
		return nil, false
	}
	return t.wf.Clone(), true
}

// ErrUnknownResource is returned (wrapped) when no template exists for a
// job's resource.
var ErrUnknownResource = errors.New("comfyui: no workflow template for resource")

// Bind returns a copy of the template for job.Resource with the job's
// parameters written to the node inputs its sidecar declares (or that were
// found by class_type): image ← image (the uploaded file as LoadImage names
// it, "subfolder/name"), size ← job.Size, prompt ← job.Prompt,
// negative_prompt ← job.NegativePrompt, seed, width, height, steps ← the
// job's. A zero value keeps the template's value.
//
// A parameter the job sends and the template does not take is an error,
// except the negative prompt: Z-Image-Turbo's negative is a
// ConditioningZeroOut, so there it is not bound (Run records it in
// extra_data). A template that takes an image needs one.
func (w *Workflows) Bind(job Job, image string) (Workflow, error) {
	t, ok := w.byName[job.Resource]
	if !ok {
		return nil, fmt.Errorf("%w %q (have %s)", ErrUnknownResource, job.Resource, strings.Join(w.Names(), ", "))
	}
	wf := t.wf.Clone()
	if err := t.bind.apply(wf, job, image); err != nil {
		return nil, fmt.Errorf("comfyui: workflow %s: %w", job.Resource, err)
	}
	return wf, nil
}

// apply writes job's parameters into wf, a copy of the template b checked.
func (b *bindings) apply(wf Workflow, job Job, image string) error {
	if ts := b.targets[paramImage]; image == "" && len(ts) > 0 {
		return fmt.Errorf("node %s (%s) input %s needs an input image, the job has none", ts[0].node, wf[ts[0].node].ClassType, ts[0].input)
	}
	values := []struct {
		p     param
		value any
		set   bool
	}{
		{paramImage, image, image != ""},
		{paramSize, job.Size, job.Size != 0},
		{paramPrompt, job.Prompt, job.Prompt != ""},
		{paramNegativePrompt, job.NegativePrompt, job.NegativePrompt != ""},
		{paramWidth, job.Width, job.Width != 0},
		{paramHeight, job.Height, job.Height != 0},
		{paramSteps, job.Steps, job.Steps != 0},
		{paramSeed, job.Seed, job.Seed != 0},
	}
	for _, v := range values {
		if !v.set {
			continue
		}
		ts := b.targets[v.p]
		if len(ts) == 0 && v.p != paramNegativePrompt {
			return fmt.Errorf("cannot take %s: %s", v.p, b.why[v.p])
		}
		for _, t := range ts {
			wf[t.node].Inputs[t.input] = v.value
		}
	}
	return nil
}

// linkTarget reports whether v is a link [node id, output index] and to which node.
func linkTarget(v any) (string, bool) {
	l, ok := v.([]any)
	if !ok || len(l) != 2 {
		return "", false
	}
	id, ok := l[0].(string)
	if !ok {
		return "", false
	}
	switch l[1].(type) {
	case json.Number, float64, int:
		return id, true
	}
	return "", false
}

func cloneValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = cloneValue(x)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, x := range v {
			s[i] = cloneValue(x)
		}
		return s
	default:
		return v
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// sortNodeIDs orders node ids numerically where both are numbers, else as strings.
func sortNodeIDs(ids []string) {
	slices.SortFunc(ids, compareNodeIDs)
}

func compareNodeIDs(a, b string) int {
	if len(a) != len(b) && isDigits(a) && isDigits(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
