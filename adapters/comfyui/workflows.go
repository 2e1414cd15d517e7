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

//go:embed workflows/*.json
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

// Workflows is an immutable set of workflow templates, by resource name.
// It is safe for concurrent use.
type Workflows struct {
	byName map[string]Workflow
}

// Nodes each built-in resource needs in its template; checked at load time.
var requiredNodes = map[string][]string{
	"ddcolor_person":   {"LoadImage", "DDColor_Colorize"},
	"ddcolor_building": {"LoadImage", "DDColor_Colorize"},
	"zimage_generate":  {"CLIPTextEncode", "EmptySD3LatentImage", "KSampler"},
}

// LoadWorkflows reads every *.json file at the root of fsys as a template in
// API format; the file name without ".json" is the resource name. Templates of
// the built-in resources must hold the nodes their parameters bind to. Use it
// with os.DirFS for a --workflows folder.
func LoadWorkflows(fsys fs.FS) (*Workflows, error) {
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, errors.New("comfyui: no *.json workflow templates found")
	}
	w := &Workflows{byName: make(map[string]Workflow, len(names))}
	for _, file := range names {
		data, err := fs.ReadFile(fsys, file)
		if err != nil {
			return nil, fmt.Errorf("comfyui: %w", err)
		}
		wf, err := ParseWorkflow(data)
		if err != nil {
			return nil, fmt.Errorf("comfyui: workflow %s: %w", file, err)
		}
		name := strings.TrimSuffix(path.Base(file), ".json")
		for _, class := range requiredNodes[name] {
			if _, _, err := wf.only(class); err != nil {
				return nil, fmt.Errorf("comfyui: workflow %s: %w", file, err)
			}
		}
		w.byName[name] = wf
	}
	return w, nil
}

var defaultWorkflows = sync.OnceValues(func() (*Workflows, error) {
	sub, err := fs.Sub(embeddedWorkflows, "workflows")
	if err != nil {
		return nil, err
	}
	return LoadWorkflows(sub)
})

// DefaultWorkflows returns the templates embedded in the binary:
// ddcolor_person, ddcolor_building and zimage_generate. It panics only if the
// embedded files are broken, which the package's tests rule out.
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
	wf, ok := w.byName[resource]
	if !ok {
		return nil, false
	}
	return wf.Clone(), true
}

// ErrUnknownResource is returned (wrapped) when no template exists for a
// job's resource.
var ErrUnknownResource = errors.New("comfyui: no workflow template for resource")

// Bind returns a copy of the template for job.Resource with the job's
// parameters applied, finding nodes by class_type:
//
//   - LoadImage.image ← image (the uploaded file as LoadImage names it,
//     "subfolder/name"); required when the template loads an image;
//   - DDColor_Colorize.model_input_size ← job.Size;
//   - CLIPTextEncode.text ← job.Prompt: the encoder linked to KSampler's
//     positive input, else the only one;
//   - job.NegativePrompt goes to the CLIPTextEncode linked to KSampler's
//     negative input. Z-Image-Turbo's negative is a ConditioningZeroOut, so
//     there it is not bound (Run records it in extra_data);
//   - EmptySD3LatentImage (or EmptyLatentImage) width/height ← job.Width/Height;
//   - KSampler seed/steps ← job.Seed/Steps.
//
// A zero value keeps the template's value. A parameter whose node is missing,
// or appears more than once, is an error.
func (w *Workflows) Bind(job Job, image string) (Workflow, error) {
	tpl, ok := w.byName[job.Resource]
	if !ok {
		return nil, fmt.Errorf("%w %q (have %s)", ErrUnknownResource, job.Resource, strings.Join(w.Names(), ", "))
	}
	wf := tpl.Clone()
	if err := wf.bind(job, image); err != nil {
		return nil, fmt.Errorf("comfyui: workflow %s: %w", job.Resource, err)
	}
	return wf, nil
}

func (wf Workflow) bind(job Job, image string) error {
	loaders := wf.NodesOf("LoadImage")
	switch {
	case image != "":
		_, n, err := wf.only("LoadImage")
		if err != nil {
			return fmt.Errorf("cannot take the input image: %w", err)
		}
		n.Inputs["image"] = image
	case len(loaders) > 0:
		return fmt.Errorf("node %s (LoadImage) needs an input image, the job has none", loaders[0])
	}
	if job.Size != 0 {
		_, n, err := wf.only("DDColor_Colorize")
		if err != nil {
			return fmt.Errorf("cannot take size: %w", err)
		}
		n.Inputs["model_input_size"] = job.Size
	}
	if job.Prompt != "" {
		n, err := wf.textEncoder("positive")
		if err != nil {
			return fmt.Errorf("cannot take the prompt: %w", err)
		}
		n.Inputs["text"] = job.Prompt
	}
	if job.NegativePrompt != "" {
		if n, err := wf.textEncoder("negative"); err == nil {
			n.Inputs["text"] = job.NegativePrompt
		}
	}
	if job.Width != 0 || job.Height != 0 {
		n, err := wf.latent()
		if err != nil {
			return fmt.Errorf("cannot take width/height: %w", err)
		}
		if job.Width != 0 {
			n.Inputs["width"] = job.Width
		}
		if job.Height != 0 {
			n.Inputs["height"] = job.Height
		}
	}
	if job.Steps != 0 || job.Seed != 0 {
		_, n, err := wf.only("KSampler")
		if err != nil {
			return fmt.Errorf("cannot take steps/seed: %w", err)
		}
		if job.Steps != 0 {
			n.Inputs["steps"] = job.Steps
		}
		if job.Seed != 0 {
			n.Inputs["seed"] = job.Seed
		}
	}
	return nil
}

// only returns the single node of class.
func (wf Workflow) only(class string) (string, *Node, error) {
	ids := wf.NodesOf(class)
	switch len(ids) {
	case 0:
		return "", nil, fmt.Errorf("no %s node", class)
	case 1:
		return ids[0], wf[ids[0]], nil
	default:
		return "", nil, fmt.Errorf("%d %s nodes (%s), expected one", len(ids), class, strings.Join(ids, ", "))
	}
}

// textEncoder finds the CLIPTextEncode feeding KSampler's positive or
// negative input. For "positive" without such a link it falls back to the
// only CLIPTextEncode of the workflow.
func (wf Workflow) textEncoder(side string) (*Node, error) {
	if _, ks, err := wf.only("KSampler"); err == nil {
		if target, ok := linkTarget(ks.Inputs[side]); ok {
			if n := wf[target]; n.ClassType == "CLIPTextEncode" {
				return n, nil
			}
			if side == "negative" {
				return nil, fmt.Errorf("KSampler negative comes from %s, not a CLIPTextEncode", wf[target].ClassType)
			}
		}
	}
	if side == "negative" {
		return nil, errors.New("no CLIPTextEncode on KSampler's negative input")
	}
	_, n, err := wf.only("CLIPTextEncode")
	return n, err
}

func (wf Workflow) latent() (*Node, error) {
	for _, class := range []string{"EmptySD3LatentImage", "EmptyLatentImage"} {
		if len(wf.NodesOf(class)) > 0 {
			_, n, err := wf.only(class)
			return n, err
		}
	}
	return nil, errors.New("no EmptySD3LatentImage node")
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
