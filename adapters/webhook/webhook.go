// Package webhook tells a job's caller that the job ended, with a POST
// signed in the manner of Standard Webhooks (standardwebhooks.com): the
// headers webhook-id, webhook-timestamp and webhook-signature, the
// signature being "v1," and the base64 HMAC-SHA256 of "id.timestamp.body"
// under the shared secret. Receivers verify it with Verify, or with any
// Standard Webhooks library.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"code.dny.dev/ssrf"
)

// secretPrefix marks a Standard Webhooks secret: "whsec_" and base64.
const secretPrefix = "whsec_"

// ParseSecret reads a secret written as "whsec_<base64>"; it needs at
// least 24 bytes.
func ParseSecret(s string) ([]byte, error) {
	raw, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return nil, errors.New(`webhook secret: want "whsec_" followed by base64`)
	}
	key, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return nil, fmt.Errorf("webhook secret: not base64: %w", err)
	}
	if len(key) < 24 {
		return nil, fmt.Errorf("webhook secret: %d bytes; want at least 24", len(key))
	}
	return key, nil
}

// Sign returns the webhook-signature value of a message.
func Sign(key []byte, id string, ts time.Time, body []byte) string {
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%d.", id, ts.Unix())
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Verify checks a received message's signature header (which may list
// several space-separated signatures) and that its timestamp is within
// tolerance of now.
func Verify(key []byte, id, timestamp, signatures string, body []byte, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook: bad timestamp %q", timestamp)
	}
	ts := time.Unix(sec, 0)
	if d := now.Sub(ts); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook: timestamp %s is too far from now", ts.UTC())
	}
	want := Sign(key, id, ts, body)
	for _, sig := range strings.Fields(signatures) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return errors.New("webhook: no valid signature")
}

// CheckURL accepts an absolute http or https URL with a host, as a
// webhook target.
func CheckURL(s string) error {
	if len(s) > 2048 {
		return fmt.Errorf("webhook URL is %d characters; the limit is 2048", len(s))
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return fmt.Errorf("webhook must be an http or https URL with a host and no credentials, got %q", s)
	}
	return nil
}

// Sender delivers signed messages, retrying failures.
type Sender struct {
	key      []byte
	client   *http.Client
	log      *slog.Logger
	now      func() time.Time
	attempts int
	backoff  time.Duration
	sleep    func(context.Context, time.Duration) error
}

// Config configures a Sender.
type Config struct {
	// Secret is the shared secret, "whsec_<base64>".
	Secret string
	// Client sends the requests (default: a client with a 10 s timeout
	// that does not follow redirects).
	Client *http.Client
	Logger *slog.Logger
	// Attempts bounds the tries of one message (default 3); between them
	// the wait doubles from Backoff (default 1 s).
	Attempts int
	Backoff  time.Duration
	// Now and Sleep are the clock (tests inject them).
	Now   func() time.Time
	Sleep func(context.Context, time.Duration) error
	// AllowPrivate lets webhooks reach loopback, private, link-local and
	// every other non-public address (see publicOnly). Off by default: a
	// client-chosen URL must not make the gateway call into its own network
	// (etcd, cloud metadata).
	AllowPrivate bool
}

// New checks cfg and returns a Sender.
func New(cfg Config) (*Sender, error) {
	key, err := ParseSecret(cfg.Secret)
	if err != nil {
		return nil, err
	}
	s := &Sender{key: key, client: cfg.Client, log: cfg.Logger, now: cfg.Now, attempts: cfg.Attempts, backoff: cfg.Backoff, sleep: cfg.Sleep}
	if s.client == nil {
		dialer := &net.Dialer{Timeout: 5 * time.Second}
		if !cfg.AllowPrivate {
			dialer.Control = publicOnly()
		}
		s.client = &http.Client{
			Timeout:       10 * time.Second,
			Transport:     &http.Transport{DialContext: dialer.DialContext, Proxy: nil, TLSHandshakeTimeout: 5 * time.Second},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.attempts <= 0 {
		s.attempts = 3
	}
	if s.backoff <= 0 {
		s.backoff = time.Second
	}
	if s.sleep == nil {
		s.sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return s, nil
}

// publicOnly returns a dialer Control that refuses connections to
// addresses that are not public. It runs on the address actually dialled,
// after name resolution, so a name that resolves to a private address is
// caught too. The deny-lists are code.dny.dev/ssrf's, kept from the IANA
// special-purpose registries: in IPv4 loopback, private, shared (CGN),
// link-local (cloud metadata) and the other reserved ranges; in IPv6
// everything outside global unicast — which covers NAT64 (64:ff9b::/96,
// where 64:ff9b::a9fe:a9fe reaches 169.254.169.254), IPv4-compatible
// (::127.0.0.1) and IPv4-mapped addresses — and the reserved ranges within
// it. Any port is allowed.
func publicOnly() func(network, address string, c syscall.RawConn) error {
	guard := ssrf.New(ssrf.WithAnyPort())
	return func(network, address string, c syscall.RawConn) error {
		if err := guard.Safe(network, address, c); err != nil {
			return fmt.Errorf("webhook: %s is not a public address (see --webhook-allow-private): %w", address, err)
		}
		return nil
	}
}

// Event is the body of a message: {"type", "timestamp", "data"}.
type Event struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      any       `json:"data"`
}

// Send posts event to target as message id, retrying a failed delivery
// (transport error, 5xx, 429) with doubling waits; a 4xx other than 429 is
// final. Every attempt carries the same id, so the receiver can drop
// duplicates.
func (s *Sender) Send(ctx context.Context, target, id string, event Event) error {
	body, err := json.Marshal(event)
	if err != nil {
		return fmt.Errorf("webhook %s: %w", id, err)
	}
	wait := s.backoff
	for attempt := 1; ; attempt++ {
		err := s.post(ctx, target, id, body)
		if err == nil {
			return nil
		}
		var final *finalError
		if errors.As(err, &final) || attempt == s.attempts || ctx.Err() != nil {
			s.log.Warn("webhook not delivered", slog.String("id", id), slog.String("url", target), slog.Int("attempts", attempt), slog.Any("error", err))
			return fmt.Errorf("webhook %s: %w", id, err)
		}
		if err := s.sleep(ctx, wait); err != nil {
			return fmt.Errorf("webhook %s: %w", id, err)
		}
		wait *= 2
	}
}

// finalError is a refusal that retrying will not change.
type finalError struct{ status int }

func (e *finalError) Error() string { return fmt.Sprintf("refused with status %d", e.status) }

func (s *Sender) post(ctx context.Context, target, id string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return &finalError{0}
	}
	ts := s.now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", Sign(s.key, id, ts, body))
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("status %d", resp.StatusCode)
	default:
		return &finalError{resp.StatusCode}
	}
}
