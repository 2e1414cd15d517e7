package rules

import (
	"fmt"
	"strings"
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
	list     Errors
}

func (c *errs) add(path, format string, args ...any) {
	if len(c.list) >= maxErrors {
		return
	}
	c.list = append(c.list, &Error{File: c.file, Doc: c.doc, Resource: c.resource, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *errs) err() error {
	if len(c.list) == 0 {
		return nil
	}
	return c.list
}
