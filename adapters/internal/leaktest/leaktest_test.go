package leaktest

import (
	"testing"
	"time"
)

func blockedInLeakyFunction(release <-chan struct{}) { <-release }

func TestLeakedFindsMarkedGoroutines(t *testing.T) {
	release := make(chan struct{})
	done := make(chan struct{})
	go func() { blockedInLeakyFunction(release); close(done) }()
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
