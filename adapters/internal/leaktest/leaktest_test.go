package leaktest

import (
	"testing"
	"time"
)

// blockedInLeakyFunction says it runs (from inside, so its frame is on the
// goroutine's stack) and blocks until released.
//
//go:noinline
func blockedInLeakyFunction(running chan<- struct{}, release <-chan struct{}) {
	close(running)
	<-release
}

func TestLeakedFindsMarkedGoroutines(t *testing.T) {
	running, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { blockedInLeakyFunction(running, release); close(done) }()
	<-running
	if got := Leaked(50*time.Millisecond, "blockedInLeakyFunction"); got == "" {
		t.Fatal("a goroutine still running was not reported")
	}
	if got := Leaked(50*time.Millisecond, "no-such-function"); got != "" {
		t.Fatalf("unmarked goroutines reported:\n%s", got)
	}
	close(release)
	<-done
	if got := Leaked(time.Second, "blockedInLeakyFunction"); got != "" {
		t.Fatalf("an ended goroutine reported:\n%s", got)
	}
}
