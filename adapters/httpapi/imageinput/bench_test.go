package imageinput_test

import (
	"bytes"
	"testing"

	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
)

func BenchmarkCheck(b *testing.B) {
	benches := []struct {
		name string
		data []byte
	}{
		{"jpeg 1024x768 kept", encJPEG(b, pattern(1024, 768))},
		{"jpeg 4000x3000 scaled", encJPEG(b, pattern(4000, 3000))},
		{"png 3000x1500 scaled", encPNG(b, pattern(3000, 1500))},
		{"png 800x600 kept", encPNG(b, pattern(800, 600))},
	}
	for _, bb := range benches {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.data)))
			for b.Loop() {
				if _, err := imageinput.Check(bytes.NewReader(bb.data), imageinput.DefaultLimits()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
