package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

// CPUSource reports the gateway's CPU usage as a busy fraction in [0, 1]
// since its previous call.
type CPUSource interface {
	CPUUsage() (float64, error)
}

// cgroupRoot is where cgroup v2 is mounted, relative to the filesystem root.
const cgroupRoot = "sys/fs/cgroup"

// Names of the two sources ownCPU can use, as logged.
const (
	sourceCgroup  = "cgroup v2"
	sourceProcess = "process"
)

// ownCPU measures the gateway's own CPU share, never the whole host's:
// the CPU time used by the gateway's cgroup v2 (cpu.stat usage_usec) over
// the wall time since the previous call, divided by the CPUs the cgroup may
// use (cpu.max quota/period, the smallest on the way up to the cgroup root,
// and never more than the CPUs the process may run on). Without cgroup v2,
// or without the cgroup's cpu.stat and cpu.max, it reads the process's own
// CPU time instead, over the CPUs the process may run on. It is safe for
// concurrent use.
type ownCPU struct {
	clock clock.Clock
	read  func() (time.Duration, error) // cumulative CPU time of what is measured

	// What was chosen at construction, for the log.
	source string  // sourceCgroup or sourceProcess
	cgroup string  // the cgroup's path under the cgroup root, with cgroup v2
	cpuMax string  // the cpu.max the limit came from ("" when none)
	limit  float64 // CPUs the time is divided by
	why    string  // why the process is measured, with sourceProcess

	announced sync.Once

	mu      sync.Mutex
	primed  bool
	prevCPU time.Duration
	prevAt  time.Time
	last    float64
}

// cpuEnv is what ownCPU reads: tests give it a fake filesystem, clock and
// process time.
type cpuEnv struct {
	// FS is the filesystem root: proc/self/cgroup and sys/fs/cgroup/... are
	// read from it.
	FS fs.FS
	// Clock measures the intervals between samples.
	Clock clock.Clock
	// NumCPU is how many CPUs the process may run on.
	NumCPU int
	// ProcessTime returns the CPU time (user + system) the process has used.
	ProcessTime func() (time.Duration, error)
}

// newMachineCPU returns the default CPU source: the gateway's own share of
// the CPUs, from its cgroup v2 or, failing that, from its process.
func newMachineCPU() *ownCPU {
	return newOwnCPU(cpuEnv{FS: os.DirFS("/"), Clock: clock.System{}, NumCPU: runtime.NumCPU(), ProcessTime: ProcessCPUTime})
}

// newOwnCPU picks the source once: the cgroup v2 of the process when its
// cpu.stat and cpu.max can be read, the process otherwise.
func newOwnCPU(env cpuEnv) *ownCPU {
	n := float64(max(env.NumCPU, 1))
	m := &ownCPU{clock: clock.Or(env.Clock), limit: n}
	cg, err := findCgroup(env.FS)
	if err != nil {
		m.source, m.why, m.read = sourceProcess, err.Error(), env.ProcessTime
		return m
	}
	m.source, m.cgroup, m.cpuMax = sourceCgroup, cg.path, cg.cpuMax
	m.limit = math.Min(n, cg.quota)
	m.read = func() (time.Duration, error) { return readCgroupUsage(env.FS, cg.dir) }
	return m
}

// CPUUsage returns the CPU time used since the previous call over the CPU
// time available in that wall time, clamped to [0, 1]. The first call only
// takes the starting point and returns 0.
func (m *ownCPU) CPUUsage() (float64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	used, err := m.read()
	if err != nil {
		return 0, fmt.Errorf("read cpu time (%s): %w", m.source, err)
	}
	now := m.clock.Now()
	if !m.primed {
		m.primed, m.prevCPU, m.prevAt = true, used, now
		return 0, nil
	}
	wall := now.Sub(m.prevAt)
	if wall <= 0 {
		return m.last, nil // no time has passed: keep the starting point
	}
	ratio := float64(used-m.prevCPU) / (float64(wall) * m.limit)
	m.prevCPU, m.prevAt = used, now
	m.last = math.Min(math.Max(ratio, 0), 1)
	return m.last, nil
}

// announce logs, once, which source is measured.
func (m *ownCPU) announce(log *slog.Logger) {
	m.announced.Do(func() {
		attrs := []any{slog.String("source", m.source), slog.Float64("limit_cpus", m.limit)}
		if m.source == sourceCgroup {
			attrs = append(attrs, slog.String("cgroup", m.cgroup), slog.String("cpu_max", m.cpuMax))
		} else {
			attrs = append(attrs, slog.String("reason", m.why))
		}
		log.Info("cpu usage measured", attrs...)
	})
}

// cgroupInfo is the process's cgroup v2, as newOwnCPU found it.
type cgroupInfo struct {
	path   string  // as in /proc/self/cgroup, e.g. "/system.slice/sluice.service"
	dir    string  // its folder in the FS, e.g. "sys/fs/cgroup/system.slice/sluice.service"
	cpuMax string  // the cpu.max that set quota, e.g. "200000 100000" or "max 100000"
	quota  float64 // CPUs allowed by cpu.max; +Inf for "max"
}

// errNoCgroupV2 says the process is not in a cgroup v2 hierarchy.
var errNoCgroupV2 = errors.New("no cgroup v2 (no 0:: line in /proc/self/cgroup)")

// findCgroup finds the process's cgroup v2 and the CPUs it may use: the
// smallest quota of its cpu.max and those of its ancestors. Its own cpu.stat
// and cpu.max must be readable: without cpu.max the cpu controller is not
// enabled there, or it is the host's root cgroup, which counts every
// process of the machine.
func findCgroup(fsys fs.FS) (cgroupInfo, error) {
	raw, err := fs.ReadFile(fsys, "proc/self/cgroup")
	if err != nil {
		return cgroupInfo{}, fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	var cg cgroupInfo
	found := false
	for line := range strings.Lines(string(raw)) {
		if p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			cg.path, found = p, true
			break
		}
	}
	if !found {
		return cgroupInfo{}, errNoCgroupV2
	}
	if !strings.HasPrefix(cg.path, "/") {
		return cgroupInfo{}, fmt.Errorf("/proc/self/cgroup: cgroup v2 path %q is not absolute", cg.path)
	}
	cg.dir = path.Join(cgroupRoot, cg.path)
	if !fs.ValidPath(cg.dir) || (cg.dir != cgroupRoot && !strings.HasPrefix(cg.dir, cgroupRoot+"/")) {
		return cgroupInfo{}, fmt.Errorf("/proc/self/cgroup: cgroup v2 path %q leaves %s", cg.path, "/"+cgroupRoot)
	}
	if _, err := readCgroupUsage(fsys, cg.dir); err != nil {
		return cgroupInfo{}, err
	}
	cg.quota = math.Inf(1)
	for dir := cg.dir; ; dir = path.Dir(dir) {
		text, quota, err := readCPUMax(fsys, dir)
		switch {
		case err == nil:
			if quota < cg.quota || cg.cpuMax == "" {
				cg.quota, cg.cpuMax = quota, text
			}
		case dir == cg.dir || !errors.Is(err, fs.ErrNotExist):
			return cgroupInfo{}, err
		}
		if dir == cgroupRoot {
			return cg, nil
		}
	}
}

// readCgroupUsage reads usage_usec from dir's cpu.stat.
func readCgroupUsage(fsys fs.FS, dir string) (time.Duration, error) {
	name := dir + "/cpu.stat"
	raw, err := fs.ReadFile(fsys, name)
	if err != nil {
		return 0, fmt.Errorf("read /%s: %w", name, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "usage_usec ")
		if !ok {
			continue
		}
		usec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || usec < 0 {
			return 0, fmt.Errorf("/%s: usage_usec %q is not a count of microseconds", name, v)
		}
		return time.Duration(usec) * time.Microsecond, nil
	}
	return 0, fmt.Errorf("/%s: no usage_usec", name)
}

// readCPUMax reads dir's cpu.max, "$QUOTA $PERIOD" or "max $PERIOD", as the
// number of CPUs it allows (+Inf for "max").
func readCPUMax(fsys fs.FS, dir string) (string, float64, error) {
	name := dir + "/cpu.max"
	raw, err := fs.ReadFile(fsys, name)
	if err != nil {
		return "", 0, fmt.Errorf("read /%s: %w", name, err)
	}
	text := strings.TrimSpace(string(raw))
	quota, period, ok := strings.Cut(text, " ")
	p, perr := strconv.ParseInt(period, 10, 64)
	if !ok || perr != nil || p <= 0 {
		return "", 0, fmt.Errorf("/%s: %q is not \"$QUOTA $PERIOD\"", name, text)
	}
	if quota == "max" {
		return text, math.Inf(1), nil
	}
	q, err := strconv.ParseInt(quota, 10, 64)
	if err != nil || q <= 0 {
		return "", 0, fmt.Errorf("/%s: quota %q is neither \"max\" nor a count of microseconds", name, quota)
	}
	return text, float64(q) / float64(p), nil
}

// cpuAnnouncer is a CPUSource that says, once, what it measures.
type cpuAnnouncer interface {
	announce(log *slog.Logger)
}

// SampleCPU reads the CPU source now; the engine also does so every
// Options.CPUInterval. The default source says in the log, at the first
// sample, what it measures.
func (e *Engine) SampleCPU() {
	if a, ok := e.cpuSrc.(cpuAnnouncer); ok {
		a.announce(e.log)
	}
	u, err := e.cpuSrc.CPUUsage()
	if err != nil {
		e.log.Debug("cpu sample failed", slog.Any("error", err))
		return
	}
	e.cpuBits.Store(math.Float64bits(u))
}

// CPUUsage returns the last CPU sample.
func (e *Engine) CPUUsage() float64 { return math.Float64frombits(e.cpuBits.Load()) }

func (e *Engine) sampleLoop() {
	defer close(e.done)
	t := time.NewTicker(e.cpuEvery)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			e.SampleCPU()
			e.evaluateGPUs() // samples age: a silent source stops counting
		}
	}
}
