package imageinput

import (
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"io"
)

// pngStreamable reports whether shrinkPNG decodes the PNG in data row by
// row: not interlaced, 8 or 16 bits per channel, grey, grey with alpha, RGB
// or RGBA. Paletted and sub-byte images decode to 1 byte per pixel with
// image/png anyway; interlaced ones cannot be read in row order.
func pngStreamable(data []byte) bool {
	if len(data) < 33 {
		return false
	}
	depth, ct, interlace := data[24], data[25], data[28]
	return interlace == 0 && (depth == 8 || depth == 16) && (ct == 0 || ct == 2 || ct == 4 || ct == 6)
}

// shrinkPNG decodes a PNG for which pngStreamable is true straight into
// k x k box averages, one row at a time, so that the full-size image is
// never held: a 6324x6324 16-bit PNG needs two 50 KB rows instead of
// 320 MB. The result is what image/png followed by shrink gives, pixel for
// pixel. gray says the image is 8-bit grey without transparency, which
// image/png would decode to *image.Gray.
//
// Like image/png it checks every chunk's CRC, the chunk order it relies on,
// the zlib checksum and that the data holds exactly the rows the header
// declares; it ignores ancillary chunks.
func shrinkPNG(data []byte, k int) (dst *image.RGBA, gray bool, err error) {
	w := int(binary.BigEndian.Uint32(data[16:20]))
	h := int(binary.BigEndian.Uint32(data[20:24]))
	depth, ct := int(data[24]), data[25]
	channels := [7]int{0: 1, 2: 3, 4: 2, 6: 4}[ct]
	bpp := channels * depth / 8

	var (
		trns   []byte
		idat   = -1 // offset of the first IDAT chunk
		inIDAT bool
		seenIE bool
	)
	for off := 8; !seenIE; {
		start := off
		if off+12 > len(data) {
			return nil, false, io.ErrUnexpectedEOF
		}
		n := int(binary.BigEndian.Uint32(data[off:]))
		if n < 0 || n > len(data)-off-12 {
			return nil, false, io.ErrUnexpectedEOF
		}
		typ, payload := string(data[off+4:off+8]), data[off+8:off+8+n]
		if crc32.ChecksumIEEE(data[off+4:off+8+n]) != binary.BigEndian.Uint32(data[off+8+n:]) {
			return nil, false, errors.New("png: invalid format: invalid checksum")
		}
		off += 12 + n
		switch typ {
		case "tRNS":
			if idat >= 0 {
				return nil, false, errors.New("png: invalid format: chunk out of order")
			}
			if ct == 4 || ct == 6 {
				return nil, false, errors.New("png: invalid format: tRNS, color type mismatch")
			}
			if len(payload) != 2*channels {
				return nil, false, errors.New("png: invalid format: bad tRNS length")
			}
			trns = payload
		case "IDAT":
			if idat >= 0 && !inIDAT {
				continue // trailing IDAT chunks are ignored, as image/png does
			}
			if idat < 0 {
				idat = start
			}
			inIDAT = true
			continue
		case "IEND":
			if idat < 0 {
				return nil, false, errors.New("png: invalid format: chunk out of order")
			}
			seenIE = true
		}
		inIDAT = false
	}

	// The IDAT payloads are read where they lie, whatever their number:
	// nothing is allocated per chunk (a file of millions of empty chunks
	// costs no memory).
	zr, err := zlib.NewReader(&idatReader{data: data, off: idat})
	if err != nil {
		return nil, false, err
	}
	defer zr.Close()

	bx := newBox(w, h, k)
	rowLen := 1 + w*bpp
	cr, pr := make([]byte, rowLen), make([]byte, rowLen)
	for range h {
		if _, err := io.ReadFull(zr, cr); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, false, err
		}
		if err := unfilter(cr[0], cr[1:], pr[1:], bpp); err != nil {
			return nil, false, err
		}
		addRow(bx, cr[1:], w, depth, ct, trns)
		bx.endRow()
		cr, pr = pr, cr
	}
	// Reading to the end verifies the zlib checksum.
	var one [1]byte
	n, err := io.ReadFull(zr, one[:])
	if n != 0 {
		return nil, false, errors.New("png: invalid format: too much pixel data")
	}
	if !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	return bx.dst, ct == 0 && depth == 8 && trns == nil, nil
}

// unfilter reverses a row's PNG filter in place; pr is the previous row,
// unfiltered (zero before the first).
func unfilter(filter byte, cdat, pdat []byte, bpp int) error {
	switch filter {
	case 0:
	case 1: // Sub
		for i := bpp; i < len(cdat); i++ {
			cdat[i] += cdat[i-bpp]
		}
	case 2: // Up
		for i, p := range pdat {
			cdat[i] += p
		}
	case 3: // Average
		for i := range bpp {
			cdat[i] += pdat[i] / 2
		}
		for i := bpp; i < len(cdat); i++ {
			cdat[i] += uint8((int(cdat[i-bpp]) + int(pdat[i])) / 2)
		}
	case 4: // Paeth
		for i := range cdat {
			var a, c int
			if i >= bpp {
				a, c = int(cdat[i-bpp]), int(pdat[i-bpp])
			}
			cdat[i] += uint8(paeth(a, int(pdat[i]), c))
		}
	default:
		return fmt.Errorf("png: invalid format: bad filter type %d", filter)
	}
	return nil
}

// paeth is the PNG Paeth predictor of a (left), b (up) and c (up left).
func paeth(a, b, c int) int {
	p := a + b - c
	pa, pb, pc := abs(p-a), abs(p-b), abs(p-c)
	switch {
	case pa <= pb && pa <= pc:
		return a
	case pb <= pc:
		return b
	}
	return c
}

func abs(x int) int { return max(x, -x) }

// addRow adds one unfiltered row to bx as premultiplied 16-bit colour,
// exactly as image/png's decoded image reports it through RGBA64At: 8-bit
// values widened by x0x101, straight alpha premultiplied, a tRNS colour key
// made fully transparent.
func addRow(bx *box, row []byte, w, depth int, ct byte, trns []byte) {
	sample := func(i int) uint32 { // i-th sample of the row, 16-bit
		if depth == 8 {
			return uint32(row[i]) * 0x101
		}
		return uint32(row[2*i])<<8 | uint32(row[2*i+1])
	}
	key := func(c int) uint32 { // c-th sample of the tRNS key, at depth
		v := uint32(trns[2*c])<<8 | uint32(trns[2*c+1])
		if depth == 8 {
			return uint32(uint8(v)) * 0x101
		}
		return v
	}
	for x := range w {
		var r, g, b, a uint32
		switch ct {
		case 0:
			r, a = sample(x), 0xffff
			g, b = r, r
			if trns != nil && r == key(0) {
				a = 0
			}
		case 2:
			r, g, b, a = sample(3*x), sample(3*x+1), sample(3*x+2), 0xffff
			if trns != nil && r == key(0) && g == key(1) && b == key(2) {
				a = 0
			}
		case 4:
			r, a = sample(2*x), sample(2*x+1)
			g, b = r, r
		case 6:
			r, g, b, a = sample(4*x), sample(4*x+1), sample(4*x+2), sample(4*x+3)
		}
		if a != 0xffff {
			r, g, b = r*a/0xffff, g*a/0xffff, b*a/0xffff
		}
		bx.add(x, r, g, b, a)
	}
}

// idatReader reads the payloads of the run of IDAT chunks that starts at
// off in data, in place. shrinkPNG has checked those chunks' lengths and
// CRCs.
type idatReader struct {
	data []byte
	off  int
	rest []byte
}

func (r *idatReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.off+12 > len(r.data) || string(r.data[r.off+4:r.off+8]) != "IDAT" {
			return 0, io.EOF
		}
		n := int(binary.BigEndian.Uint32(r.data[r.off:]))
		r.rest = r.data[r.off+8 : r.off+8+n]
		r.off += 12 + n
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}
