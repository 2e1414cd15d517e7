package imageinput

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/png"
	"math/rand/v2"
	"runtime"
	"testing"
)

// noisy returns a w x h image of type like's with random samples, so that
// image/png's encoder picks every filter type across its rows.
func noisy(like image.Image, w, h int, opaque bool) image.Image {
	rng := rand.New(rand.NewPCG(1, 2))
	r := image.Rect(0, 0, w, h)
	var pix []byte
	var m image.Image
	switch like.(type) {
	case *image.NRGBA64:
		n := image.NewNRGBA64(r)
		pix, m = n.Pix, n
	case *image.RGBA64:
		n := image.NewRGBA64(r)
		pix, m = n.Pix, n
	case *image.NRGBA:
		n := image.NewNRGBA(r)
		pix, m = n.Pix, n
	case *image.RGBA:
		n := image.NewRGBA(r)
		pix, m = n.Pix, n
	case *image.Gray:
		n := image.NewGray(r)
		pix, m = n.Pix, n
	case *image.Gray16:
		n := image.NewGray16(r)
		pix, m = n.Pix, n
	}
	for i := range pix {
		// Smooth runs with noise: real photographs are neither flat nor random.
		pix[i] = uint8(i/7) + uint8(rng.IntN(16))
	}
	if opaque { // premultiplied types must be opaque to be valid as random bytes
		switch m := m.(type) {
		case *image.RGBA64:
			for i := 6; i < len(m.Pix); i += 8 {
				m.Pix[i], m.Pix[i+1] = 0xff, 0xff
			}
		case *image.RGBA:
			for i := 3; i < len(m.Pix); i += 4 {
				m.Pix[i] = 0xff
			}
		}
	}
	return m
}

// rawPNG writes a PNG of raw (filter None) rows of colour type ct, with
// extra chunks (type + payload) after IHDR: what image/png's encoder never
// writes (grey with alpha, tRNS).
func rawPNG(t *testing.T, w, h, depth int, ct byte, row func(y int) []byte, extra ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	pngStart(&b, w, h, depth, ct, false)
	chunk := func(typ string, data []byte) { pngChunk(&b, typ, data) }
	for _, e := range extra {
		chunk(e[:4], []byte(e[4:]))
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	for y := range h {
		if _, err := zw.Write(append([]byte{0}, row(y)...)); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	// Two IDAT chunks: decoders must join them.
	half := z.Len() / 2
	chunk("IDAT", z.Bytes()[:half])
	chunk("IDAT", z.Bytes()[half:])
	chunk("IEND", nil)
	return b.Bytes()
}

func encodeFiltered(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	// The default level makes the encoder choose a filter per row.
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// shrinkPNG gives exactly what image/png followed by shrink gives.
func TestShrinkPNGMatchesDecodeThenShrink(t *testing.T) {
	const w, h = 67, 45 // not multiples of k: partial blocks at the edges
	pattern := func(bytesPerPixel int) func(y int) []byte {
		return func(y int) []byte {
			r := make([]byte, w*bytesPerPixel)
			for i := range r {
				r[i] = uint8(i*3 + y*5)
			}
			return r
		}
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"16-bit RGBA", encodeFiltered(t, noisy(&image.NRGBA64{}, w, h, false))},
		{"16-bit RGB", encodeFiltered(t, noisy(&image.RGBA64{}, w, h, true))},
		{"8-bit RGBA", encodeFiltered(t, noisy(&image.NRGBA{}, w, h, false))},
		{"8-bit RGB", encodeFiltered(t, noisy(&image.RGBA{}, w, h, true))},
		{"8-bit grey", encodeFiltered(t, noisy(&image.Gray{}, w, h, false))},
		{"16-bit grey", encodeFiltered(t, noisy(&image.Gray16{}, w, h, false))},
		{"8-bit grey with alpha", rawPNG(t, w, h, 8, 4, pattern(2))},
		{"16-bit grey with alpha", rawPNG(t, w, h, 16, 4, pattern(4))},
		{"8-bit RGB with a tRNS key", rawPNG(t, w, h, 8, 2, pattern(3), "tRNS\x00\x00\x00\x03\x00\x06")},
		{"16-bit RGB with a tRNS key", rawPNG(t, w, h, 16, 2, pattern(6), "tRNS\x00\x03\x06\x09\x0c\x0f")},
		{"8-bit grey with a tRNS key", rawPNG(t, w, h, 8, 0, pattern(1), "tRNS\x00\x0f")},
		{"16-bit grey with a tRNS key", rawPNG(t, w, h, 16, 0, pattern(2), "tRNS\x0f\x12")},
		{"with ancillary chunks", rawPNG(t, w, h, 8, 6, pattern(4), "tEXtComment\x00hello", "gAMA\x00\x00\xb1\x8f")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !pngStreamable(tt.data) {
				t.Fatal("pngStreamable = false")
			}
			want, err := png.Decode(bytes.NewReader(tt.data))
			if err != nil {
				t.Fatal(err)
			}
			_, wantGray := want.(*image.Gray)
			for _, k := range []int{2, 3, 7} {
				got, gray, err := shrinkPNG(tt.data, k)
				if err != nil {
					t.Fatalf("k=%d: %v", k, err)
				}
				if gray != wantGray {
					t.Errorf("k=%d: gray = %v, image/png decodes to %T", k, gray, want)
				}
				if exp := shrink(want, k); !bytes.Equal(got.Pix, exp.Pix) || got.Rect != exp.Rect {
					t.Errorf("k=%d: shrinkPNG differs from image/png + shrink", k)
				}
			}
		})
	}
}

// What image/png refuses, shrinkPNG refuses too.
func TestShrinkPNGRefusesCorruptData(t *testing.T) {
	good := encodeFiltered(t, noisy(&image.NRGBA64{}, 40, 30, false))
	idat := bytes.Index(good, []byte("IDAT"))
	tests := []struct {
		name string
		data func() []byte
	}{
		{"truncated", func() []byte { return good[:len(good)-30] }},
		{"no IEND", func() []byte { return good[:len(good)-12] }},
		{"bad chunk CRC", func() []byte { b := bytes.Clone(good); b[idat+10] ^= 0xff; return b }},
		{"bad filter type", func() []byte {
			return rawPNG(t, 4, 2, 8, 6, func(int) []byte { return make([]byte, 16) })
		}},
		{"too few rows", func() []byte {
			b := rawPNG(t, 4, 3, 8, 6, func(int) []byte { return make([]byte, 16) })
			binary.BigEndian.PutUint32(b[20:], 4) // the header now claims 4 rows
			binary.BigEndian.PutUint32(b[29:], crc32.ChecksumIEEE(b[12:29]))
			return b
		}},
		{"too many rows", func() []byte {
			b := rawPNG(t, 4, 3, 8, 6, func(int) []byte { return make([]byte, 16) })
			binary.BigEndian.PutUint32(b[20:], 2)
			binary.BigEndian.PutUint32(b[29:], crc32.ChecksumIEEE(b[12:29]))
			return b
		}},
		{"tRNS on RGBA", func() []byte {
			return rawPNG(t, 4, 2, 8, 6, func(int) []byte { return make([]byte, 16) }, "tRNS\x00\x01\x00\x02\x00\x03")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.data()
			if tt.name == "bad filter type" {
				// rawPNG writes filter 0; rewrite the stream with filter 9.
				data = rawPNGWithFilter(t, 9)
			}
			if _, err := png.Decode(bytes.NewReader(data)); err == nil {
				t.Fatal("image/png accepts the test data; the case tests nothing")
			}
			if _, _, err := shrinkPNG(data, 2); err == nil {
				t.Error("shrinkPNG accepted data image/png refuses")
			}
		})
	}
}

// rawPNGWithFilter is a 4x2 8-bit RGBA PNG whose rows carry filter type f.
func rawPNGWithFilter(t *testing.T, f byte) []byte {
	t.Helper()
	b := rawPNG(t, 4, 2, 8, 6, func(int) []byte { return make([]byte, 16) })
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	for range 2 {
		zw.Write(append([]byte{f}, make([]byte, 16)...))
	}
	zw.Close()
	end := bytes.Index(b, []byte("IDAT")) - 4
	out := bytes.Clone(b[:end])
	out = binary.BigEndian.AppendUint32(out, uint32(z.Len()))
	c := append([]byte("IDAT"), z.Bytes()...)
	out = append(out, c...)
	out = binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(c))
	return append(out, b[len(b)-12:]...) // IEND
}

// FuzzShrinkPNG: whatever image/png decodes, shrinkPNG decodes to the same
// block averages. (shrinkPNG may accept a few chunk orders image/png
// refuses; it never refuses what image/png accepts.)
func FuzzShrinkPNG(f *testing.F) {
	f.Add(encodeFiltered(f, noisy(&image.NRGBA64{}, 9, 7, false)))
	f.Add(encodeFiltered(f, noisy(&image.Gray{}, 9, 7, false)))
	f.Add(encodeFiltered(f, noisy(&image.RGBA{}, 9, 7, true)))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := png.DecodeConfig(bytes.NewReader(data))
		if err != nil || !pngStreamable(data) || cfg.Width*cfg.Height > 1<<16 {
			return
		}
		want, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		got, gray, err := shrinkPNG(data, 2)
		if err != nil {
			t.Fatalf("shrinkPNG refuses what image/png decodes: %v", err)
		}
		if _, isGray := want.(*image.Gray); gray != isGray {
			t.Errorf("gray = %v, image/png decodes to %T", gray, want)
		}
		if exp := shrink(want, 2); !bytes.Equal(got.Pix, exp.Pix) || got.Rect != exp.Rect {
			t.Error("shrinkPNG differs from image/png + shrink")
		}
	})
}

// Empty IDAT chunks cost nothing: a file padded with hundreds of thousands
// of them (each a valid 12-byte chunk) decodes as the plain one does,
// without memory per chunk.
func TestShrinkPNGEmptyIDATChunksCostNoMemory(t *testing.T) {
	const w, h, pad = 2600, 8, 200_000
	plain := rawPNG(t, w, h, 8, 0, func(y int) []byte { return bytes.Repeat([]byte{byte(y * 30)}, w) })
	// Put the padding before the first IDAT chunk (33 = signature + IHDR).
	var b bytes.Buffer
	b.Write(plain[:33])
	empty := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 0, 'I', 'D', 'A', 'T'}, crc32.ChecksumIEEE([]byte("IDAT")))
	for range pad {
		b.Write(empty)
	}
	b.Write(plain[33:])
	padded := b.Bytes()

	want, _, err := shrinkPNG(plain, 2)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got, _, err := shrinkPNG(padded, 2)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("padded with empty IDAT chunks: %v", err)
	}
	if !bytes.Equal(got.Pix, want.Pix) {
		t.Fatal("the padded file decodes to other pixels")
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("decoding %d empty IDAT chunks allocated %d KiB: memory per chunk", pad, alloc>>10)
	}
}

// A grey PNG with a tRNS chunk decodes to NRGBA, four times the bytes of
// its grey form: Cost charges for it, though the header alone says grey.
func TestCostChargesGreyWithTransparencyAsNRGBA(t *testing.T) {
	const w, h = 1000, 1000
	row := func(y int) []byte { return bytes.Repeat([]byte{byte(y)}, w) }
	cost := func(data []byte) int64 {
		t.Helper()
		up, err := Inspect(bytes.NewReader(data), DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		return up.Cost()
	}
	grey := cost(rawPNG(t, w, h, 8, 0, row))
	withTRNS := cost(rawPNG(t, w, h, 8, 0, row, "tRNS\x00\x07"))
	if withTRNS-grey < 3*w*h {
		t.Fatalf("Cost with tRNS %d, without %d: the NRGBA decode (%d bytes more) is not charged", withTRNS, grey, 3*w*h)
	}
	m, err := png.Decode(bytes.NewReader(rawPNG(t, w, h, 8, 0, row, "tRNS\x00\x07")))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*image.NRGBA); !ok {
		t.Fatalf("image/png decoded grey with tRNS to %T; the charge assumes *image.NRGBA", m)
	}
}
