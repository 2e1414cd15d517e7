package comfyui

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrInterrupted is returned (wrapped) when ComfyUI reports that a prompt was
// interrupted by someone other than this client's caller.
var ErrInterrupted = errors.New("comfyui: prompt interrupted")

// ErrPromptLost is returned (wrapped) when a prompt ComfyUI had accepted is in
// neither its queue nor its history: deleted from the queue by someone else,
// or dropped when ComfyUI restarted. ComfyUI sends no event for either.
var ErrPromptLost = errors.New("comfyui: prompt lost")

// PromptError is ComfyUI refusing a prompt: POST /prompt answered 400.
// NodeErrors holds the per-node validation errors by node id; it is empty for
// whole-prompt errors such as invalid_prompt (an unknown node class on
// ComfyUI 0.3.64), missing_node_type or prompt_no_outputs, and non-nil (empty)
// when ComfyUI sent an object, nil when it sent none or an old-style list.
type PromptError struct {
	StatusCode int
	Type       string // prompt_outputs_failed_validation, invalid_prompt, missing_node_type, ...; empty from old servers
	Message    string
	Details    string
	ExtraInfo  map[string]any
	NodeErrors map[string]NodeError
}

// NodeError lists what is wrong with one node of a refused prompt.
type NodeError struct {
	ClassType        string
	Errors           []NodeInputError
	DependentOutputs []string // the output nodes that cannot run because of it
}

// NodeInputError is one validation error of a node, usually about one input.
type NodeInputError struct {
	Type          string // value_bigger_than_max, value_not_in_list, required_input_missing, ...
	Message       string
	Details       string
	InputName     string
	ReceivedValue any
}

func (e *PromptError) Error() string {
	var b strings.Builder
	b.WriteString("comfyui: prompt refused: ")
	if e.Type != "" {
		b.WriteString(e.Type)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	if len(e.NodeErrors) == 0 {
		if e.Details != "" && e.Details != e.Message {
			// "Cannot execute because node X does not exist. (Node ID '#3')"
			b.WriteString(" (")
			b.WriteString(e.Details)
			b.WriteString(")")
		}
		return b.String()
	}
	for _, id := range e.NodeIDs() {
		ne := e.NodeErrors[id]
		fmt.Fprintf(&b, "; node %s (%s)", id, ne.ClassType)
		for i, ie := range ne.Errors {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(" ")
			if ie.InputName != "" {
				b.WriteString(ie.InputName)
				b.WriteString(": ")
			}
			b.WriteString(ie.Message)
			if ie.Type == "value_not_in_list" || ie.Type == "custom_validation_failed" {
				fmt.Fprintf(&b, " (%s)", ie.Details)
			}
			fmt.Fprintf(&b, " [%s]", ie.Type)
		}
	}
	return b.String()
}

// NodeIDs returns the ids of the nodes with errors, in ascending order.
func (e *PromptError) NodeIDs() []string {
	ids := sortedKeys(e.NodeErrors)
	sortNodeIDs(ids)
	return ids
}

// ExecutionError is a prompt that failed while running, from the execution_error
// event or the history's status messages.
type ExecutionError struct {
	PromptID         string
	NodeID           string
	NodeType         string
	ExceptionType    string
	ExceptionMessage string
	Traceback        []string
}

func (e *ExecutionError) Error() string {
	msg := strings.TrimSpace(e.ExceptionMessage)
	if e.ExceptionType != "" {
		msg = e.ExceptionType + ": " + msg
	}
	return fmt.Sprintf("comfyui: prompt %s failed in node %s (%s): %s", e.PromptID, e.NodeID, e.NodeType, msg)
}

// HTTPError is an unexpected HTTP status from ComfyUI.
type HTTPError struct {
	Method     string
	Endpoint   string // the path, e.g. /upload/image
	StatusCode int
	Body       string // an excerpt
}

func (e *HTTPError) Error() string {
	s := fmt.Sprintf("comfyui: %s %s: status %d", e.Method, e.Endpoint, e.StatusCode)
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

const excerptLen = 512

func excerpt(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > excerptLen {
		b = b[:excerptLen]
		for len(b) > 0 && !utf8.Valid(b) {
			b = b[:len(b)-1]
		}
		return string(b) + "…"
	}
	return string(b)
}

// decodePromptError reads the body of a 400 from POST /prompt. It accepts the
// current shape ("error" an object, "node_errors" an object) and the old one
// ("error" a string, "node_errors" a list). It reports false when the body is
// not a prompt error at all.
func decodePromptError(status int, body []byte) (*PromptError, bool) {
	var raw struct {
		Error      json.RawMessage `json:"error"`
		NodeErrors json.RawMessage `json:"node_errors"`
	}
	if err := json.Unmarshal(body, &raw); err != nil || len(raw.Error) == 0 || string(raw.Error) == "null" {
		return nil, false
	}
	pe := &PromptError{StatusCode: status}
	var msg string
	if json.Unmarshal(raw.Error, &msg) == nil {
		pe.Message = msg
	} else {
		var e struct {
			Type      looseString    `json:"type"`
			Message   looseString    `json:"message"`
			Details   looseString    `json:"details"`
			ExtraInfo map[string]any `json:"extra_info"`
		}
		if err := json.Unmarshal(raw.Error, &e); err != nil {
			return nil, false
		}
		pe.Type, pe.Message, pe.Details, pe.ExtraInfo = string(e.Type), string(e.Message), string(e.Details), e.ExtraInfo
	}
	var nodes map[string]struct {
		ClassType        looseString     `json:"class_type"`
		DependentOutputs []looseString   `json:"dependent_outputs"`
		Errors           []rawInputError `json:"errors"`
	}
	// A list (old servers send []) or anything else undecodable leaves no
	// node errors; an object, even empty, leaves a non-nil map.
	if json.Unmarshal(raw.NodeErrors, &nodes) == nil && nodes != nil {
		pe.NodeErrors = make(map[string]NodeError, len(nodes))
		for id, n := range nodes {
			ne := NodeError{ClassType: string(n.ClassType)}
			for _, o := range n.DependentOutputs {
				ne.DependentOutputs = append(ne.DependentOutputs, string(o))
			}
			for _, r := range n.Errors {
				ie := NodeInputError{Type: string(r.Type), Message: string(r.Message), Details: string(r.Details)}
				if r.ExtraInfo != nil {
					ie.InputName, _ = r.ExtraInfo["input_name"].(string)
					ie.ReceivedValue = r.ExtraInfo["received_value"]
				}
				ne.Errors = append(ne.Errors, ie)
			}
			pe.NodeErrors[id] = ne
		}
	}
	return pe, true
}

type rawInputError struct {
	Type      looseString    `json:"type"`
	Message   looseString    `json:"message"`
	Details   looseString    `json:"details"`
	ExtraInfo map[string]any `json:"extra_info"`
}

// looseString takes a JSON string as is and any other JSON value as its text.
type looseString string

func (s *looseString) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err == nil {
		*s = looseString(v)
		return nil
	}
	if string(b) == "null" {
		*s = ""
		return nil
	}
	*s = looseString(b)
	return nil
}
