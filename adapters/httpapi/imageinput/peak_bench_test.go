package imageinput

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkPrepareSixBig16BitPNGs is the load: six 6324x6324 16-bit
// PNGs (under the 40-megapixel cap, 320 MB each decoded whole) prepared at
// once. The plain file is decoded row by row; the same image Adam7-interlaced
// must be decoded whole by image/png, which is what the budget is for. Each
// runs without a budget and through budgets of 512 MiB and 1 GiB. It reports
// the peak heap (sampled every 200 µs from runtime/metrics), the process's
// peak RSS (Linux VmHWM, reset before each run) and its RSS once the load is
// over: after a GC, 5 s later (what the runtime's scavenger returned on its
// own) and after debug.FreeOSMemory. Run it alone:
//
//	go test -run '^$' -bench PrepareSixBig -benchtime 1x ./adapters/httpapi/imageinput/
func BenchmarkPrepareSixBig16BitPNGs(b *testing.B) {
	const side, n = 6324, 6
	files := map[bool][]byte{false: png16(b, side, side), true: png16i(b, side, side, true)}
	b.Logf("uploads: %dx%d 16-bit RGBA PNG of %d KB, interlaced %d KB", side, side, len(files[false])>>10, len(files[true])>>10)
	for _, bc := range []struct {
		name       string
		interlaced bool
		budget     *Budget
	}{
		{"row by row/no budget", false, nil},
		{"row by row/budget 512MiB", false, NewBudget(512<<20, time.Minute)},
		{"interlaced/no budget", true, nil},
		{"interlaced/budget 512MiB", true, NewBudget(512<<20, time.Minute)},
		{"interlaced/budget 1GiB", true, NewBudget(1<<30, time.Minute)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := files[bc.interlaced]
			ups := make([]*Upload, n)
			for i := range ups {
				up, err := Inspect(bytes.NewReader(data), Limits{Budget: bc.budget})
				if err != nil {
					b.Fatal(err)
				}
				ups[i] = up
			}
			b.Logf("Cost() per upload: %d MiB", ups[0].Cost()>>20)
			var peakHeap, peakRSS, rssAfterGC, rssLater, rssAfterFree float64
			for b.Loop() {
				b.StopTimer()
				runtime.GC()
				debug.FreeOSMemory()
				resetPeakRSS()
				stop := sampleHeap()
				b.StartTimer()

				var wg sync.WaitGroup
				errs := make([]error, n)
				for i, up := range ups {
					wg.Go(func() { _, errs[i] = up.PrepareContext(context.Background()) })
				}
				wg.Wait()

				b.StopTimer()
				peakHeap = max(peakHeap, float64(stop())/(1<<20))
				peakRSS = max(peakRSS, float64(procStatus("VmHWM"))/(1<<20))
				if err := errors.Join(errs...); err != nil {
					b.Fatal(err)
				}
				runtime.GC()
				rssAfterGC = float64(procStatus("VmRSS")) / (1 << 20)
				// What the runtime's background scavenger has given back
				// on its own a little later.
				time.Sleep(5 * time.Second)
				rssLater = float64(procStatus("VmRSS")) / (1 << 20)
				debug.FreeOSMemory()
				rssAfterFree = float64(procStatus("VmRSS")) / (1 << 20)
				b.StartTimer()
			}
			b.ReportMetric(peakHeap, "peak-heap-MiB")
			b.ReportMetric(peakRSS, "peak-RSS-MiB")
			b.ReportMetric(rssAfterGC, "RSS-after-GC-MiB")
			b.ReportMetric(rssLater, "RSS-5s-later-MiB")
			b.ReportMetric(rssAfterFree, "RSS-after-FreeOSMemory-MiB")
		})
	}
}

// sampleHeap samples the bytes held by heap objects until the returned
// function is called, which returns the largest sample.
func sampleHeap() (stop func() uint64) {
	done := make(chan struct{})
	peak := make(chan uint64, 1)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		var hi uint64
		for {
			metrics.Read(s)
			hi = max(hi, s[0].Value.Uint64())
			select {
			case <-done:
				peak <- hi
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		return <-peak
	}
}

// resetPeakRSS resets VmHWM (Linux 4.0+); elsewhere it does nothing and the
// peak RSS reported is the process's.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// procStatus returns a /proc/self/status size field in bytes, or 0.
func procStatus(field string) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if ok && name == field {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
