// Package openapitest checks, in tests, that sluice's answers match its
// OpenAPI document: Handler wraps the handler under test and validates
// every request and answer that passes through it with kin-openapi, so a
// package's existing tests check the document as a side effect.
package openapitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/sluicehq/sluice/adapters/openapi"
)

// Load loads the document and validates it as OpenAPI 3.1 (JSON Schema
// 2020-12 schemas).
func Load() (*openapi3.T, error) {
	b, err := openapi.JSON()
	if err != nil {
		return nil, err
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(b)
	if err != nil {
		return nil, fmt.Errorf("openapitest: loading the document: %w", err)
	}
	if !doc.IsOpenAPI31OrLater() || !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		return nil, fmt.Errorf("openapitest: the document is OpenAPI %q, want 3.1.x", doc.OpenAPI)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapitest: the document is invalid: %w", err)
	}
	return doc, nil
}

// Handler wraps h: every request h answers is found in the document and its
// answer (status, headers, and a JSON body against its schema) is checked;
// a request answered 2xx is itself checked (parameters, and a JSON body).
// A mismatch fails t. Answers that end after t's cleanup began are not
// checked. Requests the document has no route for fail t, except those
// answered 404 or 405 by the router (a test of the router's own answers).
func Handler(t testing.TB, h http.Handler) http.Handler {
	t.Helper()
	doc, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	v := &validator{t: t, router: router}
	t.Cleanup(v.stop)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { v.serve(h, w, r) })
}

type validator struct {
	t      testing.TB
	router routers.Router

	mu   sync.Mutex
	done bool
}

func (v *validator) stop() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.done = true
}

func (v *validator) errorf(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.done {
		v.t.Errorf(format, args...)
	}
}

func (v *validator) serve(h http.Handler, w http.ResponseWriter, r *http.Request) {
	var reqBody bytes.Buffer
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = teeBody{io.TeeReader(r.Body, &reqBody), r.Body}
	}
	// The request as it came, for the route and parameters: handlers may
	// change r's fields.
	orig := r.Clone(r.Context())
	rec := &recorder{ResponseWriter: w, status: 0}
	h.ServeHTTP(rec, r)
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	if status == 499 { // the client left: nothing was answered
		return
	}
	if (status == http.StatusNotFound || status == http.StatusMethodNotAllowed) && !isJSON(rec.Header().Get("Content-Type")) {
		return // a bare Gin engine's own answer: the route is not mounted in this test
	}
	route, params, err := v.router.FindRoute(orig)
	if err != nil {
		if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
			return
		}
		v.errorf("openapi: %s %s answered %d is not in the document: %v", orig.Method, orig.URL.Path, status, err)
		return
	}
	ctx := context.Background()
	in := &openapi3filter.RequestValidationInput{
		Request: orig, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if status/100 == 2 {
		reqIn := *in
		reqOpts := *in.Options
		reqIn.Options = &reqOpts
		// The body as the handler read it; only a JSON one is checked.
		orig.Body = io.NopCloser(bytes.NewReader(reqBody.Bytes()))
		reqOpts.ExcludeRequestBody = !isJSON(orig.Header.Get("Content-Type"))
		if err := openapi3filter.ValidateRequest(ctx, &reqIn); err != nil {
			v.errorf("openapi: request %s %s (answered %d) does not match the document: %v", orig.Method, orig.URL, status, err)
		}
	}
	header := rec.Header().Clone()
	ct := header.Get("Content-Type")
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, ExcludeResponseBody: !isJSON(ct)}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Body: io.NopCloser(bytes.NewReader(rec.body.Bytes())), Options: opts}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		v.errorf("openapi: %s %s answered %d %s does not match the document: %v\nbody: %.600s", orig.Method, orig.URL, status, ct, err, rec.body.Bytes())
		return
	}
	if ref := route.Operation.Responses.Status(status); ref != nil && ref.Value != nil && len(ref.Value.Content) > 0 && !isJSON(ct) {
		if ref.Value.Content.Get(ct) == nil {
			v.errorf("openapi: %s %s answered %d with Content-Type %q; the document says %v", orig.Method, orig.URL, status, ct, keys(ref.Value.Content))
		}
	}
}

func keys(c openapi3.Content) []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// isJSON says whether the media type ct is JSON (application/json or a
// +json type).
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// teeBody reads through a TeeReader and closes the original body.
type teeBody struct {
	io.Reader
	io.Closer
}

// recorder passes an answer through, keeping its status and, for JSON
// answers, a copy of its body.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if isJSON(r.Header().Get("Content-Type")) {
		r.body.Write(b)
	}
	return r.ResponseWriter.Write(b)
}

// Flush passes a flush on (Server-Sent Events).
func (r *recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
