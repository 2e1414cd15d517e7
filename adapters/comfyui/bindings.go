package comfyui

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// param is a job parameter a template can take: a key of a sidecar file.
type param string

// The parameters, in the order errors list them.
const (
	paramImage          param = "image"
	paramSize           param = "size"
	paramPrompt         param = "prompt"
	paramNegativePrompt param = "negative_prompt"
	paramSeed           param = "seed"
	paramWidth          param = "width"
	paramHeight         param = "height"
	paramSteps          param = "steps"
)

var params = [...]param{paramImage, paramSize, paramPrompt, paramNegativePrompt, paramSeed, paramWidth, paramHeight, paramSteps}

// sidecarSuffix ends the name of the file that says where a template's
// parameters go: ddcolor_person.sluice.yaml for ddcolor_person.json.
const sidecarSuffix = ".sluice.yaml"

// requiredParams are the parameters every job of a built-in resource sends:
// its template must take them, or every such job would fail.
var requiredParams = map[string][]param{
	"ddcolor_person":   {paramImage, paramSize},
	"ddcolor_building": {paramImage, paramSize},
	"zimage_generate":  {paramPrompt, paramSeed, paramWidth, paramHeight, paramSteps},
}

// target is one node input that receives a parameter.
type target struct{ node, input string }

// bindings says where each parameter of a template goes. A parameter with
// no targets is not taken; why says why (for the error of a job that sends
// it anyway).
type bindings struct {
	// from names where the bindings come from: the sidecar file, or the
	// template file when they were found by class_type.
	from    string
	found   bool // by class_type, not declared in a sidecar
	targets map[param][]target
	why     map[param]string
}

// parseSidecar reads a sidecar: a YAML mapping from parameter to one target
// {node: ID, input: NAME} or a list of them.
//
//	image: {node: "1", input: image}
//	seed:
//	  - {node: "3", input: seed}
//	  - {node: "12", input: noise_seed}
func parseSidecar(file string, data []byte) (*bindings, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	b := &bindings{from: file, targets: map[param][]target{}, why: map[param]string{}}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: declares no parameters", file)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: line %d: want a mapping of parameter to {node, input}", file, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, value := root.Content[i], root.Content[i+1]
		p := param(key.Value)
		if !slices.Contains(params[:], p) {
			return nil, fmt.Errorf("%s: line %d: unknown parameter %q (want one of %s)", file, key.Line, key.Value, paramList())
		}
		if _, dup := b.targets[p]; dup {
			return nil, fmt.Errorf("%s: line %d: %s declared twice", file, key.Line, p)
		}
		var items []*yaml.Node
		switch value.Kind {
		case yaml.MappingNode:
			items = []*yaml.Node{value}
		case yaml.SequenceNode:
			items = value.Content
		}
		if len(items) == 0 {
			return nil, fmt.Errorf("%s: line %d: %s: want {node: ID, input: NAME} or a list of them", file, value.Line, p)
		}
		for _, item := range items {
			t, err := parseTarget(item)
			if err != nil {
				return nil, fmt.Errorf("%s: line %d: %s: %w", file, item.Line, p, err)
			}
			b.targets[p] = append(b.targets[p], t)
		}
	}
	for _, p := range params {
		if len(b.targets[p]) == 0 {
			b.why[p] = file + " declares no " + string(p)
		}
	}
	return b, nil
}

func parseTarget(n *yaml.Node) (target, error) {
	if n.Kind != yaml.MappingNode {
		return target{}, errors.New("want {node: ID, input: NAME}")
	}
	var t target
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		if value.Kind != yaml.ScalarNode || value.Value == "" {
			return target{}, fmt.Errorf("%s: want a node id or input name, not %s", key.Value, kindName(value))
		}
		switch key.Value {
		case "node":
			t.node = value.Value
		case "input":
			t.input = value.Value
		default:
			return target{}, fmt.Errorf("unknown key %q (want node and input)", key.Value)
		}
	}
	if t.node == "" || t.input == "" {
		return target{}, errors.New("want both node and input")
	}
	return t, nil
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return "an empty value"
}

func paramList() string {
	s := make([]string, len(params))
	for i, p := range params {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}

// check reports the first target that wf cannot take: a node that is not in
// the workflow, an input the node lacks, an input that is a link, or one
// input declared for two parameters. file names the template.
func (b *bindings) check(wf Workflow, file string) error {
	seen := map[target]param{}
	for _, p := range params {
		how := "declared for " + string(p)
		if b.found {
			how = "for " + string(p) + ", found by class_type"
		}
		for _, t := range b.targets[p] {
			n, ok := wf[t.node]
			if !ok {
				return fmt.Errorf("%s: node %q is not in %s (%s)", b.from, t.node, file, how)
			}
			v, ok := n.Inputs[t.input]
			if !ok {
				return fmt.Errorf("%s: node %q (%s) has no input %q (%s)", b.from, t.node, n.ClassType, t.input, how)
			}
			if from, ok := linkTarget(v); ok {
				return fmt.Errorf("%s: node %q (%s) input %q is a link from node %q, not a value (%s)", b.from, t.node, n.ClassType, t.input, from, how)
			}
			if other, ok := seen[t]; ok {
				return fmt.Errorf("%s: node %q (%s) input %q is declared for both %s and %s", b.from, t.node, n.ClassType, t.input, other, p)
			}
			seen[t] = p
		}
	}
	return nil
}

// requires reports the first parameter jobs of resource always send that
// the bindings do not take.
func (b *bindings) requires(resource string) error {
	for _, p := range requiredParams[resource] {
		if len(b.targets[p]) == 0 {
			return fmt.Errorf("%s: every %s job sends %s, and %s", b.from, resource, p, b.why[p])
		}
	}
	return nil
}

// inferBindings finds where the parameters go in a template that has no
// sidecar, by class_type, as sluice did before sidecars:
//
//   - image → LoadImage.image;
//   - size → DDColor_Colorize.model_input_size;
//   - prompt → CLIPTextEncode.text: the encoder linked to KSampler's
//     positive input, else the only one;
//   - negative_prompt → the CLIPTextEncode linked to KSampler's negative
//     input, if any;
//   - width, height → EmptySD3LatentImage (or EmptyLatentImage);
//   - seed, steps → KSampler.
//
// A class found more than once is an error: the sidecar must say which.
func inferBindings(wf Workflow, file, sidecar string) (*bindings, error) {
	b := &bindings{from: file, found: true, targets: map[param][]target{}, why: map[param]string{}}
	add := func(p param, class, input string) error {
		ids := wf.NodesOf(class)
		switch len(ids) {
		case 0:
			b.why[p] = "no " + class + " node"
		case 1:
			b.targets[p] = append(b.targets[p], target{ids[0], input})
		default:
			return fmt.Errorf("%s: %d %s nodes (%s): say which takes %s in %s", file, len(ids), class, strings.Join(ids, ", "), p, sidecar)
		}
		return nil
	}
	if err := add(paramImage, "LoadImage", "image"); err != nil {
		return nil, err
	}
	if err := add(paramSize, "DDColor_Colorize", "model_input_size"); err != nil {
		return nil, err
	}
	latent := "EmptySD3LatentImage"
	if len(wf.NodesOf(latent)) == 0 && len(wf.NodesOf("EmptyLatentImage")) > 0 {
		latent = "EmptyLatentImage"
	}
	for _, p := range []param{paramWidth, paramHeight} {
		if err := add(p, latent, string(p)); err != nil {
			return nil, err
		}
	}
	for _, p := range []param{paramSeed, paramSteps} {
		if err := add(p, "KSampler", string(p)); err != nil {
			return nil, err
		}
	}
	// The sampler's links say which encoder is which.
	var sampler *Node
	if ids := wf.NodesOf("KSampler"); len(ids) == 1 {
		sampler = wf[ids[0]]
	}
	encoder := func(side string) (string, bool) {
		if sampler == nil {
			return "", false
		}
		id, ok := linkTarget(sampler.Inputs[side])
		return id, ok && wf[id].ClassType == "CLIPTextEncode"
	}
	if id, ok := encoder("positive"); ok {
		b.targets[paramPrompt] = []target{{id, "text"}}
	} else if err := add(paramPrompt, "CLIPTextEncode", "text"); err != nil {
		return nil, err
	}
	if id, ok := encoder("negative"); ok {
		b.targets[paramNegativePrompt] = []target{{id, "text"}}
	} else {
		b.why[paramNegativePrompt] = "no CLIPTextEncode on KSampler's negative input"
	}
	return b, nil
}
