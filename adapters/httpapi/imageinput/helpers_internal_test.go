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
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		b.Write(binary.BigEndian.AppendUint32(nil, uint32(len(data))))
		c := append([]byte(typ), data...)
		b.Write(c)
		b.Write(binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(c)))
	}
	var ihdr [13]byte
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 16, 6 // 16 bits per channel, RGBA
	chunk("IHDR", ihdr[:])

	var z bytes.Buffer
	zw, err := zlib.NewWriterLevel(&z, zlib.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	row := make([]byte, 1+8*w)
	for x := range w {
		p := row[1+8*x:]
		p[0], p[2], p[4] = byte(x), byte(x>>1), byte(x>>2) // high bytes of R, G, B
		p[6], p[7] = 0xff, 0xff                            // opaque
	}
	write := func(p []byte) {
		if _, err := zw.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	write(row)
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
