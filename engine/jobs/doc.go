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
// A job is queued until its run function first reports progress
// (Progress(0, 0) says only "it has started"), running after that, and succeeded, failed
// or cancelled when the function returns. Cancel ends the job's context; the
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
// job's record (not its progress ticks, nor its result bytes) is saved on
// each state change and when Started; a forgotten job's record is deleted.
// With a ResultStore (DirResults keeps results in a folder) result bytes
// leave memory for it. After a restart, Restore loads the records:
// finished jobs stay readable; jobs that had reached a backend (Started)
// are followed there to their end by a RecoverFunc, after a ClaimFunc has
// taken, before Restore returns, what each holds there (its GPU slot, its
// admission token) until it ends; the others end failed
// (LostQueued), for their input image is never stored. Close leaves
// the stored records of the jobs it cancels as they were, so that the next
// gateway takes them up.
//
// A Manager is safe for concurrent use.
package jobs
