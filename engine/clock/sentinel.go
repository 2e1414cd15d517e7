package clock

import (
	"time"

	"github.com/alibaba/sentinel-golang/util"
)

// Sentinel adapts c to sentinel-golang's clock, so that its sliding windows
// and hotspot buckets move with c. sentinel-golang's clock is process-wide
// (util.SetClock): tests that set it must not run in parallel.
func Sentinel(c Clock) util.Clock { return sentinelClock{c} }

type sentinelClock struct{ c Clock }

func (s sentinelClock) Now() time.Time { return s.c.Now() }

// Sleep waits d on the clock.
func (s sentinelClock) Sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	ch, _ := NewTimer(s.c, d)
	<-ch
}

func (s sentinelClock) CurrentTimeMillis() uint64 { return uint64(s.c.Now().UnixMilli()) }
func (s sentinelClock) CurrentTimeNano() uint64   { return uint64(s.c.Now().UnixNano()) }
