package comfyuitest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
)

// reason is one validation error, as ComfyUI's validate_inputs writes it.
type reason struct {
	Type      string         `json:"type"`
	Message   string         `json:"message"`
	Details   string         `json:"details"`
	ExtraInfo map[string]any `json:"extra_info"`
}

type nodeError struct {
	Errors           []reason `json:"errors"`
	DependentOutputs []string `json:"dependent_outputs"`
	ClassType        string   `json:"class_type"`
}

type validation struct {
	ok      bool
	reasons []reason
}

// pyException is a Python exception raised while validating or running: it
// becomes an exception_* validation error or an execution_error.
type pyException struct {
	Type    string
	Message string
}

func (e *pyException) Error() string { return e.Message }

// validatePrompt checks a prompt the way ComfyUI's validate_prompt does. It
// returns the outputs to execute, or the error for the 400 answer; nodeErrs
// may be non-empty in both cases. A nil prompt node (not a JSON object) is a
// server error in ComfyUI; it is reported as errBadPrompt.
func validatePrompt(s *Server, p map[string]any, partial []string) (outputs []string, top *reason, nodeErrs map[string]*nodeError, err error) {
	ids := sortedIDs(p)
	var outs []string
	for _, id := range ids {
		node, ok := p[id].(map[string]any)
		if !ok {
			return nil, nil, nil, errBadPrompt
		}
		ct, has := node["class_type"]
		if !has {
			return nil, &reason{
				Type:      "invalid_prompt",
				Message:   "Cannot execute because a node is missing the class_type property.",
				Details:   fmt.Sprintf("Node ID '#%s'", id),
				ExtraInfo: map[string]any{},
			}, map[string]*nodeError{}, nil
		}
		class, _ := ct.(string)
		spec := nodeSpecs[class]
		if spec == nil {
			return nil, &reason{
				Type:      "invalid_prompt",
				Message:   fmt.Sprintf("Cannot execute because node %s does not exist.", pyStr(ct)),
				Details:   fmt.Sprintf("Node ID '#%s'", id),
				ExtraInfo: map[string]any{},
			}, map[string]*nodeError{}, nil
		}
		if spec.output && (partial == nil || slices.Contains(partial, id)) {
			outs = append(outs, id)
		}
	}
	if len(outs) == 0 {
		return nil, &reason{Type: "prompt_no_outputs", Message: "Prompt has no outputs", Details: "", ExtraInfo: map[string]any{}}, map[string]*nodeError{}, nil
	}

	v := &validator{s: s, p: p, done: map[string]*validation{}, busy: map[string]bool{}}
	nodeErrs = map[string]*nodeError{}
	var failed []string
	for _, o := range outs {
		r, err := v.inputs(o)
		if err != nil {
			r = &validation{reasons: []reason{exceptionReason("exception_during_validation", "Exception when validating node", err, nil)}}
			v.done[o] = r
		}
		if r.ok {
			outputs = append(outputs, o)
			continue
		}
		for _, why := range r.reasons {
			failed = append(failed, why.Message+": "+why.Details)
		}
		for _, id := range sortedIDs(v.done) {
			res := v.done[id]
			if res.ok || len(res.reasons) == 0 {
				continue
			}
			ne := nodeErrs[id]
			if ne == nil {
				ne = &nodeError{Errors: res.reasons, DependentOutputs: []string{}, ClassType: classOf(p, id)}
				nodeErrs[id] = ne
			}
			ne.DependentOutputs = append(ne.DependentOutputs, o)
		}
	}
	if len(outputs) == 0 {
		return nil, &reason{
			Type:      "prompt_outputs_failed_validation",
			Message:   "Prompt outputs failed validation",
			Details:   strings.Join(failed, "\n"),
			ExtraInfo: map[string]any{},
		}, nodeErrs, nil
	}
	return outputs, nil, nodeErrs, nil
}

var errBadPrompt = errors.New("prompt is not an object of node objects")

type validator struct {
	s    *Server
	p    map[string]any
	done map[string]*validation
	busy map[string]bool // on the recursion stack: a cycle is Python's RecursionError
}

// inputs is ComfyUI's validate_inputs for node id.
func (v *validator) inputs(id string) (*validation, error) {
	if r, ok := v.done[id]; ok {
		return r, nil
	}
	if v.busy[id] {
		return nil, &pyException{"RecursionError", "maximum recursion depth exceeded"}
	}
	v.busy[id] = true
	defer delete(v.busy, id)

	node := v.p[id].(map[string]any)
	inputs, ok := node["inputs"].(map[string]any)
	if !ok {
		return nil, &pyException{"KeyError", "'inputs'"}
	}
	spec := nodeSpecs[node["class_type"].(string)]
	var reasons []reason
	valid := true
	for _, in := range spec.inputs {
		val, present := inputs[in.name]
		if !present {
			if !in.optional {
				reasons = append(reasons, reason{
					Type: "required_input_missing", Message: "Required input is missing", Details: in.name,
					ExtraInfo: map[string]any{"input_name": in.name},
				})
			}
			continue
		}
		if l, isLink := val.([]any); isLink {
			r, err := v.link(in, l)
			if err != nil {
				return nil, err
			}
			if r != nil {
				reasons = append(reasons, *r)
			} else if lid, _ := l[0].(string); !v.done[lid].ok {
				valid = false
			}
			continue
		}
		if r := checkLiteral(in, val); r != nil {
			reasons = append(reasons, *r)
		}
	}
	if spec.validate != nil {
		failures := spec.validate(v.s, inputs)
		for _, name := range sortedIDs(failures) {
			reasons = append(reasons, reason{
				Type: "custom_validation_failed", Message: "Custom validation failed for node",
				Details:   name + " - " + failures[name],
				ExtraInfo: map[string]any{"input_name": name},
			})
		}
	}
	r := &validation{ok: valid && len(reasons) == 0, reasons: reasons}
	if r.reasons == nil {
		r.reasons = []reason{}
	}
	v.done[id] = r
	return r, nil
}

// link checks a linked input and validates the node it comes from. It returns
// a reason for this node, or an exception that aborts the whole validation.
func (v *validator) link(in inputSpec, l []any) (*reason, error) {
	info := in.config()
	if len(l) != 2 {
		return &reason{
			Type: "bad_linked_input", Message: "Bad linked input, must be a length-2 list of [node_id, slot_index]", Details: in.name,
			ExtraInfo: map[string]any{"input_name": in.name, "input_config": info, "received_value": l},
		}, nil
	}
	oid, _ := l[0].(string)
	onode, ok := v.p[oid].(map[string]any)
	if !ok {
		return nil, &pyException{"KeyError", "'" + pyStr(l[0]) + "'"}
	}
	ospec := nodeSpecs[onode["class_type"].(string)]
	idx, isInt := l[1].(json.Number)
	n, err := idx.Int64()
	if !isInt || err != nil {
		return nil, &pyException{"TypeError", "tuple indices must be integers or slices, not " + pyType(l[1])}
	}
	if n < 0 {
		n += int64(len(ospec.outputs))
	}
	if n < 0 || n >= int64(len(ospec.outputs)) {
		return nil, &pyException{"IndexError", "tuple index out of range"}
	}
	received := ospec.outputs[n]
	want := in.typ
	if in.kind == kindCombo {
		want = "COMBO"
	}
	if received != want && received != "*" && want != "*" {
		return &reason{
			Type: "return_type_mismatch", Message: "Return type mismatch between linked nodes",
			Details:   fmt.Sprintf("%s, %s != %s", in.name, received, want),
			ExtraInfo: map[string]any{"input_name": in.name, "input_config": info, "received_type": received, "linked_node": l},
		}, nil
	}
	if _, err := v.inputs(oid); err != nil {
		v.done[oid] = &validation{reasons: []reason{exceptionReason("exception_during_inner_validation", "Exception when validating inner node", err,
			map[string]any{"input_name": in.name, "input_config": info, "linked_node": l})}}
	}
	return nil, nil
}

func exceptionReason(typ, msg string, err error, extra map[string]any) reason {
	ex := &pyException{"Exception", err.Error()}
	errors.As(err, &ex)
	if extra == nil {
		extra = map[string]any{}
	}
	extra["exception_type"] = ex.Type
	extra["exception_message"] = ex.Message
	extra["traceback"] = []string{}
	return reason{Type: typ, Message: msg, Details: ex.Message, ExtraInfo: extra}
}

// checkLiteral converts and bounds-checks a widget value.
func checkLiteral(in inputSpec, val any) *reason {
	info := in.config()
	invalid := func(err error) *reason {
		return &reason{
			Type: "invalid_input_type", Message: "Failed to convert an input value to a " + in.typ + " value",
			Details:   fmt.Sprintf("%s, %s, %s", in.name, pyStr(val), err),
			ExtraInfo: map[string]any{"input_name": in.name, "input_config": info, "received_value": val, "exception_message": err.Error()},
		}
	}
	bound := func(typ, msg string, got any) *reason {
		return &reason{
			Type: typ, Message: msg, Details: in.name,
			ExtraInfo: map[string]any{"input_name": in.name, "input_config": info, "received_value": got},
		}
	}
	if in.custom {
		return nil
	}
	switch in.kind {
	case kindInt:
		n, err := pyInt(val)
		if err != nil {
			return invalid(err)
		}
		got := json.Number(n.String())
		if in.imin != nil && n.Cmp(in.imin) < 0 {
			return bound("value_smaller_than_min", fmt.Sprintf("Value %s smaller than min of %s", n, in.imin), got)
		}
		if in.imax != nil && n.Cmp(in.imax) > 0 {
			return bound("value_bigger_than_max", fmt.Sprintf("Value %s bigger than max of %s", n, in.imax), got)
		}
	case kindFloat:
		f, err := pyFloat(val)
		if err != nil {
			return invalid(err)
		}
		got := json.Number(pyFloatRepr(f))
		if in.fmin != nil && f < *in.fmin {
			return bound("value_smaller_than_min", fmt.Sprintf("Value %s smaller than min of %s", pyFloatRepr(f), pyFloatRepr(*in.fmin)), got)
		}
		if in.fmax != nil && f > *in.fmax {
			return bound("value_bigger_than_max", fmt.Sprintf("Value %s bigger than max of %s", pyFloatRepr(f), pyFloatRepr(*in.fmax)), got)
		}
	case kindCombo:
		s, isStr := val.(string)
		if isStr && slices.Contains(in.options, s) {
			return nil
		}
		list := pyList(in.options)
		var config any = info
		if len(in.options) > 20 {
			list = fmt.Sprintf("(list of length %d)", len(in.options))
			config = nil
		}
		return &reason{
			Type: "value_not_in_list", Message: "Value not in list",
			Details:   fmt.Sprintf("%s: '%s' not in %s", in.name, pyStr(val), list),
			ExtraInfo: map[string]any{"input_name": in.name, "input_config": config, "received_value": val},
		}
	}
	return nil
}

// validateLoadImage is LoadImage.VALIDATE_INPUTS: the file must exist.
func validateLoadImage(s *Server, in map[string]any) map[string]string {
	name, _ := in["image"].(string)
	if _, ok := s.files.lookupAnnotated(name); !ok {
		return map[string]string{"image": "Invalid image file: " + pyStr(in["image"])}
	}
	return nil
}

// pyInt is Python's int(val) on a decoded JSON value.
func pyInt(val any) (*big.Int, error) {
	switch v := val.(type) {
	case json.Number:
		if n, ok := new(big.Int).SetString(string(v), 10); ok {
			return n, nil
		}
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("cannot convert float %s to integer", v)
		}
		n, _ := big.NewFloat(math.Trunc(f)).Int(nil)
		return n, nil
	case string:
		t := strings.ReplaceAll(strings.TrimSpace(v), "_", "")
		if n, ok := new(big.Int).SetString(t, 10); ok {
			return n, nil
		}
		return nil, fmt.Errorf("invalid literal for int() with base 10: '%s'", v)
	case bool:
		if v {
			return big.NewInt(1), nil
		}
		return big.NewInt(0), nil
	default:
		return nil, fmt.Errorf("int() argument must be a string, a bytes-like object or a real number, not '%s'", pyType(val))
	}
}

// pyFloat is Python's float(val) on a decoded JSON value.
func pyFloat(val any) (float64, error) {
	switch v := val.(type) {
	case json.Number:
		return strconv.ParseFloat(string(v), 64)
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return 0, fmt.Errorf("could not convert string to float: '%s'", v)
		}
		return f, nil
	case bool:
		if v {
			return 1, nil
		}
		return 0, nil
	default:
		return 0, fmt.Errorf("float() argument must be a string or a real number, not '%s'", pyType(val))
	}
}

func pyType(v any) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case string:
		return "str"
	case bool:
		return "bool"
	case json.Number:
		if strings.ContainsAny(string(v.(json.Number)), ".eE") {
			return "float"
		}
		return "int"
	case []any:
		return "list"
	case map[string]any:
		return "dict"
	}
	return "object"
}

// pyStr is Python's str() of a decoded JSON value, near enough for messages.
func pyStr(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case string:
		return v
	case bool:
		if v {
			return "True"
		}
		return "False"
	case json.Number:
		return string(v)
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			if s, ok := x.(string); ok {
				parts[i] = "'" + s + "'"
			} else {
				parts[i] = pyStr(x)
			}
		}
		return "[" + strings.Join(parts, ", ") + "]"
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

func pyList(items []string) string {
	parts := make([]string, len(items))
	for i, s := range items {
		parts[i] = "'" + s + "'"
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// pyFloatRepr is Python's repr of a float: 3.0, 0.5, 1e-05.
func pyFloatRepr(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e16 {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func classOf(p map[string]any, id string) string {
	node, _ := p[id].(map[string]any)
	ct, _ := node["class_type"].(string)
	return ct
}
