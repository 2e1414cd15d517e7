package dashboardapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/httpapi/problem"
	"github.com/sluicehq/sluice/rules"
)

// FieldError locates one problem of a rejected rule document: the field's
// path, its line and column in the document sent (1-based; 0 when
// unknown) and what is wrong with it.
type FieldError struct {
	Path    string `json:"path"`
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Message string `json:"message"`
}

// DryRun is the answer of POST /api/rules/:resource/dry-run for a valid
// document: the unified diff of the document in force (as etcd stores it)
// against the one sent, and the rules the one sent would drop.
type DryRun struct {
	Resource string   `json:"resource"`
	Valid    bool     `json:"valid"`
	Diff     string   `json:"diff"`
	Lost     []string `json:"lost"`
}

// invalidRules is the 422 problem of a rejected rule document: the
// problem's errors, and the same problems located in fields.
type invalidRules struct {
	problem.Problem
	Fields []FieldError `json:"fields"`
}

// fieldErrors locates each problem of list.
func fieldErrors(list rules.Errors) []FieldError {
	out := make([]FieldError, len(list))
	for i, e := range list {
		out[i] = FieldError{Path: e.Path, Line: e.Line, Column: e.Column, Message: e.Msg}
	}
	return out
}

// writeInvalid answers 422 with every problem of list, as messages
// (errors) and located (fields).
func writeInvalid(c *gin.Context, detail string, list rules.Errors) {
	p := invalidRules{Problem: problem.New(http.StatusUnprocessableEntity, "invalid-rules", detail), Fields: fieldErrors(list)}
	p.Errors = list.Messages()
	body, err := json.Marshal(p)
	if err != nil { // cannot happen: strings and ints
		writeProblem(c, http.StatusUnprocessableEntity, "invalid-rules", detail, p.Errors)
		return
	}
	c.Abort()
	c.Data(http.StatusUnprocessableEntity, problem.ContentType, body)
}

// dryRun checks a rule document against the rules in force, writing
// nothing: 200 with the diff and the lost rules, or 422 with every
// problem located in the document sent.
//
//	curl -X POST --data-binary @person.yaml localhost:8080/api/rules/ddcolor_person/dry-run
func (a *api) dryRun(c *gin.Context) {
	if a.knownResource(c); c.IsAborted() {
		return
	}
	name := c.Param("resource")
	body, ok := a.readDocument(c, fmt.Sprintf("the rule document of %s to check (YAML or JSON)", name))
	if !ok {
		return
	}
	docs, err := rules.Parse(name, body)
	if err != nil {
		a.rejectDryRun(c, name, err)
		return
	}
	if len(docs) != 1 || docs[0].Name() != name {
		var got string
		switch {
		case len(docs) != 1:
			got = fmt.Sprintf("%d documents", len(docs))
		default:
			got = "the document of " + docs[0].Name()
		}
		a.rejectDryRun(c, name, rules.Errors{{File: name, Msg: fmt.Sprintf("send exactly one document, the one of %s; got %s", name, got)}})
		return
	}
	candidate := docs[0]
	var (
		inForce *rules.Document
		set     []rules.Document
	)
	if current := a.cfg.Engine.Rules(); current != nil {
		for i, d := range current.Docs {
			if d.Name() == name {
				inForce = &current.Docs[i]
				continue
			}
			set = append(set, d)
		}
	}
	built, err := rules.Build(append(slices.Clip(set), candidate))
	if err != nil {
		a.rejectDryRun(c, name, err)
		return
	}
	// Both sides with their defaults filled in, as GET /api/rules shows
	// them: a document read from there and sent back unchanged has no diff.
	var before *rules.Document
	if inForce != nil {
		before = filled(a.cfg.Engine.Rules(), inForce)
	}
	diff, err := rules.Diff(name, before, filled(built, &candidate))
	if err != nil {
		writeProblem(c, http.StatusInternalServerError, "internal", err.Error(), nil)
		return
	}
	lost := rules.LostDocument(inForce, &candidate)
	if lost == nil {
		lost = []string{}
	}
	c.JSON(http.StatusOK, DryRun{Resource: name, Valid: true, Diff: diff, Lost: lost})
}

// rejectDryRun answers 422 for a document that does not parse or
// validate.
func (a *api) rejectDryRun(c *gin.Context, name string, err error) {
	var list rules.Errors
	if !errors.As(err, &list) {
		list = rules.Errors{{File: name, Msg: err.Error()}}
	}
	a.log.Debug("operator API: dry run found problems", slog.String("resource", name), slog.Int("problems", len(list)))
	writeInvalid(c, fmt.Sprintf("the rules with this document would be invalid (%s); nothing was written", problems(len(list))), list)
}

// filled is document d of set with the defaults the set filled in.
func filled(set *rules.Set, d *rules.Document) *rules.Document {
	out := rules.Document{File: d.File, Index: d.Index}
	if d.Resource != nil {
		out.Resource = set.Resources[d.Resource.Resource]
		return &out
	}
	if d.System != nil {
		sys := set.System
		out.System = &sys
	}
	out.GPU = set.GPU
	return &out
}
