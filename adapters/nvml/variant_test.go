package nvml

import (
	"fmt"
	"testing"
)

// Variant says "cgo" exactly when the sampler of this build reads NVML.
// Run under both builds (go test, and CGO_ENABLED=0 or -tags nonvml);
// cmd/sluice's TestReleaseBuildsNameTheirVariant builds both binaries.
func TestVariantMatchesBuild(t *testing.T) {
	want := map[string]string{"nvml.nvmlLibrary": "cgo", "nvml.noLibrary": "nonvml"}
	lib := fmt.Sprintf("%T", defaultLibrary())
	if w, ok := want[lib]; !ok || Variant != w {
		t.Fatalf("Variant = %q in a build whose library is %s (want %q)", Variant, lib, w)
	}
}
