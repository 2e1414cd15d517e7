package engine_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sluicehq/sluice/engine"
)

// TestAdoptCountsAgainstConcurrency: a call adopted after a restart is
// never refused, and holds a place under the resource's concurrency rule
// until its token is exited.
func TestAdoptCountsAgainstConcurrency(t *testing.T) {
	e := newEngine(t, "resource: zimage_generate\nconcurrency: 1\n", engine.Options{})
	c := engine.Call{Resource: "zimage_generate", Origin: "192.0.2.1"}
	adopted := e.Adopt(c)
	if adopted == nil {
		t.Fatal("Adopt refused")
	}
	_, err := e.Guard(context.Background(), c)
	var ref *engine.Refusal
	if !errors.As(err, &ref) || ref.Kind != engine.KindConcurrency {
		t.Fatalf("a new call beside the adopted one: %v", err)
	}
	second := e.Adopt(c)
	if second == nil {
		t.Fatal("Adopt refused past the concurrency limit")
	}
	adopted.Exit(nil)
	if _, err := e.Guard(context.Background(), c); err == nil {
		t.Fatal("admitted while the second adopted call runs")
	}
	second.Exit(nil)
	tok, err := e.Guard(context.Background(), c)
	if err != nil {
		t.Fatalf("refused once the adopted calls ended: %v", err)
	}
	tok.Exit(nil)
	if e.Adopt(engine.Call{Resource: "no_such_resource"}) != nil {
		t.Fatal("an unknown resource was adopted")
	}
}
