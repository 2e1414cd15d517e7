package problem

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
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
	// Errors lists every problem of a rejected document (a rule document
	// written through the operator API).
	Errors []string `json:"errors,omitempty"`
	// NodeErrors carries ComfyUI's per-node validation errors.
	NodeErrors any `json:"node_errors,omitempty"`
}

// Problem types: the two the IETF rate-limit drafts register, and the base
// of sluice's own for everything else.
const (
	TypeQuota    = "https://iana.org/assignments/http-problem-types#quota-exceeded"
	TypeCapacity = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
	TypeBase     = "https://sluice.dev/problems/"
)

// ContentType is the media type of a problem body.
const ContentType = "application/problem+json"

var contentType = []string{ContentType}

// New is a problem of sluice's own type code (TypeBase+code) with the
// status's standard title.
func New(status int, code, detail string) Problem {
	return Problem{Type: TypeBase + code, Title: http.StatusText(status), Status: status, Detail: detail}
}

// Write answers p, with Retry-After when p.RetryAfter is set, and aborts
// the handler chain.
func Write(c *gin.Context, p Problem) {
	h := c.Writer.Header()
	h["Content-Type"] = contentType
	if p.RetryAfter > 0 {
		h["Retry-After"] = []string{strconv.Itoa(p.RetryAfter)}
	}
	var body []byte
	if p.NodeErrors != nil {
		var err error
		if body, err = json.Marshal(p); err != nil {
			body = p.AppendJSON(nil) // drops node_errors rather than the answer
		}
	} else {
		body = p.AppendJSON(make([]byte, 0, 512))
	}
	c.Abort()
	c.Data(p.Status, ContentType, body)
}

// Answer writes New(status, code, detail).
func Answer(c *gin.Context, status int, code, detail string) {
	Write(c, New(status, code, detail))
}

// RetrySeconds rounds a retry estimate up to whole seconds, at least 1.
func RetrySeconds(d time.Duration) int {
	return max(int(math.Ceil(d.Seconds())), 1)
}

// AppendJSON appends p as JSON without reflection. NodeErrors are left
// out: Write leaves them to encoding/json.
func (p *Problem) AppendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = appendString(b, p.Type)
	b = append(b, `,"title":`...)
	b = appendString(b, p.Title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.Status), 10)
	b = append(b, `,"detail":`...)
	b = appendString(b, p.Detail)
	for _, f := range [...]struct{ key, v string }{
		{`,"resource":`, p.Resource}, {`,"rule":`, p.Rule}, {`,"kind":`, p.Kind}, {`,"param":`, p.Param}, {`,"value":`, p.Value},
	} {
		if f.v != "" {
			b = append(b, f.key...)
			b = appendString(b, f.v)
		}
	}
	if p.RetryAfter > 0 {
		b = append(b, `,"retry_after":`...)
		b = strconv.AppendInt(b, int64(p.RetryAfter), 10)
	}
	if len(p.Errors) > 0 {
		b = append(b, `,"errors":[`...)
		for i, e := range p.Errors {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, e)
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendString appends s as a JSON string, escaping what JSON requires and
// invalid UTF-8 as U+FFFD, as encoding/json does (but leaving <, > and &
// readable: messages quote rules).
func appendString(b []byte, s string) []byte {
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
