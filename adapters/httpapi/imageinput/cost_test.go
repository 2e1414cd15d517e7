package imageinput

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"runtime"
	"testing"

	"golang.org/x/image/draw"
)

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// gradient is a smooth w x h opaque image.
func gradient(w, h int) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			i := m.PixOffset(x, y)
			m.Pix[i+0] = uint8(255 * x / w)
			m.Pix[i+1] = uint8(255 * y / h)
			m.Pix[i+2] = uint8(255 * (x + y) / (w + h))
			m.Pix[i+3] = 0xff
		}
	}
	return m
}

// jpegHeader is SOI, optional segments, a frame header (SOFn) with the
// given (id, h<<4|v) components and a start of scan: all jpegQuarters reads.
func jpegHeader(sof byte, comps [][2]byte, segs ...[]byte) []byte {
	b := []byte{0xff, 0xd8}
	seg := func(marker byte, payload []byte) {
		b = append(b, 0xff, marker)
		b = binary.BigEndian.AppendUint16(b, uint16(2+len(payload)))
		b = append(b, payload...)
	}
	for _, s := range segs {
		seg(s[0], s[1:])
	}
	frame := []byte{8, 0, 16, 0, 16, byte(len(comps))}
	for _, c := range comps {
		frame = append(frame, c[0], c[1], 0)
	}
	seg(sof, frame)
	seg(0xda, []byte{0})
	return b
}

func TestDecodeQuartersFollowsTheDecoders(t *testing.T) {
	ycc420 := [][2]byte{{1, 0x22}, {2, 0x11}, {3, 0x11}}
	ycc444 := [][2]byte{{1, 0x11}, {2, 0x11}, {3, 0x11}}
	adobeRGB := append([]byte{0xee}, []byte("Adobe\x00\x64\x00\x00\x00\x00\x00")...) // transform 0
	interlaced := png16(t, 8, 8)
	interlaced[28] = 1 // only the header is read
	webp, err := os.ReadFile("../../../testdata/images/gopher.lossless.webp")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		format string
		data   []byte
		quarts int64 // bytes per pixel x 4
		copied bool
		cm     color.Model // for a PNG whose header DecodeConfig would refuse
	}{
		{"png 16-bit RGBA: NRGBA64", "png", png16(t, 8, 8), 32, false, nil},
		{"png 16-bit interlaced: plus half for the largest pass", "png", interlaced, 48, false, color.NRGBA64Model},
		{"png 8-bit RGBA", "png", encodePNG(t, gradient(8, 8)), 16, false, nil},
		{"png grey", "png", encodePNG(t, image.NewGray(image.Rect(0, 0, 8, 8))), 4, false, nil},
		{"png grey 16-bit", "png", encodePNG(t, image.NewGray16(image.Rect(0, 0, 8, 8))), 8, false, nil},
		{"png paletted", "png", encodePNG(t, image.NewPaletted(image.Rect(0, 0, 8, 8), color.Palette{color.Black, color.White})), 4, false, nil},
		{"jpeg colour from image/jpeg: 4:2:0", "jpeg", encodeJPEG(t, gradient(32, 32)), 6, true, nil},
		{"jpeg grey", "jpeg", encodeJPEG(t, image.NewGray(image.Rect(0, 0, 16, 16))), 4, false, nil},
		{"jpeg 4:4:4", "jpeg", jpegHeader(0xc0, ycc444), 12, true, nil},
		{"jpeg progressive 4:2:0: plus a coefficient per sample", "jpeg", jpegHeader(0xc2, ycc420), 6 + 24, true, nil},
		{"jpeg Adobe RGB: plus an RGBA copy", "jpeg", jpegHeader(0xc0, ycc444, adobeRGB), 12 + 16, false, nil},
		{"jpeg CMYK: plus black and a CMYK copy", "jpeg", jpegHeader(0xc0, append(ycc444, [2]byte{4, 0x11}), adobeRGB), 16 + 16, true, nil},
		{"jpeg cut before its frame: worst case", "jpeg", []byte{0xff, 0xd8, 0xff, 0xe0, 0x00}, worstJPEG, true, nil},
		{"webp lossless: NRGBA and its transform", "webp", webp, 32, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cm := tt.cm
			if tt.format == "png" && cm == nil {
				cfg, err := png.DecodeConfig(bytes.NewReader(tt.data))
				if err != nil {
					t.Fatal(err)
				}
				cm = cfg.ColorModel
			}
			q, copied := decodeQuarters(tt.format, tt.data, cm)
			if q != tt.quarts || copied != tt.copied {
				t.Errorf("decodeQuarters = %d/4 B/px copied=%v, want %d/4 copied=%v", q, copied, tt.quarts, tt.copied)
			}
		})
	}
}

// The issue's upload: a 6324x6324 16-bit PNG under the default limits is
// decoded row by row and costs a few MiB; interlaced, it is decoded whole
// and costs its NRGBA64 and largest Adam7 pass, never the old scaler's
// 260 MB of scratch on top.
func TestCostOfTheIssuesUpload(t *testing.T) {
	const side = 6324
	if got := streamedCost(side, side, DefaultLimits().MaxSide); got > 32<<20 {
		t.Errorf("streamed cost = %d MiB, want under 32", got>>20)
	}
	got := cost(side, side, 12*quarter, false, DefaultLimits().MaxSide)
	decoded := int64(side * side * 12)
	if got < decoded || got > decoded+decoded/10 {
		t.Errorf("interlaced cost = %d MiB, want between the decoded %d MiB and 10%% more", got>>20, decoded>>20)
	}
}

// Cost covers what Prepare allocates, and not wildly more. TotalAlloc sums
// every allocation, garbage included, so it bounds the peak from above.
// Not parallel: the process counter must see only this test.
func TestCostCoversWhatPrepareAllocates(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"png 16-bit 500x375 scaled", png16(t, 500, 375)},
		{"png 16-bit 750x175 shrunk and scaled", png16(t, 750, 175)},
		{"jpeg 600x450 scaled", encodeJPEG(t, gradient(600, 450))},
		{"jpeg 250x175 kept", encodeJPEG(t, gradient(250, 175))},
		{"png 8-bit 300x225 kept", encodePNG(t, gradient(300, 225))},
	}
	for _, tt := range tests {
		up, err := Inspect(bytes.NewReader(tt.data), Limits{MaxSide: 320})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := up.Prepare(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		runtime.ReadMemStats(&after)
		alloc := int64(after.TotalAlloc - before.TotalAlloc)
		if c := up.Cost(); c < alloc*9/10 || c > 3*alloc+3<<20 {
			t.Errorf("%s: Cost() = %.1f MB, Prepare allocated %.1f MB in all", tt.name, float64(c)/1e6, float64(alloc)/1e6)
		}
	}
}

// Scaling a large 16-bit PNG allocates its decoded image and little more:
// no full-size RGBA copy, no scratch of the destination's width by the
// source's height (3.8 MB here before; the decoded image is 1.5 MB).
func TestScalingMakesNoFullSizeCopy(t *testing.T) {
	up, err := Inspect(bytes.NewReader(png16(t, 500, 375)), Limits{MaxSide: 320})
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	img, err := up.Prepare()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	decoded := uint64(500 * 375 * 8)
	// 2 MiB: the 320x240 output, its PNG and the zlib reader and writer.
	if got := after.TotalAlloc - before.TotalAlloc; got > decoded+2<<20 {
		t.Errorf("Prepare allocated %.1f MB, want at most the decoded %.1f MB + 2 MiB", float64(got)/1e6, float64(decoded)/1e6)
	}
	if !img.Scaled || img.Width != 320 || img.Height != 240 {
		t.Errorf("Prepare = %dx%d scaled=%v, want 320x240 scaled", img.Width, img.Height, img.Scaled)
	}
}

// The box step averages exact blocks, and partial blocks at the edges.
func TestShrinkAveragesBlocks(t *testing.T) {
	m := image.NewGray(image.Rect(0, 0, 5, 3))
	copy(m.Pix, []uint8{
		0, 10, 20, 30, 40,
		50, 60, 70, 80, 90,
		100, 110, 120, 130, 140,
	})
	got := shrink(m, 2)
	if b := got.Bounds(); b.Dx() != 3 || b.Dy() != 2 {
		t.Fatalf("shrink 5x3 by 2 = %v, want 3x2", b)
	}
	want := [][]uint8{
		{30, 50, 65},    // (0+10+50+60)/4, (20+30+70+80)/4, (40+90)/2
		{105, 125, 140}, // (100+110)/2, (120+130)/2, 140
	}
	for y, row := range want {
		for x, v := range row {
			if c := got.RGBAAt(x, y); c.R != v || c.G != v || c.B != v || c.A != 0xff {
				t.Errorf("pixel (%d,%d) = %v, want grey %d", x, y, c, v)
			}
		}
	}
}

// Box then CatmullRom matches CatmullRom alone on smooth content, so the
// cheaper path does not change what ComfyUI sees.
func TestTwoStepScaleMatchesDirectScale(t *testing.T) {
	src := gradient(750, 500)
	w, h := fitSide(750, 500, 320)
	got := scale(src, w, h).(*image.RGBA)
	want := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.CatmullRom.Scale(want, want.Bounds(), src, src.Bounds(), draw.Src, nil)
	var sum, worst int
	for i := range got.Pix {
		d := int(got.Pix[i]) - int(want.Pix[i])
		d = max(d, -d)
		sum += d
		worst = max(worst, d)
	}
	if mean := float64(sum) / float64(len(got.Pix)); mean > 0.5 || worst > 3 {
		t.Errorf("two-step scale differs from direct CatmullRom: mean %.2f, worst %d levels; want <= 0.5 and <= 3", mean, worst)
	}
}

// The interlaced test image is valid and decoded whole.
func TestInterlacedPNG16(t *testing.T) {
	data := png16i(t, 37, 21, true)
	up, err := Inspect(bytes.NewReader(data), Limits{MaxSide: 16})
	if err != nil {
		t.Fatal(err)
	}
	if up.streamed() {
		t.Error("an interlaced PNG is streamed")
	}
	if _, err := up.Prepare(); err != nil {
		t.Fatal(err)
	}
	up, err = Inspect(bytes.NewReader(png16(t, 37, 21)), Limits{MaxSide: 16})
	if err != nil {
		t.Fatal(err)
	}
	if !up.streamed() {
		t.Error("a non-interlaced 16-bit PNG shrunk 2x is not streamed")
	}
}

// A 40-megapixel line costs its decoder rows, which are most of it.
func TestCostOfALineCountsItsRows(t *testing.T) {
	const w = 40_000_000
	if got := cost(w, 1, 8*quarter, false, 1280); got < w*8+2*w*8 {
		t.Errorf("cost of a %dx1 16-bit PNG = %d MiB, want at least its image and two rows, %d MiB", w, got>>20, (3*w*8)>>20)
	}
}
