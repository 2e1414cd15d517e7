package main

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"strings"
	"testing"
)

func TestTenantCapDefaultsToTheSlotsPlusOne(t *testing.T) {
	for _, tc := range []struct{ flag, backends, slots, want int }{
		{0, 1, 1, 2}, // make run: one simulator of one slot
		{0, 4, 2, 9},
		{3, 4, 2, 3}, // given: as given
	} {
		if got := tenantCap(tc.flag, tc.backends, tc.slots); got != tc.want {
			t.Errorf("tenantCap(%d, %d backends, %d slots) = %d, want %d", tc.flag, tc.backends, tc.slots, got, tc.want)
		}
	}
}

// TestSimulatorVRAMAppliesBeforeThePUTAnswers runs the README's
// GPU-pressure example as written: the request right after the PUT is
// refused, and the one right after the PUT that lowers the memory is
// served. The periodic sampling is an hour apart, so only the PUT's own
// sample can make it so.
func TestSimulatorVRAMAppliesBeforeThePUTAnswers(t *testing.T) {
	g := startServe(t, "--admin-token", "s3cret", "--gpu-interval", "1h")
	img, err := os.ReadFile("../../testdata/images/person.png")
	if err != nil {
		t.Fatal(err)
	}
	setVRAM := func(ratio string) {
		req, _ := http.NewRequest(http.MethodPut, g.base+"/api/simulator/vram", strings.NewReader(`{"used_ratio": `+ratio+`}`))
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("PUT /api/simulator/vram: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	colorize := func() (int, string) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		fw, _ := mw.CreateFormFile("image", "person.png")
		fw.Write(img)
		mw.Close()
		resp, err := http.Post(g.base+"/api/ddcolorize/person", mw.FormDataContentType(), &body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 200 {
			return 200, "an image" // not a body to print
		}
		return resp.StatusCode, string(out)
	}
	setVRAM("0.95")
	if code, body := colorize(); code != 503 || !strings.Contains(body, `"rule":"system/gpu"`) {
		t.Fatalf("right after the PUT of 0.95: %d %s", code, body)
	}
	var farm struct {
		Backends []struct {
			Pressure bool `json:"gpu_pressure"`
			Healthy  bool `json:"healthy"`
		} `json:"backends"`
	}
	getJSON(t, g.base+"/api/backends", &farm)
	if len(farm.Backends) != 1 || !farm.Backends[0].Pressure || !farm.Backends[0].Healthy {
		t.Fatalf("/api/backends under pressure: %+v", farm)
	}
	setVRAM("0.5")
	if code, body := colorize(); code != 200 {
		t.Fatalf("right after the PUT of 0.5: %d %s", code, body)
	}
}
