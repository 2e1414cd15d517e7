package rules

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSourceBytes bounds one rule file or etcd value.
const MaxSourceBytes = 1 << 20

// Parse decodes every document of one YAML or JSON source. name is used in
// error messages and in each Document's Source. Decoding is strict: unknown
// fields, wrong types and unknown document shapes are errors, reported
// together as Errors. Parse does not validate values; Build does.
func Parse(name string, data []byte) ([]Document, error) {
	if len(data) > MaxSourceBytes {
		return nil, Errors{{File: name, Msg: fmt.Sprintf("source is %d bytes; the limit is %d", len(data), MaxSourceBytes)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var (
		docs []Document
		all  Errors
	)
	for n := 1; ; n++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			all = append(all, &Error{File: name, Doc: n, Msg: "not valid YAML or JSON: " + strings.TrimPrefix(err.Error(), "yaml: ")})
			break
		}
		root := &node
		if root.Kind == yaml.DocumentNode {
			if len(root.Content) == 0 {
				continue // an empty document, e.g. a trailing "---"
			}
			root = root.Content[0]
		}
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue
		}
		doc, err := decodeDocument(name, n, root)
		if err != nil {
			all = append(all, err.(Errors)...)
			continue
		}
		docs = append(docs, doc)
	}
	if len(all) > 0 {
		return nil, all
	}
	return docs, nil
}

// ParseFS decodes a rule file, or every *.yaml, *.yml and *.json file
// directly inside a folder (sorted by name; sub-folders are not read), from
// fsys. Errors of all files are reported together.
func ParseFS(fsys fs.FS, name string) ([]Document, error) {
	info, err := fs.Stat(fsys, name)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	files := []string{name}
	if info.IsDir() {
		entries, err := fs.ReadDir(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read rules folder: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			switch path.Ext(e.Name()) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					files = append(files, path.Join(name, e.Name()))
				}
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("read rules folder %s: no .yaml, .yml or .json files", name)
		}
	}
	var (
		docs []Document
		all  Errors
	)
	for _, f := range files {
		data, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, fmt.Errorf("read rules: %w", err)
		}
		d, err := Parse(f, data)
		if err != nil {
			all = append(all, err.(Errors)...)
			continue
		}
		docs = append(docs, d...)
	}
	if len(all) > 0 {
		return nil, all
	}
	return docs, nil
}

func decodeDocument(file string, n int, root *yaml.Node) (Document, error) {
	c := &errs{file: file, doc: n, pos: positions{}}
	doc := Document{File: file, Index: n, pos: c.pos}
	c.mark("", root)
	if root.Kind != yaml.MappingNode {
		c.add("", "a document must be a mapping with a resource key, or system and gpu keys, got %s", describe(root))
		return doc, c.err()
	}
	if v := mappingValue(root, "resource"); v != nil && v.Kind == yaml.ScalarNode {
		c.resource = v.Value
	}
	sys, gpu := mappingValue(root, "system"), mappingValue(root, "gpu")
	if sys != nil || gpu != nil {
		c.resource = "system"
		for i := 0; i+1 < len(root.Content); i += 2 {
			if k := root.Content[i].Value; k != "system" && k != "gpu" {
				c.mark(k, root.Content[i+1])
				c.add(k, "unknown field in the system document; it holds system and gpu")
			}
		}
		if sys != nil {
			doc.System = new(System)
			decodeInto(c, sys, reflect.ValueOf(doc.System).Elem(), "system")
		}
		if gpu != nil {
			doc.GPU = new(GPU)
			decodeInto(c, gpu, reflect.ValueOf(doc.GPU).Elem(), "gpu")
		}
	} else {
		doc.Resource = new(Resource)
		decodeInto(c, root, reflect.ValueOf(doc.Resource).Elem(), "")
		if doc.Resource.Resource == "" && len(c.list) == 0 {
			c.add("resource", "missing: a document needs resource: NAME (one of %s) or system:", strings.Join(Resources, ", "))
		}
	}
	return doc, c.err()
}

func mappingValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// scalarWant is a TextUnmarshaler that names, for messages, the scalar it
// takes (a Duration says "a duration such as 500ms or 60s" without it).
type scalarWant interface{ want() string }

// decodeInto decodes n into v strictly, recording problems with their path.
func decodeInto(c *errs, n *yaml.Node, v reflect.Value, at string) {
	if _, ok := c.pos[at]; !ok {
		c.mark(at, n)
	}
	if n.Kind == yaml.AliasNode {
		// Aliases could expand exponentially or refer to themselves; rule
		// documents are small enough to write out.
		c.add(at, "YAML aliases (*name) are not supported in rules")
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the zero value
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		decodeInto(c, n, v.Elem(), at)
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			want := "a duration such as 500ms or 60s"
			if w, ok := v.Addr().Interface().(scalarWant); ok {
				want = w.want()
			}
			c.add(at, "want %s, got %s", want, describe(n))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			c.add(at, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			c.add(at, "want a mapping, got %s", describe(n))
			return
		}
		fields := fieldsOf(v.Type())
		seen := make(map[string]bool, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			p := join(at, key)
			c.mark(p, n.Content[i+1])
			if seen[key] {
				c.add(p, "appears twice")
				continue
			}
			seen[key] = true
			idx, ok := fields.index[key]
			if !ok {
				c.add(p, "unknown field; known fields are %s", fields.names)
				continue
			}
			if v.Type() == resourceType && key == "concurrency" && n.Content[i+1].Kind == yaml.MappingNode {
				decodeConcurrency(c, n.Content[i+1], v.Addr().Interface().(*Resource), p)
				continue
			}
			decodeInto(c, n.Content[i+1], v.Field(idx), p)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			c.add(at, "want a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			decodeInto(c, item, s.Index(i), fmt.Sprintf("%s[%d]", at, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.add(at, "want a mapping, got %s", describe(n))
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := fmt.Sprintf("%s[%q]", at, k.Value)
			c.mark(p, n.Content[i+1])
			if k.Kind != yaml.ScalarNode {
				c.add(at, "keys must be plain values, got %s", describe(k))
				continue
			}
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				c.add(p, "appears twice")
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			decodeInto(c, n.Content[i+1], e, p)
			m.SetMapIndex(reflect.ValueOf(k.Value), e)
		}
		v.Set(m)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			c.add(at, "want a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			c.add(at, "want an integer, got %s", describe(n))
			return
		}
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(n.Value, 64)
			if ferr != nil || f != float64(int64(f)) || f > 1<<53 || f < -(1<<53) {
				c.add(at, "want an integer, got %s", n.Value)
				return
			}
			i = int64(f)
		}
		if v.OverflowInt(i) {
			c.add(at, "out of range, got %s", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			c.add(at, "want a number, got %s", describe(n))
			return
		}
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			c.add(at, "want a number, got %s", n.Value)
			return
		}
		v.SetFloat(f)
	default:
		c.add(at, "internal: cannot decode into %s", v.Type())
	}
}

var resourceType = reflect.TypeFor[Resource]()

// decodeConcurrency decodes the mapping form of a resource's concurrency,
// {limit: 8, mode: shadow}.
func decodeConcurrency(c *errs, n *yaml.Node, r *Resource, at string) {
	var f concurrencyForm
	decodeInto(c, n, reflect.ValueOf(&f).Elem(), at)
	if mappingValue(n, "limit") == nil {
		c.add(at+".limit", "missing: write concurrency: {limit: N, mode: enforce|shadow}, or concurrency: N")
	}
	r.Concurrency, r.ConcurrencyMode = f.Limit, f.Mode
	if r.ConcurrencyMode == "" {
		// The mapping form keeps its mode explicit, so that it encodes
		// back to a mapping.
		r.ConcurrencyMode = Enforce
	}
}

func join(at, key string) string {
	if at == "" {
		return key
	}
	return at + "." + key
}

// describe names a node for a message: a scalar by its value, others by
// their shape.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!str" {
			return strconv.Quote(n.Value)
		}
		return n.Value
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

type structFields struct {
	index map[string]int
	names string // sorted, comma separated, for messages
}

func fieldsOf(t reflect.Type) *structFields {
	f := &structFields{index: make(map[string]int)}
	var names []string
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("yaml")
		name, _, _ := strings.Cut(tag, ",")
		if name == "" || name == "-" {
			continue
		}
		f.index[name] = i
		names = append(names, name)
	}
	sort.Strings(names)
	f.names = strings.Join(names, ", ")
	return f
}
