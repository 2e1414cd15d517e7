package clock_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

func TestFakeMovesOnlyWhenTold(t *testing.T) {
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f := clock.NewFake(start)
	if got := f.Now(); !got.Equal(start) {
		t.Fatalf("Now() = %v, want %v", got, start)
	}
	f.Advance(1500 * time.Millisecond)
	if got, want := f.Now(), start.Add(1500*time.Millisecond); !got.Equal(want) {
		t.Fatalf("after Advance, Now() = %v, want %v", got, want)
	}
	later := start.Add(time.Hour)
	f.Set(later)
	if got := f.Now(); !got.Equal(later) {
		t.Fatalf("after Set, Now() = %v, want %v", got, later)
	}
}

func TestOrDefaultsToTheSystemClock(t *testing.T) {
	if _, ok := clock.Or(nil).(clock.System); !ok {
		t.Fatalf("Or(nil) = %T, want clock.System", clock.Or(nil))
	}
	f := clock.NewFake(time.Unix(0, 0))
	if clock.Or(f) != clock.Clock(f) {
		t.Fatal("Or(f) did not return f")
	}
}

func TestFakeTimerFiresWhenTheTimeIsReached(t *testing.T) {
	f := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	ch, _ := clock.NewTimer(f, time.Second)
	stopped, stop := clock.NewTimer(f, time.Second)
	if f.Timers() != 2 {
		t.Fatalf("%d timers wait, want 2", f.Timers())
	}
	if !stop() || stop() {
		t.Fatal("stop: want true once, then false")
	}
	f.Advance(999 * time.Millisecond)
	select {
	case <-ch:
		t.Fatal("fired 1ms early")
	default:
	}
	f.Advance(time.Millisecond)
	select {
	case at := <-ch:
		if want := time.Date(2026, 11, 30, 12, 0, 1, 0, time.UTC); !at.Equal(want) {
			t.Fatalf("fired at %v, want %v", at, want)
		}
	default:
		t.Fatal("did not fire at its time")
	}
	select {
	case <-stopped:
		t.Fatal("a stopped timer fired")
	default:
	}
	if f.Timers() != 0 {
		t.Fatalf("%d timers left", f.Timers())
	}
	now, _ := clock.NewTimer(f, 0)
	select {
	case <-now:
	default:
		t.Fatal("a timer of 0 did not fire at once")
	}
}

func TestSentinelClockFollowsTheClock(t *testing.T) {
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f := clock.NewFake(start)
	s := clock.Sentinel(f)
	if s.CurrentTimeMillis() != uint64(start.UnixMilli()) || s.CurrentTimeNano() != uint64(start.UnixNano()) {
		t.Fatalf("millis %d, nanos %d", s.CurrentTimeMillis(), s.CurrentTimeNano())
	}
	done := make(chan struct{})
	go func() {
		s.Sleep(time.Second)
		close(done)
	}()
	for f.Timers() != 1 {
		time.Sleep(time.Millisecond) // until Sleep waits on the clock
	}
	f.Advance(time.Second)
	<-done
	if !s.Now().Equal(start.Add(time.Second)) {
		t.Fatalf("Now() = %v", s.Now())
	}
}
