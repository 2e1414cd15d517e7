package console

import (
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

// Login attempts: a client that sent loginFailures wrong tokens within
// loginWindow may not try again until the window ends.
const (
	loginFailures = 5
	loginWindow   = time.Minute
	// maxLimited bounds the clients tracked; beyond it, new clients share
	// one count (a flood from many addresses slows every newcomer's
	// guesses rather than escaping the limit).
	maxLimited = 10000
	sharedKey  = "*"
)

// loginLimiter counts each client's wrong tokens in fixed windows of
// loginWindow on its clock.
type loginLimiter struct {
	clock   clock.Clock
	mu      sync.Mutex
	clients map[string]*failures
}

type failures struct {
	since time.Time
	n     int
}

func newLoginLimiter(c clock.Clock) *loginLimiter {
	return &loginLimiter{clock: c, clients: map[string]*failures{}}
}

// wait is how long client must wait before it may try again; 0: now.
func (l *loginLimiter) wait(client string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	for _, k := range []string{client, sharedKey} {
		f := l.clients[k]
		if f == nil || f.n < loginFailures {
			continue
		}
		if left := f.since.Add(loginWindow).Sub(now); left > 0 {
			return left
		}
	}
	return 0
}

// fail counts a wrong token from client.
func (l *loginLimiter) fail(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	f := l.clients[client]
	if f == nil {
		if len(l.clients) >= maxLimited {
			l.pruneLocked(now)
		}
		if len(l.clients) >= maxLimited {
			client = sharedKey
			f = l.clients[client]
		}
		if f == nil {
			f = &failures{since: now}
			l.clients[client] = f
		}
	}
	if !now.Before(f.since.Add(loginWindow)) {
		f.since, f.n = now, 0
	}
	f.n++
}

// forget clears client's count after a successful login.
func (l *loginLimiter) forget(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.clients, client)
}

func (l *loginLimiter) pruneLocked(now time.Time) {
	for k, f := range l.clients {
		if !now.Before(f.since.Add(loginWindow)) {
			delete(l.clients, k)
		}
	}
}
