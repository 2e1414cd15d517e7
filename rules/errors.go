package rules

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is one problem in a rule source. Its message names the file, the
// document, the field path and the offending value:
//
//	rules.yaml: document 2 (ddcolor_person): flow[0].threshold: must be > 0, got -1
type Error struct {
	File     string // file name or key, e.g. "testdata/rules/default.yaml"
	Doc      int    // 1-based document number within File; 0 when not about one document
	Resource string // the document's resource, "system", or "" when unknown
	Path     string // field path, e.g. "flow[0].threshold"; "" for the whole document
	Msg      string // what is wrong, with the value seen
	// Line and Column locate the field in the source (1-based; 0 when
	// unknown): the value the error is about, or the nearest enclosing
	// one the source has (a missing field points at its mapping).
	Line, Column int
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Doc > 0 {
		fmt.Fprintf(&b, ": document %d", e.Doc)
		if e.Resource != "" {
			fmt.Fprintf(&b, " (%s)", e.Resource)
		}
	} else if e.Resource != "" {
		fmt.Fprintf(&b, ": %s", e.Resource)
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a rule source, in source order.
type Errors []*Error

func (es Errors) Error() string { return strings.Join(es.Messages(), "\n") }

// Messages returns each error's text, for APIs that list them.
func (es Errors) Messages() []string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return msgs
}

// maxErrors bounds how many problems one source reports.
const maxErrors = 50

// errs collects problems with a document's context.
type errs struct {
	file     string
	doc      int
	resource string
	pos      positions // where the document's fields are; nil when unknown
	list     Errors
}

func (c *errs) add(path, format string, args ...any) {
	if len(c.list) >= maxErrors {
		return
	}
	p := c.pos.of(path)
	c.list = append(c.list, &Error{File: c.file, Doc: c.doc, Resource: c.resource, Path: path, Msg: fmt.Sprintf(format, args...),
		Line: p.line, Column: p.column})
}

// mark records where path's value n is.
func (c *errs) mark(path string, n *yaml.Node) {
	if c.pos == nil {
		c.pos = positions{}
	}
	c.pos[path] = position{n.Line, n.Column}
}

// position is a place in a source, 1-based.
type position struct{ line, column int }

// positions maps a document's field paths ("flow[0].threshold", "" for the
// document) to where their values are in the source.
type positions map[string]position

// of finds path's position, or its nearest enclosing field's: a missing
// field is reported where its mapping is.
func (ps positions) of(path string) position {
	for ps != nil {
		if p, ok := ps[path]; ok {
			return p
		}
		if path == "" {
			break
		}
		path = parentPath(path)
	}
	return position{}
}

// parentPath strips path's last step: "flow[0].threshold" → "flow[0]" →
// "flow" → "".
func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndex(path, "["); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndex(path, "."); i >= 0 {
		return path[:i]
	}
	return ""
}

func (c *errs) err() error {
	if len(c.list) == 0 {
		return nil
	}
	return c.list
}
