package prometheus

import (
	lru "github.com/hashicorp/golang-lru/v2"
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/engine/dispatch"
)

// farmCollector turns the GPU farm's snapshot into const metrics when
// Prometheus scrapes: each backend's health and slots, the jobs waiting for
// a slot and the measured job time.
type farmCollector struct {
	stats func() dispatch.Stats

	up, slots, inUse, waiting, jobTime *prom.Desc
}

func newFarmCollector(stats func() dispatch.Stats) *farmCollector {
	return &farmCollector{
		stats:   stats,
		up:      desc("backend_up", "1 while the ComfyUI backend passes its health probe.", "backend"),
		slots:   desc("backend_slots", "Jobs the backend runs at once.", "backend"),
		inUse:   desc("backend_slots_in_use", "Slots of the backend running a job.", "backend"),
		waiting: desc("queue_waiting_jobs", "Jobs waiting in the fair queue for a GPU slot."),
		jobTime: desc("job_time_average_seconds", "The farm's measured average job time (a job holding a slot); 0 before any job."),
	}
}

func (c *farmCollector) Describe(ch chan<- *prom.Desc) {
	for _, d := range []*prom.Desc{c.up, c.slots, c.inUse, c.waiting, c.jobTime} {
		ch <- d
	}
}

func (c *farmCollector) Collect(ch chan<- prom.Metric) {
	st := c.stats()
	for _, b := range st.Backends {
		name := dispatch.ShownName(b.Name)
		send(ch, c.up, prom.GaugeValue, bit(b.Healthy), name)
		send(ch, c.slots, prom.GaugeValue, float64(b.Slots), name)
		send(ch, c.inUse, prom.GaugeValue, float64(b.InUse), name)
	}
	send(ch, c.waiting, prom.GaugeValue, float64(st.Queued))
	send(ch, c.jobTime, prom.GaugeValue, st.AvgJobTime.Seconds())
}

// recentOrigins bounds the client origins remembered as seen: an origin
// not among the last recentOrigins seen counts as new again.
const recentOrigins = 1 << 16

// clientCounter counts the client origins not seen recently: a jump in
// their rate is a jump in distinct client IPs (or IPv6 prefixes). Origins
// are never labels.
type clientCounter struct {
	seen     *lru.Cache[string, struct{}]
	newTotal prom.Counter
	recent   prom.GaugeFunc
}

func newClientCounter() *clientCounter {
	seen, _ := lru.New[string, struct{}](recentOrigins) // errors only on a size <= 0
	c := &clientCounter{seen: seen}
	c.newTotal = prom.NewCounter(prom.CounterOpts{
		Namespace: namespace,
		Name:      "client_origins_new_total",
		Help:      "Client origins (IPv4 addresses, IPv6 prefixes) that called and were not among the last 65536 seen: its rate is the rate of new clients.",
	})
	c.recent = prom.NewGaugeFunc(prom.GaugeOpts{
		Namespace: namespace,
		Name:      "client_origins_recent",
		Help:      "Distinct client origins among those remembered (at most 65536).",
	}, func() float64 { return float64(c.seen.Len()) })
	return c
}

// observe counts origin when it was not seen recently.
func (c *clientCounter) observe(origin string) {
	// Get refreshes a known origin, so a steady client stays among the
	// remembered (ContainsOrAdd alone would not, and would count it again
	// after enough newer origins).
	if _, ok := c.seen.Get(origin); ok {
		return
	}
	if ok, _ := c.seen.ContainsOrAdd(origin, struct{}{}); !ok {
		c.newTotal.Inc()
	}
}
