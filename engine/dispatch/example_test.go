package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
)

func Example() {
	d, err := dispatch.New(dispatch.Config{
		Backends: []dispatch.BackendConfig{{Name: "gpu0", Slots: 2}, {Name: "gpu1", Slots: 2}},
		MaxWait:  10 * time.Second,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	lease, err := d.Acquire(context.Background(), dispatch.Request{Tenant: "203.0.113.7", Cost: 1})
	var refusal *dispatch.Refusal
	if errors.As(err, &refusal) {
		fmt.Println("refused:", refusal.Reason, "retry after", refusal.RetryAfter)
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("run on", lease.Backend())
	lease.Release(3 * time.Second) // when the GPU job ends
	fmt.Println("average job time", d.Stats().AvgJobTime)

	d.SetHealthy("gpu0", false)
	d.SetHealthy("gpu1", false)
	_, err = d.Acquire(context.Background(), dispatch.Request{Tenant: "203.0.113.7", Cost: 1})
	fmt.Println(err)
	// Output:
	// run on gpu0
	// average job time 3s
	// dispatch: no healthy backend; retry after 750ms
}
