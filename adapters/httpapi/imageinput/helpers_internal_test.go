package imageinput

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"testing"
)

// png16 returns a w x h 16-bit RGBA PNG written row by row, so that even a
// 6324x6324 image (320 MB decoded) costs a few hundred kilobytes and one row
// of memory to make: a gradient first row, then rows repeating it (filter
// Up with zero deltas), which compress about 1000:1 as in the file.
func png16(t testing.TB, w, h int) []byte {
	t.Helper()
	return png16i(t, w, h, false)
}

// adam7 are the interlace passes: x and y offset, x and y step.
var adam7 = [7][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}}

// png16i is png16, Adam7-interlaced when interlaced is true (then with
// all-zero pixels), which image/png must decode whole.
func png16i(t testing.TB, w, h int, interlaced bool) []byte {
	t.Helper()
	var b bytes.Buffer
	pngStart(&b, w, h, 16, 6, interlaced) // 16 bits per channel, RGBA
	chunk := func(typ string, data []byte) { pngChunk(&b, typ, data) }

	var z bytes.Buffer
	zw, err := zlib.NewWriterLevel(&z, zlib.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	write := func(p []byte) {
		if _, err := zw.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	row := make([]byte, 1+8*w)
	if interlaced {
		for _, p := range adam7 {
			pw, ph := (w-p[0]+p[2]-1)/p[2], (h-p[1]+p[3]-1)/p[3]
			if pw <= 0 || ph <= 0 {
				continue
			}
			for range ph {
				write(row[:1+8*pw])
			}
		}
		h = 0 // no progressive rows below
	}
	for x := range w {
		p := row[1+8*x:]
		p[0], p[2], p[4] = byte(x), byte(x>>1), byte(x>>2) // high bytes of R, G, B
		p[6], p[7] = 0xff, 0xff                            // opaque
	}
	if h > 0 {
		write(row)
	}
	clear(row)
	row[0] = 2 // filter Up: the same as the row above
	for range h - 1 {
		write(row)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return b.Bytes()
}

// pngStart writes the PNG signature and an IHDR chunk.
func pngStart(b *bytes.Buffer, w, h, depth int, ct byte, interlaced bool) {
	b.WriteString("\x89PNG\r\n\x1a\n")
	var ihdr [13]byte
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = byte(depth), ct
	if interlaced {
		ihdr[12] = 1
	}
	pngChunk(b, "IHDR", ihdr[:])
}

// pngChunk writes a chunk: its length, type, data and CRC.
func pngChunk(b *bytes.Buffer, typ string, data []byte) {
	b.Write(binary.BigEndian.AppendUint32(nil, uint32(len(data))))
	c := append([]byte(typ), data...)
	b.Write(c)
	b.Write(binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(c)))
}
