package httpapi

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/engine"
)

// Problem is an RFC 9457 problem body, with the refusing rule when a rule
// refused.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Resource string `json:"resource,omitempty"`
	// Rule, Kind and the hot value name what refused.
	Rule  string `json:"rule,omitempty"`
	Kind  string `json:"kind,omitempty"`
	Param string `json:"param,omitempty"`
	Value string `json:"value,omitempty"`
	// RetryAfter is the Retry-After value in seconds.
	RetryAfter int `json:"retry_after,omitempty"`
	// NodeErrors carries ComfyUI's per-node validation errors.
	NodeErrors any `json:"node_errors,omitempty"`
}

// Problem types: the two the IETF rate-limit drafts register, and sluice's
// own for everything else.
const (
	typeQuota    = "https://iana.org/assignments/http-problem-types#quota-exceeded"
	typeCapacity = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
	typeBase     = "https://sluice.dev/problems/"
)

func writeProblem(c *gin.Context, p Problem) {
	h := c.Writer.Header()
	h["Content-Type"] = problemContentType
	if p.RetryAfter > 0 {
		h["Retry-After"] = []string{strconv.Itoa(p.RetryAfter)}
	}
	var body []byte
	if p.NodeErrors != nil {
		var err error
		if body, err = json.Marshal(p); err != nil {
			body = p.appendJSON(nil) // drops node_errors rather than the answer
		}
	} else {
		body = p.appendJSON(make([]byte, 0, 512))
	}
	c.Abort()
	c.Data(p.Status, problemContentType[0], body)
}

var problemContentType = []string{"application/problem+json"}

// appendJSON writes p as JSON without reflection: refusals are the path a
// flood takes, so they are kept cheap. NodeErrors are left to json.Marshal.
func (p *Problem) appendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = appendJSONString(b, p.Type)
	b = append(b, `,"title":`...)
	b = appendJSONString(b, p.Title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.Status), 10)
	b = append(b, `,"detail":`...)
	b = appendJSONString(b, p.Detail)
	for _, f := range [...]struct{ key, v string }{
		{`,"resource":`, p.Resource}, {`,"rule":`, p.Rule}, {`,"kind":`, p.Kind}, {`,"param":`, p.Param}, {`,"value":`, p.Value},
	} {
		if f.v != "" {
			b = append(b, f.key...)
			b = appendJSONString(b, f.v)
		}
	}
	if p.RetryAfter > 0 {
		b = append(b, `,"retry_after":`...)
		b = strconv.AppendInt(b, int64(p.RetryAfter), 10)
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string, escaping what JSON requires
// and invalid UTF-8 as U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// badRequest answers a client error of the given status.
func badRequest(c *gin.Context, status int, code, detail string) {
	writeProblem(c, Problem{Type: typeBase + code, Title: http.StatusText(status), Status: status, Detail: detail})
}

// retrySeconds rounds a retry estimate up to whole seconds, at least 1.
func retrySeconds(d time.Duration) int {
	return max(int(math.Ceil(d.Seconds())), 1)
}

// refusalProblem turns a refusal into its status, problem body and
// rate-limit header fields (draft-ietf-httpapi-ratelimit-headers-10).
func refusalProblem(c *gin.Context, r *engine.Refusal) {
	retry := retrySeconds(r.RetryAfter)
	p := Problem{
		Type:       typeQuota,
		Title:      "Too Many Requests",
		Status:     http.StatusTooManyRequests,
		Detail:     r.Error(),
		Resource:   r.Resource,
		Rule:       r.Rule,
		Kind:       string(r.Kind),
		Param:      r.Param,
		Value:      r.Value,
		RetryAfter: retry,
	}
	if r.Overload() {
		p.Type, p.Title, p.Status = typeCapacity, "Service Unavailable", http.StatusServiceUnavailable
	}
	if policy := ratePolicy(r); policy != "" {
		h := c.Writer.Header()
		h["Ratelimit-Policy"] = []string{policy}
		h["Ratelimit"] = []string{`"` + policyName(r) + `";r=0;t=` + strconv.Itoa(retry)}
	}
	writeProblem(c, p)
}

// policyName names the refusing rule as a structured-field string.
func policyName(r *engine.Refusal) string {
	if r.Param != "" && r.Kind == engine.KindHotspot {
		return string(r.Kind) + "-" + r.Param
	}
	return string(r.Kind)
}

// ratePolicy describes the quota that refused: q is the quota, w the window
// in seconds; concurrency quotas count concurrent requests. Refusals that are
// no quota (system, CPU) have no policy.
func ratePolicy(r *engine.Refusal) string {
	q := strconv.FormatInt(max(int64(r.Threshold), 1), 10)
	switch r.Kind {
	case engine.KindFlow, engine.KindHotspot, engine.KindBan:
		w := strconv.FormatInt(max(int64(math.Ceil(r.Window.Seconds())), 1), 10)
		return `"` + policyName(r) + `";q=` + q + ";w=" + w
	case engine.KindConcurrency:
		return `"` + policyName(r) + `";q=` + q + `;qu="concurrent-requests"`
	}
	return ""
}
