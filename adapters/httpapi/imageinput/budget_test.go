package imageinput

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// testSide keeps the images of these tests small while still scaling them.
const testSide = 200

// inspect16 inspects a w x h 16-bit PNG under lim, with MaxSide testSide.
func inspect16(t *testing.T, w, h int, lim Limits) *Upload {
	t.Helper()
	lim.MaxSide = testSide
	up, err := Inspect(bytes.NewReader(png16(t, w, h)), lim)
	if err != nil {
		t.Fatalf("Inspect(%dx%d 16-bit png) = %v", w, h, err)
	}
	return up
}

// costOf16 is what a w x h 16-bit PNG reserves under default limits.
func costOf16(t *testing.T, w, h int) int64 {
	t.Helper()
	return inspect16(t, w, h, Limits{}).Cost()
}

// waitSignal returns a hook for Budget.onWait and a channel closed on its
// first call.
func waitSignal() (func(), <-chan struct{}) {
	ch := make(chan struct{})
	var fired bool
	return func() {
		if !fired {
			fired = true
			close(ch)
		}
	}, ch
}

type result struct {
	img *Image
	err error
}

func prepareAsync(ctx context.Context, up *Upload) <-chan result {
	ch := make(chan result, 1)
	go func() {
		img, err := up.PrepareContext(ctx)
		ch <- result{img, err}
	}()
	return ch
}

func wantCode(t *testing.T, err error, status int, code string) *Error {
	t.Helper()
	var ie *Error
	if !errors.As(err, &ie) || ie.Status != status || ie.Code != code {
		t.Fatalf("error = %v (%T), want *Error %d %s", err, err, status, code)
	}
	return ie
}

// A second big image waits while the first holds the budget and is
// prepared as soon as the first gives it back.
func TestBudgetQueuesASecondImageUntilTheFirstReleases(t *testing.T) {
	c := costOf16(t, 400, 300)
	b := NewBudget(c+c/2, time.Hour) // room for one such image, not two
	hook, waiting := waitSignal()
	b.onWait = hook

	first, err := b.acquire(context.Background(), c, "first")
	if err != nil {
		t.Fatal(err)
	}
	defer first()
	second := inspect16(t, 400, 300, Limits{Budget: b})
	done := prepareAsync(context.Background(), second)

	<-waiting
	if got := b.Waiting(); got != 1 {
		t.Errorf("Waiting() = %d while the second image waits, want 1", got)
	}
	if got := b.InUse(); got != c {
		t.Errorf("InUse() = %d while only the first holds the budget, want %d", got, c)
	}
	first() // the first image is done
	r := <-done
	if r.err != nil {
		t.Fatalf("second image after the first released: %v", r.err)
	}
	if r.img.Width != 200 || r.img.Height != 150 {
		t.Errorf("second image = %dx%d, want 200x150", r.img.Width, r.img.Height)
	}
	if got := b.InUse(); got != 0 {
		t.Errorf("InUse() = %d after both finished, want 0", got)
	}
}

// When the budget stays taken for the whole wait the request is refused
// 503 "busy" with a Retry-After, and its wait leaves nothing reserved.
func TestBudgetRefusesBusyWhenTheWaitRunsOut(t *testing.T) {
	c := costOf16(t, 300, 240)
	for _, tc := range []struct {
		name     string
		maxWait  time.Duration
		wantWait bool
		cause    error
	}{
		{"no wait allowed", 0, false, nil},
		{"wait runs out", time.Nanosecond, true, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBudget(c, tc.maxWait)
			var waited bool
			b.onWait = func() { waited = true }
			hold, err := b.acquire(context.Background(), 1, "holder") // never given back during the test
			if err != nil {
				t.Fatal(err)
			}
			defer hold()

			up := inspect16(t, 300, 240, Limits{Budget: b})
			_, err = up.PrepareContext(context.Background())
			ie := wantCode(t, err, 503, CodeBusy)
			if ie.RetryAfter <= 0 {
				t.Errorf("RetryAfter = %v, want > 0", ie.RetryAfter)
			}
			if !strings.Contains(ie.Msg, "decoding other images") || !strings.Contains(ie.Msg, "300x240 png") {
				t.Errorf("message = %q, want it to say the gateway is busy decoding and name the image", ie.Msg)
			}
			if waited != tc.wantWait {
				t.Errorf("waited = %v, want %v", waited, tc.wantWait)
			}
			if tc.cause != nil && !errors.Is(err, tc.cause) {
				t.Errorf("errors.Is(err, %v) = false for %v", tc.cause, err)
			}
			if got := b.InUse(); got != 1 {
				t.Errorf("InUse() = %d after the refusal, want only the holder's 1", got)
			}
			if got := b.Waiting(); got != 0 {
				t.Errorf("Waiting() = %d after the refusal, want 0", got)
			}
		})
	}
}

// An image that needs more than the whole budget is refused at once,
// already by Inspect, with 413 and a message that says what it needs.
func TestBudgetRefusesAtOnceWhatCanNeverFit(t *testing.T) {
	c := costOf16(t, 300, 240)
	b := NewBudget(c-1, time.Hour)
	b.onWait = func() { t.Error("a request that can never fit waited") }
	_, err := Inspect(bytes.NewReader(png16(t, 300, 240)), Limits{Budget: b, MaxSide: testSide})
	ie := wantCode(t, err, 413, CodeTooBigToDecode)
	for _, part := range []string{"300x240 png", "needs about", "at most", "16"} {
		if !strings.Contains(ie.Msg, part) {
			t.Errorf("message %q does not contain %q", ie.Msg, part)
		}
	}
	// PrepareContext checks too, for an Upload inspected before the budget
	// shrank below it.
	up := inspect16(t, 300, 240, Limits{})
	up.lim.Budget = b
	_, err = up.PrepareContext(context.Background())
	wantCode(t, err, 413, CodeTooBigToDecode)
}

// Preparing gives its reservation back on success and on every error.
func TestBudgetIsReleasedOnSuccessAndOnError(t *testing.T) {
	good := png16(t, 320, 200)
	corrupt := bytes.Clone(good)
	corrupt = corrupt[:len(corrupt)-40] // cut into IDAT: decoding fails
	c := costOf16(t, 320, 200)
	b := NewBudget(c, 0) // exactly one; no waiting, so a leak shows as busy
	for _, tc := range []struct {
		name string
		data []byte
		code string
	}{
		{"success", good, ""},
		{"corrupt data", corrupt, CodeBadImage},
		{"success again", good, ""},
	} {
		up, err := Inspect(bytes.NewReader(tc.data), Limits{Budget: b, MaxSide: testSide})
		if err != nil {
			t.Fatalf("%s: Inspect: %v", tc.name, err)
		}
		_, err = up.PrepareContext(context.Background())
		if tc.code == "" && err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.code != "" {
			wantCode(t, err, 400, tc.code)
		}
		if got := b.InUse(); got != 0 {
			t.Fatalf("%s: InUse() = %d after Prepare returned, want 0", tc.name, got)
		}
	}
	// The whole budget is free again.
	all, err := b.acquire(context.Background(), b.Size(), "all")
	if err != nil {
		t.Fatalf("acquiring the whole budget after the prepares: %v", err)
	}
	all()
}

// A request cancelled while it waits is refused, reserves nothing, frees
// nothing it did not hold, and does not stand in the way of later ones.
func TestBudgetCancelWhileWaitingFreesNothingWrongly(t *testing.T) {
	c := costOf16(t, 300, 240)
	b := NewBudget(c, time.Hour)
	hook, waiting := waitSignal()
	b.onWait = hook

	holder, err := b.acquire(context.Background(), c, "holder")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := prepareAsync(ctx, inspect16(t, 300, 240, Limits{Budget: b}))
	<-waiting
	cancel() // the client went away
	r := <-done
	wantCode(t, r.err, 503, CodeBusy)
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("errors.Is(err, context.Canceled) = false for %v", r.err)
	}
	if got := b.InUse(); got != c {
		t.Errorf("InUse() = %d after the cancelled wait, want the holder's %d", got, c)
	}
	if b.sem.TryAcquire(1) {
		t.Error("the cancelled waiter freed room it never held: 1 byte was acquirable while the holder holds all")
	}

	// A later request waits behind the holder and gets in when it releases.
	b.onWait = nil
	later := prepareAsync(context.Background(), inspect16(t, 300, 240, Limits{Budget: b}))
	holder()
	holder() // a second call is a no-op
	if r := <-later; r.err != nil {
		t.Fatalf("request after the cancelled one: %v", r.err)
	}
	if got := b.InUse(); got != 0 {
		t.Errorf("InUse() = %d at the end, want 0", got)
	}
}

func TestNilBudgetReservesNothing(t *testing.T) {
	if b := NewBudget(0, time.Second); b != nil {
		t.Fatalf("NewBudget(0) = %v, want nil (no budget)", b)
	}
	var b *Budget
	if b.Size() != 0 || b.InUse() != 0 || b.Waiting() != 0 {
		t.Error("a nil Budget reports use")
	}
	if _, err := inspect16(t, 300, 200, Limits{}).PrepareContext(context.Background()); err != nil {
		t.Fatal(err)
	}
}
