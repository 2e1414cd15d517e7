// Package plan measures how long jobs hold the farm's GPU slots, per
// resource and size, and turns those times and the farm's slots into a
// capacity plan: the admissions per second each resource can sustain and
// the rules that would hold it there (a flow threshold weighted by cost,
// cost weights per size, concurrency, and the queue's settings), as rule
// YAML ready for `sluice rules apply`.
//
// A Recorder keeps the last Window job times of each resource and size. The
// farm records one per job, the time from the job's grant of a slot until
// ComfyUI has executed it: the time the slot was held, never the time the
// job waited in the queue for it. Recording is one ring write under a
// mutex, with no allocation once a resource and size has been seen.
//
// A Planner reads the farm's slots, the Recorder and the rules in force and
// computes a Plan (Compute does the arithmetic alone, for tests). The method:
//
//   - A resource's job time T is the mean of its recorded jobs over all
//     sizes, so it follows the sizes its traffic asks for. Where nothing is
//     recorded, the configured estimate stands in (Measured false, a note
//     says so).
//   - The farm's S slots are shared between the measured resources by the
//     slot time they used: share = n·T / Σ(n·T), n being the jobs recorded.
//     A resource sustains share·S/T admissions per second; together they
//     fill the farm exactly. A resource alone on the farm (or one not
//     measured) gets all S slots: S/T per second.
//   - Cost weights: each size's job time over the cheapest size's, rounded
//     (at least 1). The flow threshold counts cost, so it is the
//     sustainable rate times the mean cost per job, over the shortest
//     window (1s, 2s, 5s, 10s) whose threshold admits the dearest size.
//   - Concurrency: the resource's slots (S, or its share of them, rounded
//     up). Queue: a job may wait about QueueJobTimes job times
//     (--queue-wait), and the queue holds what the farm serves in that time
//     (--queue-max).
package plan
