package imageinput_test

import (
	"bytes"
	"errors"
	"image/png"
	"testing"

	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
)

// FuzzCheck: Check never panics, refuses only with a 4xx *Error, and what it
// accepts is a PNG within the limits.
func FuzzCheck(f *testing.F) {
	small := encPNG(f, pattern(40, 30))
	f.Add(small)
	f.Add(small[:len(small)/2])
	f.Add(encPNG(f, pattern(80, 60))) // shrunk by 2: decoded row by row
	f.Add(encJPEG(f, pattern(50, 20)))
	f.Add(encJPEG(f, grayPattern(20, 50)))
	f.Add(readFile(f, "gopher.lossless.webp"))
	f.Add(encGIF(f))
	f.Add(pngHeader(100000, 100000))
	f.Add(pngHeader(0, 1))
	f.Add([]byte("RIFF\x10\x00\x00\x00WEBPVP8L"))
	f.Add([]byte{})

	// Small limits keep each run cheap; the code paths are the same.
	lim := imageinput.Limits{MaxBytes: 1 << 20, MaxPixels: 1 << 16, MaxSide: 32}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := imageinput.Check(bytes.NewReader(data), lim)
		if err != nil {
			var ie *imageinput.Error
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is %T, want *imageinput.Error", err, err)
			}
			if ie.Status < 400 || ie.Status > 499 || ie.Code == "" || ie.Msg == "" {
				t.Fatalf("error = %d %q %q, want a 4xx status, a code and a message", ie.Status, ie.Code, ie.Msg)
			}
			return
		}
		if img.Width < 1 || img.Height < 1 || img.Width > lim.MaxSide || img.Height > lim.MaxSide {
			t.Fatalf("accepted image is %dx%d, want 1..%d per side", img.Width, img.Height, lim.MaxSide)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(img.PNG))
		if err != nil {
			t.Fatalf("output is not a PNG: %v", err)
		}
		if cfg.Width != img.Width || cfg.Height != img.Height {
			t.Fatalf("output PNG is %dx%d, Image says %dx%d", cfg.Width, cfg.Height, img.Width, img.Height)
		}
	})
}
