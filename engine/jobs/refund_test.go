package jobs_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/engine/jobs"
	"github.com/sluicehq/sluice/engine/tenant"
)

// refunds records the jobs Config.Refund was called with.
type refunds struct {
	mu   sync.Mutex
	jobs []jobs.Job
}

func (r *refunds) refund(j jobs.Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.jobs = append(r.jobs, j)
}

func (r *refunds) tickets() []tenant.Ticket {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []tenant.Ticket
	for _, j := range r.jobs {
		out = append(out, j.Ticket)
	}
	return out
}

var ticket = tenant.Ticket{Tenant: "acme", Day: "2026-11-30", Units: 2}

// A job that fails on the gateway's side is refunded once, with its
// ticket; one that succeeds, one its caller cancels and one without a
// ticket are not.
func TestRefundOnlyFailedJobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ticket tenant.Ticket
		run    jobs.RunFunc
		cancel bool
		want   int
	}{
		{name: "failed", ticket: ticket, want: 1, run: func(context.Context, jobs.Report) (jobs.Result, error) {
			return jobs.Result{}, errors.New("backend down")
		}},
		{name: "panicked", ticket: ticket, want: 1, run: func(context.Context, jobs.Report) (jobs.Result, error) {
			panic("a bug")
		}},
		{name: "succeeded", ticket: ticket, run: func(context.Context, jobs.Report) (jobs.Result, error) {
			return jobs.Result{Data: []byte("png")}, nil
		}},
		{name: "cancelled by its caller", ticket: ticket, cancel: true, run: func(ctx context.Context, _ jobs.Report) (jobs.Result, error) {
			<-ctx.Done()
			return jobs.Result{}, ctx.Err()
		}},
		{name: "no ticket", run: func(context.Context, jobs.Report) (jobs.Result, error) {
			return jobs.Result{}, errors.New("backend down")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got refunds
			m := jobs.New(jobs.Config{Refund: got.refund})
			started := make(chan struct{})
			j, err := m.Submit(jobs.Spec{Tenant: "acme", Tier: "registered", Resource: "zimage_generate", Ticket: tc.ticket},
				func(ctx context.Context, r jobs.Report) (jobs.Result, error) {
					close(started)
					return tc.run(ctx, r)
				})
			if err != nil {
				t.Fatal(err)
			}
			if j.Tier != "registered" {
				t.Errorf("job tier %q", j.Tier)
			}
			<-started
			if tc.cancel {
				if _, err := m.Cancel(j.ID); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
			m.Close()
			tk := got.tickets()
			if len(tk) != tc.want || (tc.want == 1 && tk[0] != tc.ticket) {
				t.Fatalf("refunds %+v, want %d of %+v", tk, tc.want, tc.ticket)
			}
		})
	}
}

// A job Close cuts off is refunded when nothing keeps it for the next
// gateway; with a Store it is left to the next gateway, which restores it
// with its ticket and refunds it if it fails there.
func TestRefundAtShutdown(t *testing.T) {
	block := func(ctx context.Context, _ jobs.Report) (jobs.Result, error) {
		<-ctx.Done()
		return jobs.Result{}, context.Cause(ctx)
	}
	t.Run("memory only", func(t *testing.T) {
		var got refunds
		m := jobs.New(jobs.Config{Refund: got.refund})
		if _, err := m.Submit(jobs.Spec{Tenant: "acme", Resource: "zimage_generate", Ticket: ticket}, block); err != nil {
			t.Fatal(err)
		}
		m.Close()
		if tk := got.tickets(); len(tk) != 1 || tk[0] != ticket {
			t.Fatalf("refunds %+v", tk)
		}
	})
	t.Run("kept for the next gateway", func(t *testing.T) {
		var got refunds
		store := newMemStore()
		m := jobs.New(jobs.Config{Refund: got.refund, Store: store})
		j, err := m.Submit(jobs.Spec{Tenant: "acme", Tier: "registered", Resource: "zimage_generate", Ticket: ticket}, block)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		m.Close()
		if tk := got.tickets(); len(tk) != 0 {
			t.Fatalf("refunded at a shutdown that leaves the job to the next gateway: %+v", tk)
		}
		// The next gateway reads the record as a Store keeps it (JSON).
		stored, _ := store.get(j.ID)
		b, err := jobs.MarshalRecord(stored)
		if err != nil {
			t.Fatal(err)
		}
		back, err := jobs.UnmarshalRecord(b)
		if err != nil {
			t.Fatal(err)
		}
		if back.Ticket != ticket || back.Tier != "registered" {
			t.Fatalf("record lost the ticket or tier: %+v", back)
		}
		next := jobs.New(jobs.Config{Refund: got.refund, Store: store})
		defer next.Close()
		// It had not reached a backend and has no kept input: lost, failed.
		if err := next.Restore(context.Background(), nil, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := next.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		if tk := got.tickets(); len(tk) != 1 || tk[0] != ticket {
			t.Fatalf("the next gateway's refund: %+v", tk)
		}
	})
}
