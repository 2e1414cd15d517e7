package engine

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
)

// CPUSource reports the machine's CPU usage as a busy fraction in [0, 1]
// since its previous call.
type CPUSource interface {
	CPUUsage() (float64, error)
}

// machineCPU reads the whole machine's CPU times.
type machineCPU struct {
	prevBusy, prevTotal float64
}

func newMachineCPU() *machineCPU { return &machineCPU{} }

func (m *machineCPU) CPUUsage() (float64, error) {
	times, err := cpu.Times(false)
	if err != nil || len(times) == 0 {
		return 0, fmt.Errorf("read cpu times: %w", err)
	}
	t := times[0]
	idle := t.Idle + t.Iowait
	total := t.User + t.System + t.Idle + t.Nice + t.Iowait + t.Irq + t.Softirq + t.Steal
	busy := total - idle
	db, dt := busy-m.prevBusy, total-m.prevTotal
	m.prevBusy, m.prevTotal = busy, total
	if dt <= 0 {
		return 0, nil
	}
	return math.Min(math.Max(db/dt, 0), 1), nil
}

// SampleCPU reads the CPU source now; the engine also does so every
// Options.CPUInterval.
func (e *Engine) SampleCPU() {
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
