package farm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/httpapi"
	"github.com/sluicehq/sluice/engine/clock"
)

// twoBackends starts two fake ComfyUI servers with the given job time.
func twoBackends(t *testing.T, jobTime time.Duration) ([]comfyui.Config, []*comfyuitest.Server) {
	t.Helper()
	var clients []comfyui.Config
	var servers []*comfyuitest.Server
	for range 2 {
		srv := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return jobTime }})
		t.Cleanup(srv.Close)
		c := comfyui.Config{BaseURL: srv.URL, PollInterval: 20 * time.Millisecond}
		clients, servers = append(clients, c), append(servers, srv)
	}
	return clients, servers
}

func generate(tenant string) httpapi.Job {
	return httpapi.Job{Job: comfyui.Job{Resource: "zimage_generate", Prompt: "a lighthouse", Width: 256, Height: 256}, Tenant: tenant, Cost: 1}
}

// TestFarmSpreadsJobs runs more jobs than slots through the farm: every one
// completes, over both backends. (That a backend's slots are never
// oversubscribed is engine/dispatch's TestSlotCapUnderContention.)
func TestFarmSpreadsJobs(t *testing.T) {
	clients, servers := twoBackends(t, 30*time.Millisecond)
	f, err := New(Config{Backends: clients, Slots: 1, MaxQueue: 64, TenantInFlight: 2, MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			if _, err := f.Run(context.Background(), generate(fmt.Sprintf("192.0.2.%d", i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := f.d.Stats()
	if st.Backends[0].Started+st.Backends[1].Started != 8 || st.Backends[0].Started == 0 || st.Backends[1].Started == 0 {
		t.Fatalf("jobs not spread over both backends: %+v", st.Backends)
	}
	if len(servers[0].Prompts())+len(servers[1].Prompts()) != 8 {
		t.Fatal("not every job reached a backend")
	}
}

func TestFarmTenantCapAnswers429(t *testing.T) {
	clients, _ := twoBackends(t, 200*time.Millisecond)
	f, err := New(Config{Backends: clients[:1], Slots: 1, MaxQueue: 64, TenantInFlight: 1, MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	first := make(chan error)
	go func() { _, err := f.Run(context.Background(), generate("192.0.2.1")); first <- err }()
	eventually(t, func() bool { return f.d.Stats().Backends[0].InUse == 1 }) // the first job holds the tenant's one place
	_, err = f.Run(context.Background(), generate("192.0.2.1"))
	var busy *httpapi.BusyError
	if !errors.As(err, &busy) || !busy.OverShare {
		t.Fatalf("second job of a tenant at its cap: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

func TestDeadBackendTakenOutAndBackIn(t *testing.T) {
	clients, servers := twoBackends(t, 5*time.Millisecond)
	f, err := New(Config{Backends: clients, Slots: 1, MaxQueue: 64, TenantInFlight: 8, MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	dead := clients[0].BaseURL
	for range failuresToTrip {
		f.probed(f.members[dead], errors.New("connection refused"))
	}
	for i := range 4 {
		if _, err := f.Run(context.Background(), generate(fmt.Sprintf("192.0.2.%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(servers[0].Prompts()); n != 0 {
		t.Fatalf("the backend taken out still got %d jobs", n)
	}
	f.probed(f.members[dead], nil) // it answers again
	for _, b := range f.d.Stats().Backends {
		if !b.Healthy {
			t.Fatalf("backend %s still out after it answered", b.Name)
		}
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// eventually waits, up to 10 s, for cond to hold.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestJobOfBackendTakenOutRunsElsewhere(t *testing.T) {
	var (
		calls   atomic.Int64
		started = make(chan string, 2)
	)
	var clients []comfyui.Config
	var servers []*comfyuitest.Server
	for range 2 {
		var url string
		srv := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration {
			started <- url
			if calls.Add(1) == 1 {
				return time.Minute // the first job hangs on its backend
			}
			return 10 * time.Millisecond
		}})
		url = srv.URL
		t.Cleanup(srv.Close)
		c := comfyui.Config{BaseURL: srv.URL, PollInterval: 20 * time.Millisecond}
		clients, servers = append(clients, c), append(servers, srv)
	}
	clk := clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	f, err := New(Config{Backends: clients, Slots: 1, MaxQueue: 64, TenantInFlight: 2, MaxWait: 30 * time.Second, Clock: clk, Stall: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	defer f.Close()
	done := make(chan error)
	go func() {
		_, err := f.Run(context.Background(), generate("192.0.2.1"))
		done <- err
	}()
	first := <-started // the job runs on one backend ...
	// ... the farm knows it runs there (else taking the backend out would
	// merely take it back, as a job not started) ...
	m := f.members[first]
	waitFor(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for a := range m.jobs {
			return a.started
		}
		return false
	})
	// ... and the backend is taken out: the job, showing no progress there
	// for Config.Stall, is interrupted there and runs on the other.
	f.setOut(first, true)
	clk.Advance(time.Minute)
	f.probed(m, errors.New("connection refused"))
	second := <-started
	if err := <-done; err != nil {
		t.Fatalf("the job did not finish elsewhere: %v", err)
	}
	if first == second {
		t.Fatalf("re-run on the backend taken out (%s)", first)
	}
	// It was interrupted where it hung: it never ran on two backends at once.
	for _, srv := range servers {
		if srv.URL == first && len(srv.Interrupts())+len(srv.Deletes()) == 0 {
			t.Fatal("the job was not interrupted on the backend taken out")
		}
	}
	for _, b := range f.d.Stats().Backends {
		if b.Name == first && b.Healthy {
			t.Fatal("the backend taken out is still healthy")
		}
	}
}

func TestFarmPrecheck(t *testing.T) {
	clients, _ := twoBackends(t, 300*time.Millisecond)
	f, err := New(Config{Backends: clients[:1], Slots: 1, MaxQueue: 1, TenantInFlight: 1, MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	if err := f.Precheck(generate("192.0.2.1")); err != nil {
		t.Fatalf("an idle farm refuses: %v", err)
	}
	done := make(chan error, 2)
	go func() { _, err := f.Run(context.Background(), generate("192.0.2.1")); done <- err }()
	eventually(t, func() bool { return f.d.Stats().Backends[0].InUse == 1 })
	var busy *httpapi.BusyError
	if err := f.Precheck(generate("192.0.2.1")); !errors.As(err, &busy) || !busy.OverShare {
		t.Fatalf("a tenant at its cap: %v", err)
	}
	go func() { _, err := f.Run(context.Background(), generate("192.0.2.2")); done <- err }()
	eventually(t, func() bool { return f.d.Stats().Queued == 1 })
	if err := f.Precheck(generate("192.0.2.3")); !errors.As(err, &busy) || busy.OverShare {
		t.Fatalf("slots taken and the queue full: %v", err)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
