// Package jobs owns asynchronous jobs: work admitted now, run in the
// background, and looked at later by its ID.
//
// A Manager keeps one record per job: who asked (Tenant), for what
// (Resource, Params), its State, its times, its progress, and, once it has
// succeeded, its result bytes in memory. Submit starts a job's run function
// on a goroutine of its own, under a context of the Manager's (never a
// request's), and returns at once:
//
//	m := jobs.New(jobs.Config{})
//	defer m.Close()
//	job, err := m.Submit(jobs.Spec{Tenant: ip, Resource: "zimage_generate"},
//		func(ctx context.Context, report jobs.Report) (jobs.Result, error) {
//			return render(ctx, report.Progress)
//		})
//
// A job is queued (waiting for a GPU slot in the gateway: Report.Queued
// gives its place) until its run function says where it went
// (Report.Started: submitted, in its backend's own queue, with its place
// there from Report.Position), running once it executes (Report.Running,
// or its first progress report; Progress(0, 0) says only "it has
// started"), and succeeded, failed or cancelled when the function returns.
// Cancel ends the job's context; the
// function is expected to return soon after, and the job is then cancelled.
// The run function is called exactly once for every job Submit accepted,
// even one cancelled at once, so that it can release what it holds. A
// panic in it fails the job with ErrPanicked, is logged with its stack, and
// leaves the process up: the function releases what it holds with defer,
// so that the release also runs as a panic unwinds.
//
// Subscribe follows one job: its current state first, then its progress and
// state changes in order, until the job ends. A slow subscriber never holds
// the job up: intermediate progress events are dropped for it once its
// buffer is full; state changes never are.
//
// Finished jobs are kept, with their results, for Get: at most
// Config.MaxFinished of them (default 1000) and at most
// Config.MaxResultBytes of result bytes in all (default 512 MiB); beyond
// either the oldest finished are forgotten first. Jobs still queued or
// running are never evicted; their number is bounded by admission control
// upstream.
//
// Nothing is persisted unless Config.Store is set. With a Store, every
// job's record (not its progress ticks, nor its result bytes) is written
// on each state change and when Started, and a forgotten job's record is
// deleted: always off the job's goroutine, by one writer per record that
// coalesces changes, keeps them in order and retries failures with
// backoff, so a Store that does not answer (etcd down) never holds a job,
// or the GPU slot it holds, up. With a Journal (DirResults is one),
// Submit first writes the job's entry — its record and Spec.Input, the
// prepared image — to the gateway's own disk, so an accepted job survives
// any stop, SIGKILL included, even while the Store is unreachable; the
// entry goes once the job's final record is in the Store. With a
// ResultStore result bytes leave memory for it. After a restart, Restore
// loads the records and the journal: finished jobs stay readable; jobs
// that had reached a backend (Started) are followed there to their end by
// a RecoverFunc, after a ClaimFunc has taken, before Restore returns, what
// each holds there (its GPU slot, its admission token) until it ends; jobs
// that had not, and those whose backend no longer has them (ErrRerun), run
// again from their journaled input through a ResumeFunc; without input
// they end failed (LostQueued). Close leaves the stored records of the
// jobs it cancels as they were, so that the next gateway takes them up.
//
// A Manager is safe for concurrent use.
package jobs
