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
