// Package plan measures how long jobs hold the farm's GPU slots, per
// resource and size, and turns those times and the farm's slots into a
// capacity plan: the admissions per second each resource can sustain and
// the rules that would hold it there (a flow threshold weighted by cost,
// cost weights per size, concurrency, and the queue's settings), as rule
// YAML ready for `sluice rules apply`.
//
// A Recorder keeps, per resource and size, the number of jobs and their
// total slot time over the last Span (10 minutes in one-minute buckets, on
// its clock), which weigh every figure by the traffic, and the last Window
// job times, for the p95. The farm records one per job, the time from the
// job's grant of a slot until ComfyUI has executed it: the time the slot
// was held, never the time the job waited in the queue for it. Recording
// is a ring and a bucket write under a mutex, with no allocation once a
// resource and size has been seen.
//
// A Planner reads the farm's slots, the Recorder and the rules in force and
// computes a Plan (Compute does the arithmetic alone, for tests). The method:
//
//   - A resource's job time T is its total slot time over its jobs of the
//     span, all sizes together, so it follows the sizes its traffic asks
//     for. Where nothing is recorded, the configured estimate stands in
//     (Measured false, a note says so).
//   - The farm's S slots are shared between the measured resources by the
//     slot time they used over the span: share = work / Σ work. A resource
//     sustains share·S/T admissions per second; together they fill the
//     farm exactly. A resource alone on the farm (or one not measured) gets
//     all S slots: S/T per second.
//   - Cost weights: each size's mean job time over the cheapest size's,
//     rounded (at least 1), on top of the cost rule in force (its default
//     and the sizes not measured). The flow threshold counts cost; sentinel
//     refuses once the count plus a call's whole cost exceeds it, so the
//     threshold is a whole number: floor(rate·avgCost·w) over the shortest
//     window w (1s, 2s, 5s, 10s) where that is more than 90% of
//     rate·avgCost·w and admits the dearest size (else 10s). Where even 10s
//     does not admit the dearest size, the costs are capped until it does,
//     so that the YAML validates.
//   - Concurrency: the engine counts a job from admission to its end, queue
//     wait included, so it is the resource's slots plus its share of the
//     queue: ⌈share·S⌉ + ⌈QueueJobTimes·share·S⌉. Queue: a job may wait
//     about QueueJobTimes job times (--queue-wait), and the queue holds
//     QueueJobTimes·S jobs (--queue-max).
//   - A shadow plan changes nothing that refuses: every rule in force stays
//     as it is (cost and concurrency included), an earlier shadow flow rule
//     is replaced by the proposed flow rule in mode shadow (counted with the
//     costs in force), the proposed concurrency goes in as shadow only
//     where no enforcing concurrency is in force (else in a note), and a
//     resource whose rules in force and proposal do not validate together
//     gets no document (a note says why).
package plan
