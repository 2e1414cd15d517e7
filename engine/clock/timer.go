package clock

import (
	"time"
)

// Timers is a Clock that can also wait: System and Fake are both. Code that
// waits takes a Clock and calls NewTimer, which uses the Clock's own timers
// when it has them.
type Timers interface {
	Clock
	// NewTimer returns a channel that receives the time once d has passed
	// on this clock, and a stop function that reports whether it stopped
	// the timer before it fired.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

// NewTimer waits d on c: with c's own timers when it is a Timers, with the
// system's otherwise.
func NewTimer(c Clock, d time.Duration) (<-chan time.Time, func() bool) {
	if t, ok := c.(Timers); ok {
		return t.NewTimer(d)
	}
	return System{}.NewTimer(d)
}

// NewTimer is time.NewTimer.
func (System) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// fakeTimer is a timer of a Fake: it fires when the fake time reaches at.
type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

// NewTimer returns a channel that receives the fake time once the Fake has
// been moved d or more; with d <= 0 it has fired already.
func (f *Fake) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{at: f.now.Add(d), c: make(chan time.Time, 1)}
	f.timers = append(f.timers, t)
	f.fireLocked()
	stop := func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, p := range f.timers {
			if p == t {
				f.timers = append(f.timers[:i], f.timers[i+1:]...)
				return true
			}
		}
		return false
	}
	return t.c, stop
}

// Timers returns how many timers wait on the Fake: a test moves the time
// once the code under test is waiting.
func (f *Fake) Timers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// fireLocked fires every timer that is due.
func (f *Fake) fireLocked() {
	kept := f.timers[:0]
	for _, t := range f.timers {
		if t.at.After(f.now) {
			kept = append(kept, t)
			continue
		}
		t.c <- f.now // buffered, fired once
	}
	clear(f.timers[len(kept):])
	f.timers = kept
}
