package comfyui

import (
	"reflect"
	"strings"
	"testing"
)

func TestDecodePromptError(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		want      *PromptError
		wantInMsg []string
	}{
		{
			name: "current shape",
			body: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
				"node_errors": {"2": {"errors": [{"type": "value_bigger_than_max", "message": "Value 5000 bigger than max of 4096", "details": "model_input_size",
					"extra_info": {"input_name": "model_input_size", "input_config": ["INT", {"min": 32, "max": 4096}], "received_value": 5000}}],
					"dependent_outputs": ["3"], "class_type": "DDColor_Colorize"},
				"10": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "ckpt_name: 'x' not in ['a']",
					"extra_info": {"input_name": "ckpt_name", "input_config": null, "received_value": "x"}}],
					"dependent_outputs": ["3", "9"], "class_type": "CheckpointLoaderSimple"}}}`,
			want: &PromptError{
				StatusCode: 400, Type: "prompt_outputs_failed_validation", Message: "Prompt outputs failed validation", ExtraInfo: map[string]any{},
				NodeErrors: map[string]NodeError{
					"2": {ClassType: "DDColor_Colorize", DependentOutputs: []string{"3"}, Errors: []NodeInputError{{
						Type: "value_bigger_than_max", Message: "Value 5000 bigger than max of 4096", Details: "model_input_size",
						InputName: "model_input_size", ReceivedValue: float64(5000)}}},
					"10": {ClassType: "CheckpointLoaderSimple", DependentOutputs: []string{"3", "9"}, Errors: []NodeInputError{{
						Type: "value_not_in_list", Message: "Value not in list", Details: "ckpt_name: 'x' not in ['a']",
						InputName: "ckpt_name", ReceivedValue: "x"}}},
				},
			},
			wantInMsg: []string{
				"prompt_outputs_failed_validation",
				"node 2 (DDColor_Colorize) model_input_size: Value 5000 bigger than max of 4096 [value_bigger_than_max]",
				"node 10 (CheckpointLoaderSimple) ckpt_name: Value not in list (ckpt_name: 'x' not in ['a']) [value_not_in_list]",
			},
		},
		{
			name:      "old shape: error a string, node_errors a list",
			body:      `{"error": "invalid prompt: bad output", "node_errors": []}`,
			want:      &PromptError{StatusCode: 400, Message: "invalid prompt: bad output"},
			wantInMsg: []string{"comfyui: prompt refused: invalid prompt: bad output"},
		},
		{
			name: "old shape with node errors, loose types",
			body: `{"error": "Prompt outputs failed validation", "node_errors": {"5": {"errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": 7, "extra_info": {"input_name": "clip"}}], "dependent_outputs": [9], "class_type": "CLIPTextEncode"}}}`,
			want: &PromptError{StatusCode: 400, Message: "Prompt outputs failed validation", NodeErrors: map[string]NodeError{
				"5": {ClassType: "CLIPTextEncode", DependentOutputs: []string{"9"}, Errors: []NodeInputError{{
					Type: "required_input_missing", Message: "Required input is missing", Details: "7", InputName: "clip"}}},
			}},
			wantInMsg: []string{"node 5 (CLIPTextEncode) clip: Required input is missing [required_input_missing]"},
		},
		{
			name: "whole-prompt error",
			body: `{"error": {"type": "missing_node_type", "message": "Node 'Foo' not found. The custom node may not be installed.", "details": "Node ID '#4'", "extra_info": {"node_id": "4", "class_type": "Foo", "node_title": null}}, "node_errors": {}}`,
			want: &PromptError{StatusCode: 400, Type: "missing_node_type", Message: "Node 'Foo' not found. The custom node may not be installed.", Details: "Node ID '#4'",
				ExtraInfo: map[string]any{"node_id": "4", "class_type": "Foo", "node_title": nil}, NodeErrors: map[string]NodeError{}},
			wantInMsg: []string{"missing_node_type: Node 'Foo' not found. The custom node may not be installed. (Node ID '#4')"},
		},
		{
			// ComfyUI 0.3.64 on an unknown node class.
			name: "invalid_prompt",
			body: `{"error": {"type": "invalid_prompt", "message": "Cannot execute because node X does not exist.", "details": "Node ID '#3'", "extra_info": {}}, "node_errors": {}}`,
			want: &PromptError{StatusCode: 400, Type: "invalid_prompt", Message: "Cannot execute because node X does not exist.", Details: "Node ID '#3'",
				ExtraInfo: map[string]any{}, NodeErrors: map[string]NodeError{}},
			wantInMsg: []string{"comfyui: prompt refused: invalid_prompt: Cannot execute because node X does not exist. (Node ID '#3')"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := decodePromptError(400, []byte(tt.body))
			if !ok {
				t.Fatal("not decoded")
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v", got, tt.want)
			}
			msg := got.Error()
			for _, s := range tt.wantInMsg {
				if !strings.Contains(msg, s) {
					t.Errorf("Error() = %q\nlacks %q", msg, s)
				}
			}
		})
	}
}

func TestDecodePromptErrorRejectsOtherBodies(t *testing.T) {
	for _, body := range []string{``, `<html>bad gateway</html>`, `{}`, `{"error": null}`, `{"error": 5}`} {
		if pe, ok := decodePromptError(400, []byte(body)); ok {
			t.Errorf("%q decoded as %#v", body, pe)
		}
	}
}

func FuzzDecodePromptError(f *testing.F) {
	f.Add([]byte(`{"error": {"type": "x"}, "node_errors": {"1": {"errors": [{}]}}}`))
	f.Add([]byte(`{"error": "x", "node_errors": []}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if pe, ok := decodePromptError(400, body); ok {
			_ = pe.Error()
		}
	})
}

func TestExcerpt(t *testing.T) {
	long := strings.Repeat("é", excerptLen)
	got := excerpt([]byte(long))
	if !strings.HasSuffix(got, "…") || len(got) > excerptLen+len("…") {
		t.Errorf("excerpt of %d bytes is %d bytes", len(long), len(got))
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Error("excerpt cut a rune")
	}
}
