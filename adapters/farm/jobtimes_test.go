package farm

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine/plan"
)

// TestFarmRecordsSlotTimesNotQueueWaits runs two jobs on one slot: the
// second waits 3 s for the first, then runs 2 s. The recorder gets each
// job's time on the slot, by resource and size, and never the wait.
func TestFarmRecordsSlotTimesNotQueueWaits(t *testing.T) {
	var rec plan.Recorder
	f, backends, clk := fakeFarm(t, Config{Slots: 1, JobTimes: &rec}, 1)
	b := backends[0]
	done := make(chan error, 2)
	run := func(job comfyui.Job) {
		_, err := f.Run(context.Background(), httpapi.Job{Job: job, Tenant: job.Resource, InFlight: 1})
		done <- err
	}
	go run(comfyui.Job{Resource: "ddcolor_person", Size: 512})
	first := b.next(t)
	go run(comfyui.Job{Resource: "zimage_generate", Width: 1024, Height: 768})
	waitFor(t, func() bool { return f.Stats().Queued == 1 })
	clk.Advance(3 * time.Second)
	first.finish(nil)
	second := b.next(t) // granted the slot 3 s after it asked
	clk.Advance(2 * time.Second)
	second.finish(nil)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	got := rec.Snapshot()
	want := []plan.Times{
		{Resource: "ddcolor_person", Size: 512, Times: []time.Duration{3 * time.Second}},
		{Resource: "zimage_generate", Size: 1024, Times: []time.Duration{2 * time.Second}},
	}
	if len(got) != len(want) {
		t.Fatalf("recorded %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Resource != want[i].Resource || got[i].Size != want[i].Size || len(got[i].Times) != 1 || got[i].Times[0] != want[i].Times[0] {
			t.Errorf("recorded %v, want %v", got[i], want[i])
		}
	}
}

// TestFarmRecordsNothingForAJobThatDidNotRun: a failed prompt held its slot
// but says nothing about a job's time.
func TestFarmRecordsNothingForAJobThatDidNotRun(t *testing.T) {
	var rec plan.Recorder
	f, backends, clk := fakeFarm(t, Config{Slots: 1, JobTimes: &rec}, 1)
	done := make(chan error, 1)
	go func() {
		_, err := f.Run(context.Background(), httpapi.Job{Job: comfyui.Job{Resource: "ddcolor_person", Size: 512}, Tenant: "t"})
		done <- err
	}()
	r := backends[0].next(t)
	clk.Advance(time.Second)
	r.finish(context.Canceled)
	if err := <-done; err == nil {
		t.Fatal("the failed job succeeded")
	}
	if got := rec.Snapshot(); len(got) != 0 {
		t.Errorf("recorded %v for a job that never executed", got)
	}
}
