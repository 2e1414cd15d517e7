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
	"github.com/alibaba/sentinel-golang/core/stat"
	"github.com/alibaba/sentinel-golang/core/system"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/engine/tenant"
	"github.com/sluicehq/sluice/rules"
)

// ErrUnknownResource is returned by Guard for a resource the rule language
// does not know.
var ErrUnknownResource = errors.New("unknown resource")

// Options configure an Engine. The zero value is usable.
type Options struct {
	// Logger receives the engine's and sentinel-golang's logs.
	Logger *slog.Logger
	// Clock drives bans, throttle pacing, response times and the log of
	// refusals; the system clock by default. sentinel-golang's sliding
	// windows and hotspot buckets follow its own process-wide clock: tests
	// set it to the same clock with util.SetClock(clock.Sentinel(c)).
	Clock clock.Clock
	// CPU reports the gateway's CPU usage; by default its own share: its
	// cgroup v2's, else its process's (never the whole host's).
	CPU CPUSource
	// CPUInterval is how often CPU is sampled (default 1s).
	CPUInterval time.Duration
	// Namespace prefixes the sentinel-golang resource names. sentinel-golang
	// keeps rules and statistics process-wide: engines alive at the same
	// time need distinct namespaces (New refuses a namespace in use). Empty
	// in production.
	Namespace string
	// BlockedLog is how many recent refusals Blocked keeps (default
	// DefaultBlockedLog), and as many shadow would-refusals apart.
	BlockedLog int
}

// Engine guards calls with the current rule set. It is safe for concurrent
// use; Apply may run while Guard does.
type Engine struct {
	log     *slog.Logger
	clock   clock.Clock
	ns      string
	chain   *base.SlotChain
	state   atomic.Pointer[state]
	applyMu sync.Mutex
	bans    *banTable
	blocked *blockedLog
	// tierRates are the tiers' per-caller rates, swapped whole by
	// SetTierRates, apart from the rules: Apply keeps them.
	tierRates   atomic.Pointer[tierRates]
	tierRatesMu sync.Mutex // serialises SetTierRates
	// res holds each resource's lock, in-flight count, pacing and
	// statistics: built once, kept across Apply, so that a rule swap never
	// runs two admissions of a resource under different locks or counters.
	res map[string]*resource
	// shadowRes holds, per resource, what its shadow rules count: their
	// own sentinel-golang resource (flow windows, hotspot buckets) and
	// pacing, as if they were enforced; their jobs in flight are the real
	// ones less those they would have refused (resource.shadowOut). Its
	// admissions run under the real resource's lock.
	shadowRes map[string]*resource
	// inbound is the engine's own figure of every admitted job, per job,
	// for the system rules; shadowInbound the same of the jobs the shadow
	// rules would have admitted, for the shadow system rules' rate and
	// response time (their concurrency is inbound's less shadowOut).
	inbound, shadowInbound *stat.ResourceNode
	// shadowOut counts the jobs in flight the shadow rules would have
	// refused, over every resource (see resource.shadowOut).
	shadowOut atomic.Int64

	gpu gpus

	cpuSrc   CPUSource
	cpuEvery time.Duration
	cpuBits  atomic.Uint64 // float64 bits of the last CPU sample
	stop     chan struct{}
	done     chan struct{}
	closed   sync.Once
}

// resource is what a guarded resource keeps across rule swaps.
type resource struct {
	name string
	// idx is the resource's position in rules.Resources.
	idx     int
	wrapper *base.ResourceWrapper
	// node is sentinel-golang's node of the resource: the flow rules count
	// admissions there, weighted by cost.
	node *stat.ResourceNode
	// jobs counts per job, whatever its cost: admissions, completions,
	// failures and response times, as Stats shows them.
	jobs  *stat.ResourceNode
	stats *resStats
	// mu serialises admissions, making every threshold exact.
	mu sync.Mutex
	// inFlight counts admitted jobs not yet exited: checked and raised
	// under mu, lowered once by Token.Exit.
	inFlight atomic.Int64
	// shadowOut counts, on a real resource, its jobs in flight that its
	// shadow rules would have refused: the shadow concurrency rule counts
	// inFlight less these, so jobs admitted before the shadow rules came
	// (or adopted after a restart) count there too. Lowered at Exit.
	shadowOut atomic.Int64
	// sysShadowOut is the engine's count of such jobs over every resource,
	// for the shadow system concurrency rule.
	sysShadowOut *atomic.Int64
	// real is, on a shadow resource, the real one; nil on a real one.
	real *resource
	// pace is, per throttle rule (by its index in the resource's flow
	// list), the time in Unix nanoseconds of the last paced admission.
	// Guarded by mu (the real resource's, for a shadow one).
	pace map[int]int64
	// banName is the resource's key in the ban table: its name, with
	// shadowSuffix for the bans a shadow ban rule would impose.
	banName string
	// rt holds the job times of the last 10 s, for the p95; nil for a
	// shadow resource.
	rt *rtHistogram
}

// shadowSuffix marks the sentinel-golang resource and ban table key of a
// resource's shadow rules.
const shadowSuffix = "(shadow)"

// state is one compiled rule set: everything Guard needs, built at Apply.
type state struct {
	set     *rules.Set
	res     map[string]*resState
	gpuRule *ownRule // the GPU rule under reject; nil without one
}

// resState is one resource's compiled rules.
type resState struct {
	*resource
	rules    *rules.Resource // nil when the resource has no document
	needArgs bool            // hotspot or ban rules read the origin and size
	// Whether the system and hotspot slots have rules for this resource:
	// they are skipped otherwise, sparing their per-call work.
	hasSystem, hasHotspot bool

	system []*system.Rule // the system document's rules but CPU, shared by every resource
	// inbound is what the system rules read: the engine's figure of the
	// jobs admitted, or for a shadow state of those the shadow rules would
	// have admitted.
	inbound *stat.ResourceNode
	// cpuLimit is the system document's cpu_usage (0 is off), cpuRule its
	// rule, set in the state of the system document's mode.
	cpuLimit float64
	cpuRule  *ownRule

	// shadow is the resource's shadow rules (and the shadow system and GPU
	// rules), evaluated on each call the enforcing rules admit; nil when
	// there are none: the call then costs nothing more. isShadow marks the
	// shadow state itself.
	shadow   *resState
	isShadow bool

	concurrency     int64 // jobs in flight; 0 is off
	concurrencyRule *ownRule

	throttles []throttle

	ban      *rules.BanRule
	banRule  *ownRule
	sizeCost map[int]uint32
	sizeArgs map[int]any // boxed size strings, to spare an allocation per call
	// flowChecks are the flow rules as the GPU slot checks them while a
	// tighten pressure lasts.
	flowChecks []flowCheck
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
	opts.Clock = clock.Or(opts.Clock)
	if opts.CPU == nil {
		opts.CPU = newMachineCPU()
	}
	if opts.CPUInterval <= 0 {
		opts.CPUInterval = time.Second
	}
	if err := initSentinel(opts.Logger); err != nil {
		return nil, err
	}
	if err := sentinelRules.claim(opts.Namespace); err != nil {
		return nil, err
	}
	e := &Engine{
		log:           opts.Logger,
		clock:         opts.Clock,
		ns:            opts.Namespace,
		bans:          newBanTable(opts.Clock, banTableSize),
		blocked:       newBlockedLog(opts.BlockedLog),
		res:           make(map[string]*resource, len(rules.Resources)),
		inbound:       stat.NewResourceNode(opts.Namespace+"(inbound)", base.ResTypeCommon),
		shadowRes:     make(map[string]*resource, len(rules.Resources)),
		shadowInbound: stat.NewResourceNode(opts.Namespace+"(inbound)"+shadowSuffix, base.ResTypeCommon),
		cpuSrc:        opts.CPU,
		cpuEvery:      opts.CPUInterval,
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	for i, name := range rules.Resources {
		sname := e.sentinelName(name)
		e.res[name] = &resource{
			idx:     i,
			name:    name,
			wrapper: base.NewResourceWrapper(sname, base.ResTypeCommon, base.Inbound),
			node:    stat.GetOrCreateResourceNode(sname, base.ResTypeCommon),
			jobs:    stat.NewResourceNode(sname+"(jobs)", base.ResTypeCommon),
			stats:   newResStats(),
			pace:    make(map[int]int64),
			banName: name,
			rt:      newRTHistogram(),
		}
		e.res[name].sysShadowOut = &e.shadowOut
		shadow := e.shadowName(name)
		e.shadowRes[name] = &resource{
			idx:     i,
			name:    name,
			wrapper: base.NewResourceWrapper(shadow, base.ResTypeCommon, base.Inbound),
			node:    stat.GetOrCreateResourceNode(shadow, base.ResTypeCommon),
			jobs:    stat.NewResourceNode(shadow+"(jobs)", base.ResTypeCommon),
			stats:   e.res[name].stats, // shadow refusals are counted apart there
			pace:    make(map[int]int64),
			banName: name + shadowSuffix,
			real:    e.res[name],
		}
	}
	e.gpu.sources = make(map[string]*gpuSourceState)
	e.gpu.inPress = make(map[string]bool)
	e.chain = e.buildChain()
	if set == nil {
		set = &rules.Set{Resources: map[string]*rules.Resource{}}
	}
	if err := e.Apply(set); err != nil {
		sentinelRules.release(opts.Namespace, e.log)
		return nil, err
	}
	e.SampleCPU()
	go e.sampleLoop()
	return e, nil
}

// initSentinel initialises sentinel-golang once per process: logs through
// slog, no files written, cached time, load sampled for system rules, and
// the engine's hotspot controller registered.
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
			return
		}
		if err := hotspot.SetTrafficShapingGenerator(hotspotBehavior, newHotspotController); err != nil {
			sentinelInit.err = fmt.Errorf("register the hotspot controller: %w", err)
		}
	})
	return sentinelInit.err
}

// buildChain is sentinel-golang's flow and hotspot slots between the
// engine's own: ban, system, CPU and GPU first, concurrency after flow and
// throttle pacing last, so a paced call waits only once every other check
// has passed. Statistics are the engine's own (per job, plus the cost the
// flow rules count).
func (e *Engine) buildChain() *base.SlotChain {
	sc := base.NewSlotChain()
	sc.AddStatPrepareSlot(stat.DefaultResourceNodePrepareSlot)
	sc.AddRuleCheckSlot(&banSlot{e: e})
	sc.AddRuleCheckSlot(&systemSlot{e: e})
	sc.AddRuleCheckSlot(&cpuSlot{e: e})
	sc.AddRuleCheckSlot(&gpuSlot{e: e})
	sc.AddRuleCheckSlot(flow.DefaultSlot)
	sc.AddRuleCheckSlot(gated{RuleCheckSlot: hotspot.DefaultSlot, need: func(rs *resState) bool { return rs.hasHotspot }, order: hotspotSlotOrder})
	sc.AddRuleCheckSlot(tierRateSlot{})
	sc.AddRuleCheckSlot(concurrencySlot{})
	sc.AddRuleCheckSlot(&paceSlot{e: e})
	sc.AddStatSlot(&statSlot{e: e})
	sc.AddStatSlot(flow.DefaultStandaloneStatSlot)
	return sc
}

func (e *Engine) sentinelName(resource string) string { return e.ns + resource }

// shadowName is the sentinel-golang resource of a resource's shadow rules.
func (e *Engine) shadowName(resource string) string { return e.ns + resource + shadowSuffix }

// Apply replaces the rule set. set must come from rules.Build, so every rule
// is valid; Apply compiles everything first and then switches each rule
// kind, keeping the previous rules if sentinel-golang refuses any. Each
// resource keeps its lock, in-flight count and pacing: only the rules
// change.
func (e *Engine) Apply(set *rules.Set) error {
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	st := &state{set: set, res: make(map[string]*resState, len(rules.Resources))}
	s := set.Sentinel(e.sentinelName)
	sh := set.SentinelOf(rules.Shadow, e.shadowName)
	var cpuRule *ownRule
	if cpu := set.System.CPUUsage; cpu > 0 {
		cpuRule = &ownRule{id: "system/cpu_usage", kind: KindCPU, threshold: cpu}
	}
	sysShadow := set.System.Mode.IsShadow()
	// The system and GPU rules in shadow are every resource's.
	allShadow := len(sh.System) > 0 || sysShadow && cpuRule != nil || set.GPU != nil && set.GPU.Mode.IsShadow()
	for _, name := range rules.Resources {
		r := set.Resources[name]
		rs := e.compileResource(name, r, set.GPU, false)
		rs.system, rs.hasSystem, rs.inbound = s.System, len(s.System) > 0, e.inbound
		if cpuRule != nil && !sysShadow {
			rs.cpuLimit, rs.cpuRule = cpuRule.threshold, cpuRule
		}
		if allShadow || r.HasShadow() {
			srs := e.compileResource(name, r, set.GPU, true)
			srs.system, srs.hasSystem, srs.inbound = sh.System, len(sh.System) > 0, e.shadowInbound
			if cpuRule != nil && sysShadow {
				srs.cpuLimit, srs.cpuRule = cpuRule.threshold, cpuRule
			}
			rs.shadow = srs
		}
		st.res[name] = rs
	}
	if g := set.GPU; g != nil {
		st.gpuRule = &ownRule{id: "system/gpu", kind: KindGPU, threshold: g.MemoryUsedRatio}
	}
	s.Flow = append(s.Flow, sh.Flow...)
	s.Hotspot = append(s.Hotspot, sh.Hotspot...)
	// No admission runs while sentinel-golang's rules and the engine's own
	// change: every call sees the old rules or the new, never a mix (a flow
	// rule going from reject to throttle would otherwise be in force in
	// neither for a moment).
	for _, name := range rules.Resources {
		e.res[name].mu.Lock()
	}
	defer func() {
		for _, name := range rules.Resources {
			e.res[name].mu.Unlock()
		}
	}()
	if err := sentinelRules.load(e.ns, s); err != nil {
		return fmt.Errorf("apply rules: %w", err)
	}
	if prev := e.state.Load(); prev != nil {
		for name, rs := range st.res {
			e.res[name].resetPacingLocked(prev.res[name].throttles, rs.throttles)
			e.shadowRes[name].resetPacingLocked(prev.res[name].shadow.throttlesOrNil(), rs.shadow.throttlesOrNil())
		}
	}
	e.state.Store(st)
	e.evaluateGPUs() // the thresholds may have changed
	return nil
}

// throttlesOrNil is rs's throttles; none for a nil rs.
func (rs *resState) throttlesOrNil() []throttle {
	if rs == nil {
		return nil
	}
	return rs.throttles
}

// compileResource compiles the rules of r in one mode: the enforcing ones,
// or (shadow) the shadow ones, on the resource's shadow counterpart. The
// cost rule weighs the calls in both.
func (e *Engine) compileResource(name string, r *rules.Resource, gpu *rules.GPU, shadow bool) *resState {
	rs := &resState{resource: e.res[name], rules: r, isShadow: shadow}
	if shadow {
		rs.resource = e.shadowRes[name]
	}
	if r == nil {
		return rs
	}
	mine := func(m rules.Mode) bool { return m.IsShadow() == shadow }
	if gpu != nil && gpu.Action == rules.GPUTighten && (shadow || !gpu.Mode.IsShadow()) {
		// The GPU rule tightens the flow rules over the admissions of
		// their state. The enforcing state tightens the enforcing flow
		// rules under an enforcing GPU rule. The shadow state is what
		// enforcing every shadow rule would do: it tightens the shadow
		// flow rules under a GPU rule of either mode, and under a shadow
		// GPU rule the enforcing flow rules too (over the admissions the
		// shadow rules would have made).
		for i, f := range r.Flow {
			if !shadow && f.Mode.IsShadow() || shadow && !f.Mode.IsShadow() && !gpu.Mode.IsShadow() {
				continue
			}
			rs.flowChecks = append(rs.flowChecks, flowCheck{
				stat: windowStat(rs.node, time.Duration(f.Window)),
				tightRule: &ownRule{id: "system/gpu", resource: name, kind: KindGPU,
					threshold: f.Threshold * gpu.Factor, window: time.Duration(f.Window), tightened: fmt.Sprintf("%s/flow[%d]", name, i)},
			})
		}
	}
	for i, f := range r.Flow {
		if f.Behavior == rules.BehaviorThrottle && mine(f.Mode) {
			rs.throttles = append(rs.throttles, newThrottle(name, i, f))
		}
	}
	for _, h := range r.Hotspot {
		rs.hasHotspot = rs.hasHotspot || mine(h.Mode)
	}
	rs.needArgs = rs.hasHotspot || r.Ban != nil && mine(r.Ban.Mode)
	if r.Concurrency > 0 && mine(r.ConcurrencyMode) {
		rs.concurrency = int64(r.Concurrency)
		rs.concurrencyRule = &ownRule{id: name + "/concurrency", resource: name, kind: KindConcurrency, threshold: float64(r.Concurrency)}
	}
	if r.Ban != nil && mine(r.Ban.Mode) {
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
	// Origin identifies the client's address: its IPv4 address, or for
	// IPv6 the prefix holding its address in CIDR form
	// ("2001:db8:1:2::/64"), canonical either way. Hotspot rules on origin
	// and bans count anonymous calls by it.
	Origin string
	// Tenant is the identified caller's tenant (its API key's, or its
	// JWT's subject); empty for an anonymous caller (a Tenant equal to
	// Origin, as tenant.Identity gives an anonymous caller, counts as
	// anonymous too). Hotspot rules on tenant, tier rates and bans count
	// identified calls by it, never by their origin: tenants behind one NAT
	// do not share limits.
	Tenant string
	// Tier is the caller's service tier; empty for an anonymous caller
	// means tenant.AnonymousTier. It selects the tier rate (SetTierRates)
	// and labels the statistics.
	Tier string
	// Size is the request's size parameter (DDColor's model input size,
	// the longer side of a generated image); 0 when it has none.
	Size int
	// Cost is the call's weight against flow and hotspot thresholds; 0
	// takes it from the resource's cost rule (1 without one). It does not
	// weigh against concurrency, which counts jobs.
	Cost int
}

// tenant is the identified call's tenant; empty for an anonymous call.
func (c *Call) tenant() string {
	if c.Tenant == c.Origin {
		return ""
	}
	return c.Tenant
}

// subject is who the call's own limits and bans count: the tenant of an
// identified call, the origin of an anonymous one.
func (c *Call) subject() banSubject {
	if t := c.tenant(); t != "" {
		return banSubject{who: t, tenant: true}
	}
	return banSubject{who: c.Origin}
}

// tier is the call's tier, tenant.AnonymousTier for an anonymous call
// without one.
func (c *Call) tier() string {
	if c.Tier == "" && c.tenant() == "" {
		return tenant.AnonymousTier
	}
	return c.Tier
}

// Token is an admitted call. Exit it exactly once, when the work it guards
// ends.
type Token struct {
	res   *resState
	entry *base.SentinelEntry
	// args are the call's arguments as sentinel-golang's hotspot rules
	// read them (rules.ArgOrigin, rules.ArgSize, rules.ArgTenant) and the
	// Token itself (argToken).
	args   [4]any
	exited atomic.Bool
	// who is whom the call's bans count; tierRate the rate of its tier on
	// the resource, nil when the tier has none.
	who      banSubject
	tierRate *tierRate
	// start is when the job was admitted (after any pacing wait), by the
	// engine's clock: its response time runs from there.
	start time.Time
	// wait is how long pacing holds the call; paced records the pacing
	// slots it took, to give them back if the caller leaves while waiting.
	wait  time.Duration
	paced []pacedSlot
	// abandoned marks a call whose caller left while it was paced: it
	// counts as no job.
	abandoned bool
	// counted says the statistics slot counted the call in: only then is
	// it counted out at its end.
	counted bool
	// debits are the hotspot tokens the call took, given back if a later
	// check refuses it or its caller leaves while it is paced: a call that
	// is not admitted spends no one's bucket.
	debits   []hotspotDebit
	debitBuf [3]hotspotDebit
	// shadow is the call's admission by the resource's shadow rules, which
	// would have admitted it too: it ends with the call. nil when there
	// are no shadow rules, or they would have refused the call.
	shadow *Token
	// shadowOut says the shadow rules would have refused the call: it
	// counts in its resource's shadowOut until it ends.
	shadowOut bool
	// selfInbound is, on a shadow admission, 1 when the enforcing chain
	// has already counted the call in the engine's concurrency.
	selfInbound int64
	// Cost is the weight the call was admitted with.
	Cost int
}

// Exit records the end of the guarded work: its response time and, when
// err is not nil, a failure. It frees the call's place under the
// resource's concurrency. Calls after the first do nothing.
func (t *Token) Exit(err error) {
	if t == nil || !t.exited.CompareAndSwap(false, true) {
		return
	}
	t.res.inFlight.Add(-1)
	t.res.shadowDone(t)
	if err != nil {
		t.entry.SetError(err)
		t.res.stats.failed.Add(1)
	}
	t.res.stats.completed.Add(1)
	t.entry.Exit()
	if s := t.shadow; s != nil {
		if err != nil {
			s.entry.SetError(err)
		}
		s.entry.Exit()
	}
}

// Guard decides whether a call may go ahead. It returns a Token to Exit
// when the work ends, or a *Refusal saying which rule refused. A flow rule
// with behavior throttle may hold an admitted call for up to its max_queue;
// if ctx ends meanwhile the call is not admitted, Guard returns ctx's error
// and gives the pacing slot back when no later call has queued behind it.
func (e *Engine) Guard(ctx context.Context, c Call) (*Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := e.res[c.Resource]
	if r == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownResource, c.Resource)
	}
	tok := &Token{}
	rs, res, entry, shadowRef := e.admit(r, tok, &c)
	if blocked(res) {
		ref := e.refusal(rs, c, res.BlockError())
		entry.Exit()
		e.refused(rs, c, ref)
		return nil, ref
	}
	if shadowRef != nil {
		e.shadowRefused(rs.shadow, c, shadowRef)
	}
	tok.entry = entry
	if tok.wait > 0 {
		if err := e.paced(ctx, tok); err != nil {
			return nil, err
		}
	}
	tok.start = e.clock.Now()
	if tok.shadow != nil {
		tok.shadow.start = tok.start
	}
	r.stats.passed.Add(1)
	r.stats.tier(c.tier()).passed.Add(1)
	return tok, nil
}

// admit runs the slot chain under the resource's lock, with the rules in
// force once the lock is held, and counts an admitted call in flight before
// letting go. An admitted call then goes through the resource's shadow
// rules, if it has any: shadowRef is their refusal, which refuses nothing.
// The result is valid until entry exits.
func (e *Engine) admit(r *resource, tok *Token, c *Call) (rs *resState, res *base.TokenResult, entry *base.SentinelEntry, shadowRef *Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs = e.state.Load().res[r.name]
	sctx, entry := e.newEntry(r, rs, tok, c)
	res = e.chain.Entry(sctx)
	if blocked(res) {
		tok.refund()
		return rs, res, entry, nil
	}
	if rs.shadow != nil {
		// Before the call counts in flight: the shadow concurrency rules
		// count the real jobs in flight.
		if shadowRef = e.admitShadow(rs.shadow, tok, c); shadowRef != nil {
			tok.shadowOut = true
			r.shadowOut.Add(1)
			e.shadowOut.Add(1)
		}
	}
	r.inFlight.Add(1)
	return rs, res, entry, shadowRef
}

// admitShadow runs the slot chain of the shadow rules srs for a call the
// enforcing rules admitted (tok), as if they were enforced: their windows,
// buckets, pacing and bans count only the calls they would admit, their
// jobs in flight every real one but those they would have refused. It returns the refusal they would make, or nil and keeps their
// admission in tok.shadow until the call ends. The caller holds the real
// resource's lock.
func (e *Engine) admitShadow(srs *resState, tok *Token, c *Call) *Refusal {
	st := &Token{res: srs, who: tok.who, Cost: tok.Cost, args: tok.args}
	if tok.counted {
		st.selfInbound = 1
	}
	if srs.needArgs {
		if st.who.tenant {
			st.args[rules.ArgTenant] = st.who.who
		} else {
			st.args[rules.ArgOrigin] = c.Origin
		}
		st.args[rules.ArgSize] = srs.sizeArg(c.Size)
	}
	st.args[argToken] = st
	sctx := e.chain.GetPooledContext()
	sctx.Resource = srs.wrapper
	sctx.Input.BatchCount = uint32(tok.Cost)
	sctx.Input.Args = st.args[:]
	entry := base.NewSentinelEntry(sctx, srs.wrapper, e.chain)
	sctx.SetEntry(entry)
	st.entry = entry
	res := e.chain.Entry(sctx)
	if blocked(res) {
		st.refund()
		ref := e.refusal(srs, *c, res.BlockError())
		entry.Exit()
		return ref
	}
	tok.shadow = st
	return nil
}

// newEntry prepares sentinel-golang's entry of a call to r under the rules
// rs, with the call's cost (set in c and tok) and its arguments. The caller
// holds r.mu.
func (e *Engine) newEntry(r *resource, rs *resState, tok *Token, c *Call) (*base.EntryContext, *base.SentinelEntry) {
	tok.res = rs
	cost := uint32(c.Cost)
	if c.Cost <= 0 {
		cost = rs.costOf(c.Size)
	}
	c.Cost = int(cost)
	tok.Cost = c.Cost
	sctx := e.chain.GetPooledContext()
	sctx.Resource = r.wrapper
	sctx.Input.BatchCount = cost
	tok.args[argToken] = tok
	tok.who = c.subject()
	tok.tierRate = e.tierRates.Load().of(r.idx, c.tier())
	// Boxing the caller's identity costs an allocation: done only when a
	// rule reads it. An identified call has no origin for the rules and an
	// anonymous one no tenant, so that each rule sees only its callers.
	if rs.needArgs || tok.tierRate != nil {
		if tok.who.tenant {
			tok.args[rules.ArgTenant] = tok.who.who
		} else {
			tok.args[rules.ArgOrigin] = c.Origin
		}
	}
	if rs.needArgs {
		tok.args[rules.ArgSize] = rs.sizeArg(c.Size)
	}
	sctx.Input.Args = tok.args[:]
	entry := base.NewSentinelEntry(sctx, r.wrapper, e.chain)
	sctx.SetEntry(entry)
	return sctx, entry
}

// blocked reports whether the chain refused the call. A nil result (the
// chain recovered from a panic of sentinel-golang's) admits, as
// sentinel-golang's own Entry does.
func blocked(res *base.TokenResult) bool { return res != nil && res.IsBlocked() }

// Precheck refuses a call whose caller is banned from the resource (its
// tenant when identified, its origin when anonymous), before the caller
// has spent anything on it — before an upload is even read. It returns nil
// when Guard should decide; it counts a refusal as Guard does.
func (e *Engine) Precheck(c Call) *Refusal {
	rs := e.state.Load().res[c.Resource]
	who := c.subject()
	if rs == nil || rs.ban == nil || who.who == "" {
		return nil
	}
	left, banned := e.bans.banned(rs.banName, who)
	if !banned {
		return nil
	}
	ref := &Refusal{Resource: rs.name, Kind: KindBan, Rule: rs.banRule.id, Param: who.param(), Value: who.who,
		Threshold: rs.banRule.threshold, Window: rs.banRule.window, RetryAfter: left}
	e.refused(rs, c, ref)
	return ref
}

// shadowBan is the shadow ban rule of rs's resource; nil when it has none.
func (rs *resState) shadowBan() *resState {
	if rs.shadow == nil || rs.shadow.ban == nil {
		return nil
	}
	return rs.shadow
}

// Strike counts a refusal that the caller of c caused outside the engine
// — its own in-flight cap in the GPU dispatcher — toward its ban on c's
// resource (its tenant's when identified, its origin's when anonymous),
// and reports whether it started a ban. It does nothing for a resource
// without a ban rule.
func (e *Engine) Strike(c Call) bool {
	rs := e.state.Load().res[c.Resource]
	who := c.subject()
	if rs == nil || who.who == "" {
		return false
	}
	if srs := rs.shadowBan(); srs != nil {
		e.strike(srs, who)
	}
	if rs.ban == nil {
		return false
	}
	return e.strike(rs, who)
}

// Unban lifts the bans of who — an origin or a tenant — on resource, or on
// every resource when resource is empty, and forgets its refusals there.
// It returns how many bans it lifted.
func (e *Engine) Unban(resource, who string) int {
	n := 0
	for _, name := range rules.Resources {
		if resource != "" && resource != name {
			continue
		}
		for _, s := range [...]banSubject{{who: who}, {who: who, tenant: true}} {
			if e.bans.lift(name, s) {
				n++
				e.log.Info("ban lifted", slog.String("resource", name), slog.String(s.param(), s.who))
			}
			if e.bans.lift(name+shadowSuffix, s) {
				n++
				e.log.Info("ban lifted", slog.String("resource", name), slog.String(s.param(), s.who), slog.Bool("shadow", true))
			}
		}
	}
	return n
}

// argToken is where Guard passes the *Token (and through it the resState)
// to the engine's slots.
const argToken = 2

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
	tier := c.tier()
	rs.stats.tier(tier).refuse(ref.Kind)
	ref.Tenant, ref.Tier = c.tenant(), tier
	e.blocked.add(Blocked{
		Time: e.clock.Now(), Origin: c.Origin, Tenant: ref.Tenant, Tier: tier, Resource: rs.name, Size: c.Size,
		Rule: ref.Rule, Kind: ref.Kind, Value: ref.Value,
	})
	// Only the caller's own excess earns a ban: its per-origin (anonymous)
	// or per-tenant (identified) hotspot, and its tier's rate. The
	// resource-wide flow rule, the size hotspot and capacity refusals (GPU,
	// CPU, system, concurrency) hit honest clients too.
	own := ref.Kind == KindTierRate ||
		ref.Kind == KindHotspot && (ref.Param == rules.ParamOrigin || ref.Param == rules.ParamTenant)
	who := c.subject()
	if who.who == "" || !own {
		return
	}
	if rs.ban != nil {
		e.strike(rs, who)
	}
	// A shadow ban counts the refusals the enforcing rules make too: it
	// would ban whom they refuse often enough.
	if srs := rs.shadowBan(); srs != nil {
		e.strike(srs, who)
	}
}

// shadowRefused counts a refusal the shadow rules srs would have made of
// an admitted call: in the statistics (apart from the refusals), the log
// of recent refusals (marked shadow) and the log; the caller's own excess
// counts toward the shadow ban.
func (e *Engine) shadowRefused(srs *resState, c Call, ref *Refusal) {
	srs.stats.shadowRefuse(ref.Kind)
	tier := c.tier()
	ref.Tenant, ref.Tier = c.tenant(), tier
	e.blocked.add(Blocked{
		Time: e.clock.Now(), Origin: c.Origin, Tenant: ref.Tenant, Tier: tier, Resource: srs.name, Size: c.Size,
		Rule: ref.Rule, Kind: ref.Kind, Value: ref.Value, Shadow: true,
	})
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "shadow rule would refuse",
		slog.Bool("shadow", true),
		slog.String("ip", c.Origin),
		slog.String("tenant", ref.Tenant),
		slog.String("tier", tier),
		slog.String("resource", srs.name),
		slog.Int("size", c.Size),
		slog.String("rule", ref.Rule),
		slog.String("kind", string(ref.Kind)),
		slog.Float64("threshold", ref.Threshold))
	own := ref.Kind == KindHotspot && (ref.Param == rules.ParamOrigin || ref.Param == rules.ParamTenant)
	if who := c.subject(); srs.ban != nil && who.who != "" && own {
		e.strike(srs, who)
	}
}

// strike counts one refusal of who toward its ban (in rs's mode) and logs
// a ban it starts.
func (e *Engine) strike(rs *resState, who banSubject) bool {
	if !e.bans.refused(rs.banName, who, rs.ban) {
		return false
	}
	msg := who.param() + " banned"
	if rs.isShadow {
		msg = who.param() + " would be banned (shadow ban rule)"
	}
	e.log.Warn(msg,
		slog.Bool("shadow", rs.isShadow),
		slog.String("resource", rs.name),
		slog.String(who.param(), who.who),
		slog.Int("refusals", rs.ban.Blocks),
		slog.Duration("within", time.Duration(rs.ban.Within)),
		slog.Duration("for", time.Duration(rs.ban.For)))
	return !rs.isShadow
}

// Close stops the engine's sampling and takes its rules out of
// sentinel-golang, freeing its namespace.
func (e *Engine) Close() {
	e.closed.Do(func() {
		close(e.stop)
		<-e.done
		e.applyMu.Lock()
		defer e.applyMu.Unlock()
		sentinelRules.release(e.ns, e.log)
	})
}

// shadowDone counts out of shadowOut an ending call t the shadow rules
// would have refused.
func (r *resource) shadowDone(t *Token) {
	if t.shadowOut {
		r.shadowOut.Add(-1)
		r.sysShadowOut.Add(-1)
	}
}

// inFlightOf is the jobs in flight the concurrency rule of rs counts: the
// real ones, or for a shadow state the real ones the shadow rules would
// have admitted.
func (rs *resState) inFlightOf() int64 {
	if r := rs.resource.real; r != nil {
		return r.inFlight.Load() - r.shadowOut.Load()
	}
	return rs.inFlight.Load()
}
