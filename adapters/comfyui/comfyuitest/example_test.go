package comfyuitest_test

import (
	"fmt"
	"net"
	"net/http"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

// The built-in simulator of `sluice serve`: a fake ComfyUI with field
// timings on a listener of the caller's.
func ExampleNewHandler() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	sim := comfyuitest.NewHandler(comfyuitest.Options{JobTime: comfyuitest.FieldJobTime})
	defer sim.Close()
	sim.Serve(l)

	resp, err := http.Get(sim.URL + "/api/prompt")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
	// Output: 200 OK
}
