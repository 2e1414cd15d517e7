package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

// Session cookie and CSRF header.
const (
	// CookieName is the session cookie's name.
	CookieName = "sluice_session"
	// CSRFHeader carries a session's CSRF token on state-changing requests.
	CSRFHeader = "X-CSRF-Token"
	// SessionTTL is how long a login lasts.
	SessionTTL = 12 * time.Hour
)

const (
	idBytes      = 16
	payloadBytes = 8 + idBytes // expiry (Unix seconds, big-endian) + random id
	// maxRevoked bounds the logged-out sessions remembered until they
	// expire; beyond it the oldest are forgotten first.
	maxRevoked = 4096
)

// sessions issues and checks stateless session cookies: the value is an
// expiry and a random id, signed with HMAC-SHA256 under a key derived from
// the admin token. Every replica sharing the token accepts a cookie any of
// them issued, and changing the token ends every session. The CSRF token of
// a session is derived from its id under the same key.
type sessions struct {
	key     []byte // nil: no admin token configured
	clock   clock.Clock
	xorigin *http.CrossOriginProtection
	trusted []netip.Prefix

	mu      sync.Mutex
	revoked map[[idBytes]byte]time.Time // logged out, until they expire
	// watched: the sessions with live streams open; closed when they log out.
	watched map[[idBytes]byte]*watch
}

// watch is one session's open live streams: out is closed at its logout.
type watch struct {
	out chan struct{}
	n   int
}

// liveEnd ends a live stream: at the session's expiry, or at its logout.
// Its nil channels never fire (a stream no session authorized).
type liveEnd struct {
	expired <-chan time.Time
	out     <-chan struct{}
}

// session is a checked session cookie.
type session struct {
	id      [idBytes]byte
	expires time.Time
}

func newSessions(adminToken string, c clock.Clock, trusted []netip.Prefix) *sessions {
	s := &sessions{clock: c, xorigin: http.NewCrossOriginProtection(), trusted: trusted, revoked: map[[idBytes]byte]time.Time{}, watched: map[[idBytes]byte]*watch{}}
	if adminToken != "" {
		m := hmac.New(sha256.New, []byte(adminToken))
		m.Write([]byte("sluice console session key v1"))
		s.key = m.Sum(nil)
	}
	return s
}

func (s *sessions) mac(label string, data []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write(data)
	return m.Sum(nil)
}

// issue returns a new session's cookie value and expiry.
func (s *sessions) issue() (string, time.Time) {
	expires := s.clock.Now().Add(SessionTTL).Truncate(time.Second)
	var payload [payloadBytes]byte
	binary.BigEndian.PutUint64(payload[:8], uint64(expires.Unix()))
	rand.Read(payload[8:]) // never fails (crypto/rand)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload[:]) + "." + enc.EncodeToString(s.mac("session", payload[:])), expires
}

// parse checks a cookie value: its signature, its expiry, and that it was
// not logged out.
func (s *sessions) parse(value string) (session, bool) {
	if s.key == nil {
		return session{}, false
	}
	p, m, ok := strings.Cut(value, ".")
	if !ok {
		return session{}, false
	}
	enc := base64.RawURLEncoding.Strict()
	payload, err1 := enc.DecodeString(p)
	sig, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || len(payload) != payloadBytes || !hmac.Equal(sig, s.mac("session", payload)) {
		return session{}, false
	}
	sess := session{expires: time.Unix(int64(binary.BigEndian.Uint64(payload[:8])), 0)}
	copy(sess.id[:], payload[8:])
	if !s.clock.Now().Before(sess.expires) {
		return session{}, false
	}
	s.mu.Lock()
	_, out := s.revoked[sess.id]
	s.mu.Unlock()
	return sess, !out
}

// fromRequest is r's valid session, if any.
func (s *sessions) fromRequest(r *http.Request) (session, bool) {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return session{}, false
	}
	return s.parse(ck.Value)
}

// csrf is the CSRF token of sess.
func (s *sessions) csrf(sess session) string {
	return base64.RawURLEncoding.EncodeToString(s.mac("csrf", sess.id[:]))
}

// revoke remembers sess as logged out until it expires (on this replica).
func (s *sessions) revoke(sess session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	for id, exp := range s.revoked {
		if !now.Before(exp) {
			delete(s.revoked, id)
		}
	}
	if len(s.revoked) >= maxRevoked {
		var oldest [idBytes]byte
		first := true
		for id, exp := range s.revoked {
			if first || exp.Before(s.revoked[oldest]) {
				oldest, first = id, false
			}
		}
		delete(s.revoked, oldest)
	}
	s.revoked[sess.id] = sess.expires
	if w := s.watched[sess.id]; w != nil {
		close(w.out)
		delete(s.watched, sess.id)
	}
}

// watch is what ends a live stream sess authorized: its expiry, its
// logout. Call stop when the stream ends.
func (s *sessions) watch(sess session) (end liveEnd, stop func()) {
	expired, stopTimer := clock.NewTimer(s.clock, sess.expires.Sub(s.clock.Now()))
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.watched[sess.id]
	if _, out := s.revoked[sess.id]; out {
		w = &watch{out: make(chan struct{})} // logged out since it was checked
		close(w.out)
	} else if w == nil {
		w = &watch{out: make(chan struct{})}
		s.watched[sess.id] = w
	}
	w.n++
	return liveEnd{expired: expired, out: w.out}, func() {
		stopTimer()
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.n--; w.n == 0 && s.watched[sess.id] == w {
			delete(s.watched, sess.id)
		}
	}
}

// safe reports whether method changes nothing.
func safe(method string) bool {
	return method == http.MethodGet || method == http.MethodHead
}

// authorized reports whether r carries a valid session and, unless its
// method is safe, comes from the same site with the session's CSRF token.
func (s *sessions) authorized(r *http.Request) bool {
	sess, ok := s.fromRequest(r)
	if !ok {
		return false
	}
	if safe(r.Method) {
		return true
	}
	if s.xorigin.Check(r) != nil {
		return false
	}
	got := r.Header.Get(CSRFHeader)
	return got != "" && hmac.Equal([]byte(got), []byte(s.csrf(sess)))
}

// secure reports whether r came over TLS, directly or, as a trusted proxy
// says with X-Forwarded-Proto, to the proxy.
func (s *sessions) secure(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	if !strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	addr := ap.Addr().Unmap()
	for _, p := range s.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// cookie is the session cookie carrying value for r's scheme; an empty
// value with maxAge -1 deletes it.
func (s *sessions) cookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: CookieName, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.secure(r)}
}

// tokenHash compares bearer tokens in constant time over their SHA-256, so
// that their length does not leak either.
type tokenHash *[sha256.Size]byte

func hashToken(token string) tokenHash {
	if token == "" {
		return nil
	}
	h := sha256.Sum256([]byte(token))
	return &h
}

// bearerToken is r's bearer credentials, if any.
func bearerToken(r *http.Request) (string, bool) {
	const scheme = "Bearer "
	v := r.Header.Get("Authorization")
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	t := strings.TrimSpace(v[len(scheme):])
	return t, t != ""
}

func equalToken(h tokenHash, token string) bool {
	got := sha256.Sum256([]byte(token))
	return h != nil && subtle.ConstantTimeCompare(got[:], h[:]) == 1
}
