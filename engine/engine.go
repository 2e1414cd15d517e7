package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alibaba/sentinel-golang/api"
	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/config"
	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/core/hotspot"
	"github.com/alibaba/sentinel-golang/core/isolation"
	"github.com/alibaba/sentinel-golang/core/stat"
	"github.com/alibaba/sentinel-golang/core/system"

	"github.com/sluicehq/sluice/rules"
)

// ErrUnknownResource is returned by Guard for a resource the rule language
// does not know.
var ErrUnknownResource = errors.New("unknown resource")

// Clock tells the time. The engine reads it for bans; tests inject one.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options configure an Engine. The zero value is usable.
type Options struct {
	// Logger receives the engine's and sentinel-golang's logs.
	Logger *slog.Logger
	// Clock drives bans; the system clock by default.
	Clock Clock
	// CPU reports the machine's CPU usage; the whole machine's, sampled
	// with gopsutil, by default.
	CPU CPUSource
	// CPUInterval is how often CPU is sampled (default 1s).
	CPUInterval time.Duration
	// Namespace prefixes the sentinel-golang resource names, whose
	// statistics live as long as the process: tests give each engine its
	// own. Empty in production.
	Namespace string
	// BlockedLog is how many recent refusals Blocked can return (default
	// DefaultBlockedLog).
	BlockedLog int
}

// Engine guards calls with the current rule set. It is safe for concurrent
// use; Apply may run while Guard does.
type Engine struct {
	log     *slog.Logger
	clock   Clock
	ns      string
	chain   *base.SlotChain
	state   atomic.Pointer[state]
	applyMu sync.Mutex
	bans    *banTracker
	blocked *blockedLog
	stats   map[string]*resStats

	gpu gpus

	cpuSrc   CPUSource
	cpuEvery time.Duration
	cpuBits  atomic.Uint64 // float64 bits of the last CPU sample
	stop     chan struct{}
	done     chan struct{}
	closed   sync.Once
}

// state is one compiled rule set: everything Guard needs, built at Apply.
type state struct {
	set      *rules.Set
	res      map[string]*resState
	cpuLimit float64
	cpuRule  *ownRule
	gpuRule  *ownRule // the GPU rule under reject; nil without one
}

// resState is one resource's compiled rules.
type resState struct {
	name     string
	wrapper  *base.ResourceWrapper
	node     *stat.ResourceNode
	rules    *rules.Resource // nil when the resource has no document
	needArgs bool            // hotspot or ban rules read the origin and size
	// Which of sentinel-golang's slots have rules for this resource: the
	// others are skipped, sparing their per-call allocations.
	hasSystem, hasHotspot, hasConcurrency bool

	ban      *rules.BanRule
	banRule  *ownRule
	sizeCost map[int]uint32
	sizeArgs map[int]any // boxed size strings, to spare an allocation per call
	stats    *resStats
	// flowChecks are the flow rules as the GPU slot checks them while a
	// tighten pressure lasts.
	flowChecks []flowCheck
	// mu serialises admissions, making thresholds exact, unless throttled:
	// see entry.
	mu        sync.Mutex
	throttled bool
}

// sentinelInit guards sentinel-golang's process-wide initialisation.
var sentinelInit struct {
	once sync.Once
	err  error
}

// New starts an engine enforcing set (nil means no rules).
func New(opts Options, set *rules.Set) (*Engine, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.CPU == nil {
		opts.CPU = newMachineCPU()
	}
	if opts.CPUInterval <= 0 {
		opts.CPUInterval = time.Second
	}
	if err := initSentinel(opts.Logger); err != nil {
		return nil, err
	}
	e := &Engine{
		log:      opts.Logger,
		clock:    opts.Clock,
		ns:       opts.Namespace,
		bans:     newBanTracker(opts.Clock),
		blocked:  newBlockedLog(opts.BlockedLog),
		stats:    make(map[string]*resStats, len(rules.Resources)),
		cpuSrc:   opts.CPU,
		cpuEvery: opts.CPUInterval,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, r := range rules.Resources {
		e.stats[r] = newResStats()
	}
	e.gpu.sources = make(map[string]*gpuSourceState)
	e.gpu.inPress = make(map[string]bool)
	e.chain = e.buildChain()
	if set == nil {
		set = &rules.Set{Resources: map[string]*rules.Resource{}}
	}
	if err := e.Apply(set); err != nil {
		return nil, err
	}
	e.SampleCPU()
	go e.sampleLoop()
	return e, nil
}

// initSentinel initialises sentinel-golang once per process: logs through
// slog, no files written, cached time, load sampled for system rules.
func initSentinel(log *slog.Logger) error {
	sentinelInit.once.Do(func() {
		conf := config.NewDefaultConfig()
		conf.Sentinel.App.Name = "sluice"
		conf.Sentinel.Log.Logger = slogLogger{log.With(slog.String("component", "sentinel"))}
		conf.Sentinel.Log.Metric.FlushIntervalSec = 0
		conf.Sentinel.Stat.System.CollectIntervalMs = 0
		conf.Sentinel.Stat.System.CollectLoadIntervalMs = 1000
		conf.Sentinel.Stat.System.CollectCpuIntervalMs = 0
		conf.Sentinel.Stat.System.CollectMemoryIntervalMs = 0
		conf.Sentinel.UseCacheTime = true
		if err := api.InitWithConfig(conf); err != nil {
			sentinelInit.err = fmt.Errorf("init sentinel-golang: %w", err)
		}
	})
	return sentinelInit.err
}

// buildChain is sentinel-golang's default chain without circuit breaking,
// plus the engine's ban and CPU slots.
func (e *Engine) buildChain() *base.SlotChain {
	sc := base.NewSlotChain()
	sc.AddStatPrepareSlot(stat.DefaultResourceNodePrepareSlot)
	sc.AddRuleCheckSlot(&banSlot{e: e})
	sc.AddRuleCheckSlot(gated{RuleCheckSlot: system.DefaultAdaptiveSlot, need: func(rs *resState) bool { return rs.hasSystem }})
	sc.AddRuleCheckSlot(&cpuSlot{e: e})
	sc.AddRuleCheckSlot(&gpuSlot{e: e})
	sc.AddRuleCheckSlot(flow.DefaultSlot)
	sc.AddRuleCheckSlot(gated{RuleCheckSlot: hotspot.DefaultSlot, need: func(rs *resState) bool { return rs.hasHotspot }, order: hotspotSlotOrder})
	sc.AddRuleCheckSlot(gated{RuleCheckSlot: isolation.DefaultSlot, need: func(rs *resState) bool { return rs.hasConcurrency }})
	sc.AddStatSlot(stat.DefaultSlot)
	sc.AddStatSlot(flow.DefaultStandaloneStatSlot)
	sc.AddStatSlot(hotspot.DefaultConcurrencyStatSlot)
	return sc
}

func (e *Engine) sentinelName(resource string) string { return e.ns + resource }

// Apply replaces the rule set. set must come from rules.Build, so every rule
// is valid; Apply compiles everything first and then switches each rule
// kind, keeping the previous rules if sentinel-golang refuses any.
func (e *Engine) Apply(set *rules.Set) error {
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	st := &state{set: set, res: make(map[string]*resState, len(rules.Resources))}
	s := set.Sentinel(e.sentinelName)
	for _, name := range rules.Resources {
		rs := e.compileResource(name, set.Resources[name], set.GPU)
		rs.hasSystem = len(s.System) > 0
		st.res[name] = rs
	}
	if cpu := set.System.CPUUsage; cpu > 0 {
		st.cpuLimit = cpu
		st.cpuRule = &ownRule{id: "system/cpu_usage", kind: KindCPU, threshold: cpu}
	}
	if g := set.GPU; g != nil {
		st.gpuRule = &ownRule{id: "system/gpu", kind: KindGPU, threshold: g.MemoryUsedRatio}
	}
	prev := e.state.Load()
	if err := loadSentinel(s); err != nil {
		if prev != nil {
			if rerr := loadSentinel(prev.set.Sentinel(e.sentinelName)); rerr != nil {
				e.log.Error("restoring the previous rules failed", slog.Any("error", rerr))
			}
		}
		return fmt.Errorf("apply rules: %w", err)
	}
	e.state.Store(st)
	e.evaluateGPUs() // the thresholds may have changed
	return nil
}

func loadSentinel(s *rules.Sentinel) error {
	if _, err := flow.LoadRules(s.Flow); err != nil {
		return fmt.Errorf("flow rules: %w", err)
	}
	if _, err := hotspot.LoadRules(s.Hotspot); err != nil {
		return fmt.Errorf("hotspot rules: %w", err)
	}
	if _, err := isolation.LoadRules(s.Isolation); err != nil {
		return fmt.Errorf("concurrency rules: %w", err)
	}
	if _, err := system.LoadRules(s.System); err != nil {
		return fmt.Errorf("system rules: %w", err)
	}
	return nil
}

func (e *Engine) compileResource(name string, r *rules.Resource, gpu *rules.GPU) *resState {
	sname := e.sentinelName(name)
	rs := &resState{
		name:    name,
		wrapper: base.NewResourceWrapper(sname, base.ResTypeCommon, base.Inbound),
		node:    stat.GetOrCreateResourceNode(sname, base.ResTypeCommon),
		rules:   r,
		stats:   e.stats[name],
	}
	if r == nil {
		return rs
	}
	if gpu != nil && gpu.Action == rules.GPUTighten {
		for i, f := range r.Flow {
			rs.flowChecks = append(rs.flowChecks, flowCheck{
				stat: windowStat(rs.node, time.Duration(f.Window)),
				tightRule: &ownRule{id: "system/gpu", resource: name, kind: KindGPU,
					threshold: f.Threshold * gpu.Factor, window: time.Duration(f.Window), tightened: fmt.Sprintf("%s/flow[%d]", name, i)},
			})
		}
	}
	for _, f := range r.Flow {
		rs.throttled = rs.throttled || f.Behavior == rules.BehaviorThrottle
	}
	rs.needArgs = len(r.Hotspot) > 0 || r.Ban != nil
	rs.hasHotspot = len(r.Hotspot) > 0
	rs.hasConcurrency = r.Concurrency > 0
	if r.Ban != nil {
		rs.ban = r.Ban
		rs.banRule = &ownRule{id: name + "/ban", resource: name, kind: KindBan, threshold: float64(r.Ban.Blocks), window: time.Duration(r.Ban.Within)}
	}
	if c := r.Cost; c != nil && c.Param == rules.ParamSize {
		rs.sizeCost = make(map[int]uint32, len(c.Values))
		for v, n := range c.Values {
			size, _ := strconv.Atoi(v) // validated by rules.Build
			rs.sizeCost[size] = uint32(n)
		}
	}
	// Every size the API accepts (multiples of 16 up to 2048) is boxed once
	// here rather than on each call.
	rs.sizeArgs = make(map[int]any, 2048/16)
	for size := 16; size <= 2048; size += 16 {
		rs.sizeArgs[size] = strconv.Itoa(size)
	}
	for _, h := range r.Hotspot {
		if h.Param == rules.ParamSize {
			for v := range h.Items {
				size, _ := strconv.Atoi(v)
				rs.sizeArgs[size] = v
			}
		}
	}
	return rs
}

// windowStat reads a resource's admissions over one of the flow windows
// rules allow (all of which slide over sentinel-golang's resource window).
func windowStat(node *stat.ResourceNode, window time.Duration) base.ReadStat {
	ms := uint32(window.Milliseconds())
	if ms == 1000 {
		return node.DefaultMetric()
	}
	rs, err := node.GenerateReadStat(ms/500, ms)
	if err != nil {
		return node.DefaultMetric() // unreachable for the windows rules.Build accepts
	}
	return rs
}

// Rules returns the rule set in force.
func (e *Engine) Rules() *rules.Set { return e.state.Load().set }

// Call is one request to guard.
type Call struct {
	// Resource is one of rules.Resources.
	Resource string
	// Origin is the client's IP address in canonical form (the value
	// hotspot rules on origin and bans count by).
	Origin string
	// Size is the request's size parameter (DDColor's model input size,
	// the longer side of a generated image); 0 when it has none.
	Size int
	// Cost is the call's weight against flow and hotspot thresholds; 0
	// takes it from the resource's cost rule (1 without one).
	Cost int
}

// Token is an admitted call. Exit it exactly once, when the work it guards
// ends.
type Token struct {
	entry  *base.SentinelEntry
	stats  *resStats
	args   [3]any
	exited atomic.Bool
	// Cost is the weight the call was admitted with.
	Cost int
}

// Exit records the end of the guarded work: its response time and, when
// err is not nil, a failure. Calls after the first do nothing.
func (t *Token) Exit(err error) {
	if t == nil || !t.exited.CompareAndSwap(false, true) {
		return
	}
	if err != nil {
		t.entry.SetError(err)
		t.stats.failed.Add(1)
	}
	t.stats.completed.Add(1)
	t.entry.Exit()
}

// Guard decides whether a call may go ahead. It returns a Token to Exit
// when the work ends, or a *Refusal saying which rule refused. A flow rule
// with behavior throttle may hold the call for up to its max_queue first.
func (e *Engine) Guard(ctx context.Context, c Call) (*Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := e.state.Load()
	rs := st.res[c.Resource]
	if rs == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownResource, c.Resource)
	}
	cost := uint32(c.Cost)
	if c.Cost <= 0 {
		cost = rs.costOf(c.Size)
	}
	c.Cost = int(cost)
	tok := &Token{stats: rs.stats, Cost: c.Cost}
	sctx := e.chain.GetPooledContext()
	sctx.Resource = rs.wrapper
	sctx.Input.BatchCount = cost
	tok.args[argResource] = rs
	if rs.needArgs {
		tok.args[rules.ArgOrigin] = c.Origin
		tok.args[rules.ArgSize] = rs.sizeArg(c.Size)
	}
	sctx.Input.Args = tok.args[:]
	entry := base.NewSentinelEntry(sctx, rs.wrapper, e.chain)
	sctx.SetEntry(entry)
	if r := rs.entry(e.chain, sctx); r != nil && r.IsBlocked() {
		ref := e.refusal(rs, c, r.BlockError())
		entry.Exit()
		e.refused(rs, c, ref)
		return nil, ref
	}
	tok.entry = entry
	rs.stats.passed.Add(1)
	return tok, nil
}

// entry runs the slot chain. sentinel-golang's flow and concurrency checks
// read the statistics and count the admission in separate steps, so
// concurrent calls can overshoot a threshold; for a resource without
// throttling the chain runs under the resource's lock, which makes every
// threshold exact (a few admissions a second per GPU resource never contend
// for long). Throttling sleeps inside the chain to pace admissions, and its
// pacing is exact by itself, so those resources run unlocked.
func (rs *resState) entry(sc *base.SlotChain, ctx *base.EntryContext) *base.TokenResult {
	if rs.throttled {
		return sc.Entry(ctx)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return sc.Entry(ctx)
}

// Precheck refuses a call whose origin is banned from the resource, before
// the caller has spent anything on it — before an upload is even read. It
// returns nil when Guard should decide; it counts a refusal as Guard does.
func (e *Engine) Precheck(c Call) *Refusal {
	rs := e.state.Load().res[c.Resource]
	if rs == nil || rs.ban == nil || c.Origin == "" {
		return nil
	}
	left, banned := e.bans.banned(rs.name, c.Origin)
	if !banned {
		return nil
	}
	ref := &Refusal{Resource: rs.name, Kind: KindBan, Rule: rs.banRule.id, Param: rules.ParamOrigin, Value: c.Origin,
		Threshold: rs.banRule.threshold, Window: rs.banRule.window, RetryAfter: left}
	e.refused(rs, c, ref)
	return ref
}

// argResource is where Guard passes the *resState to the engine's slots.
const argResource = 2

func (rs *resState) costOf(size int) uint32 {
	if rs.rules == nil || rs.rules.Cost == nil {
		return 1
	}
	if rs.sizeCost != nil {
		if n, ok := rs.sizeCost[size]; ok {
			return n
		}
	}
	return uint32(rs.rules.Cost.Default)
}

func (rs *resState) sizeArg(size int) any {
	if v, ok := rs.sizeArgs[size]; ok {
		return v
	}
	return strconv.Itoa(size)
}

// refused counts a refusal, records it in the log of recent refusals and
// feeds the ban rule.
func (e *Engine) refused(rs *resState, c Call, ref *Refusal) {
	rs.stats.refuse(ref.Kind)
	e.blocked.add(Blocked{
		Time: e.clock.Now(), Origin: c.Origin, Resource: rs.name, Size: c.Size,
		Rule: ref.Rule, Kind: ref.Kind, Value: ref.Value,
	})
	// Only the caller's own excess earns a ban: refusals for capacity
	// (GPU, CPU, system, concurrency) hit honest clients too.
	if rs.ban == nil || ref.Kind == KindBan || ref.Overload() || c.Origin == "" {
		return
	}
	if e.bans.refused(rs.name, c.Origin, rs.ban) {
		e.log.Warn("origin banned",
			slog.String("resource", rs.name),
			slog.String("origin", c.Origin),
			slog.Int("refusals", rs.ban.Blocks),
			slog.Duration("within", time.Duration(rs.ban.Within)),
			slog.Duration("for", time.Duration(rs.ban.For)))
	}
}

// Close stops the engine's sampling and clears its rules from
// sentinel-golang.
func (e *Engine) Close() {
	e.closed.Do(func() {
		close(e.stop)
		<-e.done
		e.applyMu.Lock()
		defer e.applyMu.Unlock()
		if err := loadSentinel(&rules.Sentinel{}); err != nil {
			e.log.Warn("clearing rules", slog.Any("error", err))
		}
	})
}
