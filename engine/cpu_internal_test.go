package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
)

// fakeHost is a filesystem root with a cgroup tree, a fake clock and a fake
// process CPU time, which the tests move by hand. Its /proc/stat always says
// the whole machine is busy: no test may see it.
type fakeHost struct {
	mu     sync.Mutex
	fs     fstest.MapFS
	clock  *clock.Fake
	procNs time.Duration // the process's CPU time
	procOK bool
}

func newFakeHost(files map[string]string) *fakeHost {
	h := &fakeHost{fs: fstest.MapFS{}, clock: clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)), procOK: true}
	h.fs["proc/stat"] = &fstest.MapFile{Data: []byte("cpu  100 0 100 0 0 0 0 0 0 0\n")} // all busy, never idle
	for name, body := range files {
		h.fs[name] = &fstest.MapFile{Data: []byte(body)}
	}
	return h
}

func (h *fakeHost) env(numCPU int) cpuEnv {
	return cpuEnv{FS: h.fs, Clock: h.clock, NumCPU: numCPU, ProcessTime: h.processTime}
}

func (h *fakeHost) processTime() (time.Duration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.procOK {
		return 0, errors.New("no rusage")
	}
	return h.procNs, nil
}

// step advances the clock by wall and sets the cgroup's usage_usec and the
// process's CPU time.
func (h *fakeHost) step(wall time.Duration, cgroupDir string, usageUsec int64, proc time.Duration) {
	if cgroupDir != "" {
		h.fs[cgroupDir+"/cpu.stat"] = &fstest.MapFile{Data: []byte(cpuStat(usageUsec))}
	}
	h.mu.Lock()
	h.procNs = proc
	h.mu.Unlock()
	h.clock.Advance(wall)
}

func cpuStat(usageUsec int64) string {
	return "usage_usec " + strconv.FormatInt(usageUsec, 10) + "\nuser_usec 1\nsystem_usec 1\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
}

const svc = "sys/fs/cgroup/system.slice/sluice.service"

func TestOwnCPUMeasuresTheGatewaysShare(t *testing.T) {
	for _, tc := range []struct {
		name      string
		files     map[string]string
		numCPU    int
		cgroupDir string // where usage_usec is written; "" when the process is measured
		usage     int64  // usage_usec (or process µs) after one second
		want      float64
		source    string
		limit     float64
	}{{
		name: "quota of 1.5 CPUs",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":  cpuStat(0),
			svc + "/cpu.max":   "150000 100000\n",
		},
		numCPU: 8, cgroupDir: svc, usage: 750_000, want: 0.5, source: sourceCgroup, limit: 1.5,
	}, {
		name: "no quota: the CPUs the process may use",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":  cpuStat(0),
			svc + "/cpu.max":   "max 100000\n",
		},
		numCPU: 4, cgroupDir: svc, usage: 1_000_000, want: 0.25, source: sourceCgroup, limit: 4,
	}, {
		name: "a quota above the CPUs the process may use",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":  cpuStat(0),
			svc + "/cpu.max":   "800000 100000\n",
		},
		numCPU: 2, cgroupDir: svc, usage: 1_000_000, want: 0.5, source: sourceCgroup, limit: 2,
	}, {
		name: "an ancestor's quota is the tighter",
		files: map[string]string{
			"proc/self/cgroup":                   "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":                    cpuStat(0),
			svc + "/cpu.max":                     "max 100000\n",
			"sys/fs/cgroup/system.slice/cpu.max": "50000 100000\n",
		},
		numCPU: 8, cgroupDir: svc, usage: 250_000, want: 0.5, source: sourceCgroup, limit: 0.5,
	}, {
		name: "a container's own namespace root",
		files: map[string]string{
			"proc/self/cgroup":       "0::/\n",
			"sys/fs/cgroup/cpu.stat": cpuStat(0),
			"sys/fs/cgroup/cpu.max":  "200000 100000\n",
		},
		numCPU: 16, cgroupDir: "sys/fs/cgroup", usage: 500_000, want: 0.25, source: sourceCgroup, limit: 2,
	}, {
		name: "more than the limit is clamped to 1",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":  cpuStat(0),
			svc + "/cpu.max":   "100000 100000\n",
		},
		numCPU: 4, cgroupDir: svc, usage: 1_200_000, want: 1, source: sourceCgroup, limit: 1,
	}, {
		name: "no cpu.max (the host's root cgroup): the process",
		files: map[string]string{
			"proc/self/cgroup":       "0::/\n",
			"sys/fs/cgroup/cpu.stat": cpuStat(0),
		},
		numCPU: 4, usage: 1_000_000, want: 0.25, source: sourceProcess, limit: 4,
	}, {
		name: "no cpu.stat: the process",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.max":   "max 100000\n",
		},
		numCPU: 2, usage: 500_000, want: 0.25, source: sourceProcess, limit: 2,
	}, {
		name: "cgroup v1 only: the process",
		files: map[string]string{
			"proc/self/cgroup":                     "4:memory:/sluice\n2:cpuacct:/sluice\n1:cpu:/sluice\n",
			"sys/fs/cgroup/cpu/sluice/cpu.stat":    "nr_periods 0\n",
			"sys/fs/cgroup/cpuacct/cpuacct.usage":  "999999999999\n",
			"sys/fs/cgroup/cpu/sluice/cpu.max":     "max 100000\n",
			"sys/fs/cgroup/unified/sluice/cpu.max": "max 100000\n",
		},
		numCPU: 8, usage: 2_000_000, want: 0.25, source: sourceProcess, limit: 8,
	}, {
		name: "hybrid: a 0:: line but cgroup v2 is not at /sys/fs/cgroup",
		files: map[string]string{
			"proc/self/cgroup":                    "1:cpu:/\n0::/\n",
			"sys/fs/cgroup/unified/cgroup.procs":  "1\n",
			"sys/fs/cgroup/cpu/cpu.cfs_quota_us":  "-1\n",
			"sys/fs/cgroup/cpuacct/cpuacct.usage": "999999999999\n",
		},
		numCPU: 2, usage: 1_000_000, want: 0.5, source: sourceProcess, limit: 2,
	}, {
		name:   "no /proc/self/cgroup: the process",
		files:  map[string]string{},
		numCPU: 1, usage: 100_000, want: 0.1, source: sourceProcess, limit: 1,
	}, {
		name: "a malformed cpu.max: the process",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":  cpuStat(0),
			svc + "/cpu.max":   "lots\n",
		},
		numCPU: 4, usage: 1_000_000, want: 0.25, source: sourceProcess, limit: 4,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(tc.files)
			m := newOwnCPU(h.env(tc.numCPU))
			if m.source != tc.source || m.limit != tc.limit {
				t.Fatalf("source %q (%s), limit %v; want %q, limit %v", m.source, m.why, m.limit, tc.source, tc.limit)
			}
			if u, err := m.CPUUsage(); err != nil || u != 0 {
				t.Fatalf("first sample = %v, %v; want 0 (the starting point)", u, err)
			}
			// The other of the two counters moves too, and must not count.
			other := time.Duration(tc.usage) * time.Microsecond * 3
			if tc.cgroupDir != "" {
				h.step(time.Second, tc.cgroupDir, tc.usage, other)
			} else {
				h.step(time.Second, svc, tc.usage*3, time.Duration(tc.usage)*time.Microsecond)
			}
			u, err := m.CPUUsage()
			if err != nil || u != tc.want {
				t.Fatalf("after 1s with %dµs used: %v, %v; want %v", tc.usage, u, err, tc.want)
			}
		})
	}
}

func TestOwnCPUDividesByTheWallTimeBetweenSamples(t *testing.T) {
	h := newFakeHost(map[string]string{
		"proc/self/cgroup":              "0::/sluice\n",
		"sys/fs/cgroup/sluice/cpu.stat": cpuStat(5_000_000),
		"sys/fs/cgroup/sluice/cpu.max":  "200000 100000\n",
	})
	m := newOwnCPU(h.env(4))
	if _, err := m.CPUUsage(); err != nil {
		t.Fatal(err)
	}
	// 3 s of CPU time in 2 s of wall time on 2 CPUs: 75 %.
	h.step(2*time.Second, "sys/fs/cgroup/sluice", 8_000_000, 0)
	if u, err := m.CPUUsage(); err != nil || u != 0.75 {
		t.Fatalf("%v, %v; want 0.75", u, err)
	}
	// No wall time passed: the last value, and the starting point stays.
	h.step(0, "sys/fs/cgroup/sluice", 9_000_000, 0)
	if u, err := m.CPUUsage(); err != nil || u != 0.75 {
		t.Fatalf("with no wall time: %v, %v; want the last value 0.75", u, err)
	}
	// 1 s of CPU time (since 8 s) in 4 s on 2 CPUs: 12.5 %.
	h.step(4*time.Second, "sys/fs/cgroup/sluice", 9_000_000, 0)
	if u, err := m.CPUUsage(); err != nil || u != 0.125 {
		t.Fatalf("%v, %v; want 0.125", u, err)
	}
	// The counter going backwards (a new cgroup) is no negative usage.
	h.step(time.Second, "sys/fs/cgroup/sluice", 1_000, 0)
	if u, err := m.CPUUsage(); err != nil || u != 0 {
		t.Fatalf("a counter going back: %v, %v; want 0", u, err)
	}
}

func TestOwnCPUReportsReadErrors(t *testing.T) {
	h := newFakeHost(map[string]string{
		"proc/self/cgroup":              "0::/sluice\n",
		"sys/fs/cgroup/sluice/cpu.stat": cpuStat(0),
		"sys/fs/cgroup/sluice/cpu.max":  "max 100000\n",
	})
	m := newOwnCPU(h.env(2))
	delete(h.fs, "sys/fs/cgroup/sluice/cpu.stat")
	if _, err := m.CPUUsage(); err == nil || !strings.Contains(err.Error(), "cgroup v2") || !strings.Contains(err.Error(), "/sys/fs/cgroup/sluice/cpu.stat") {
		t.Fatalf("a vanished cpu.stat: %v", err)
	}

	ph := newFakeHost(nil)
	ph.procOK = false
	p := newOwnCPU(ph.env(2))
	if _, err := p.CPUUsage(); err == nil || !strings.Contains(err.Error(), "process") {
		t.Fatalf("a failing process time: %v", err)
	}
}

func TestOwnCPULogsItsSourceOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  map[string]any
	}{{
		name: "cgroup v2",
		files: map[string]string{
			"proc/self/cgroup": "0::/system.slice/sluice.service\n",
			svc + "/cpu.stat":  cpuStat(0),
			svc + "/cpu.max":   "150000 100000\n",
		},
		want: map[string]any{"msg": "cpu usage measured", "source": "cgroup v2", "cgroup": "/system.slice/sluice.service", "cpu_max": "150000 100000", "limit_cpus": 1.5},
	}, {
		name:  "process",
		files: map[string]string{"proc/self/cgroup": "1:cpu:/\n"},
		want:  map[string]any{"msg": "cpu usage measured", "source": "process", "reason": errNoCgroupV2.Error(), "limit_cpus": 4.0},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, nil))
			e, err := New(Options{Logger: log, CPU: newOwnCPU(newFakeHost(tc.files).env(4)), CPUInterval: time.Hour, Namespace: t.Name() + "/"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			e.SampleCPU()
			e.SampleCPU()
			var got []map[string]any
			for line := range strings.Lines(buf.String()) {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				if rec["msg"] == "cpu usage measured" {
					delete(rec, "time")
					delete(rec, "level")
					got = append(got, rec)
				}
			}
			if len(got) != 1 {
				t.Fatalf("logged %d times, want once: %s", len(got), buf.String())
			}
			for k, v := range tc.want {
				if got[0][k] != v {
					t.Errorf("%s = %v, want %v", k, got[0][k], v)
				}
			}
			if len(got[0]) != len(tc.want) {
				t.Errorf("logged %v, want exactly %v", got[0], tc.want)
			}
		})
	}
}

func TestDefaultCPUSourceIsTheOwnShare(t *testing.T) {
	m := newMachineCPU()
	if m.source != sourceCgroup && m.source != sourceProcess {
		t.Fatalf("source %q", m.source)
	}
	if m.limit <= 0 || math.IsInf(m.limit, 0) {
		t.Fatalf("limit %v CPUs", m.limit)
	}
	if _, err := m.CPUUsage(); err != nil {
		t.Fatal(err)
	}
}
