package problem

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// Field is one member of a JSON request object: its exact key and where
// its value is decoded (a pointer).
type Field struct {
	Name string
	Into any
}

// DecodeObject decodes one JSON object from r into fields. Unlike
// encoding/json, keys match exactly ("PROMPT" is not "prompt"); an unknown
// or repeated key is an error, and so is a value of the wrong JSON type,
// whose message names the field and the JSON type it takes ("width must be
// a JSON integer; got 5.5"), never a Go type. A read error of r (an
// *http.MaxBytesError) is returned wrapped; every other error's message is
// written for the client.
func DecodeObject(r io.Reader, fields ...Field) error {
	dec := json.NewDecoder(r)
	if tok, err := dec.Token(); err != nil {
		return syntaxError(err)
	} else if tok != json.Delim('{') {
		return errors.New("the body must be a JSON object")
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		key, _ := tok.(string) // inside an object, a key is a string
		f, ok := field(fields, key)
		if !ok {
			return fmt.Errorf("unknown field %q; the fields are %s", key, names(fields))
		}
		if seen[key] {
			return fmt.Errorf("field %q appears twice", key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return syntaxError(err)
		}
		if err := json.Unmarshal(raw, f.Into); err != nil {
			return fmt.Errorf("%s must be %s; got %s", key, jsonType(reflect.TypeOf(f.Into)), shown(raw))
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return syntaxError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return syntaxError(err)
		}
		return errors.New("the body holds more than one JSON value")
	}
	return nil
}

func field(fields []Field, key string) (Field, bool) {
	for _, f := range fields {
		if f.Name == key {
			return f, true
		}
	}
	return Field{}, false
}

func names(fields []Field) string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.Name
	}
	return strings.Join(out, ", ")
}

// syntaxError keeps a read error (the body cap) for the caller and words
// every other one for the client.
func syntaxError(err error) error {
	var (
		se *json.SyntaxError
		ue *json.UnmarshalTypeError
	)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("the body is not valid JSON: it ends too early")
	case errors.As(err, &se):
		return fmt.Errorf("the body is not valid JSON: %s (at byte %d)", strings.TrimPrefix(se.Error(), "json: "), se.Offset)
	case errors.As(err, &ue):
		return errors.New("the body is not valid JSON")
	}
	return fmt.Errorf("reading the body: %w", err)
}

// jsonType names the JSON type a Go value of type t takes.
func jsonType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a JSON string"
	case reflect.Bool:
		return "a JSON boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a JSON integer"
	case reflect.Float32, reflect.Float64:
		return "a JSON number"
	case reflect.Slice, reflect.Array:
		return "a JSON array"
	}
	return "a JSON object"
}

// shown describes a JSON value for a message: a number as written, other
// values by their type.
func shown(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	if len(raw) > 32 {
		return "the number " + string(raw[:32]) + "…"
	}
	return "the number " + string(raw)
}
