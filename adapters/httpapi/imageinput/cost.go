package imageinput

import (
	"bytes"
	"encoding/binary"
	"image/color"
	"math"
)

// Bytes per pixel are counted in quarters: JPEG 4:2:0 and lossy WebP decode to
// 1.5 bytes per pixel, JPEG 4:1:0 to 1.25.
const quarter = 4

// decodeQuarters is how many quarter-bytes per pixel the standard decoder
// holds at its peak while decoding u, read from the header alone. It follows
// what image/png, image/jpeg and golang.org/x/image/webp allocate:
//
//   - PNG: the decoded image (1 B/px grey or paletted, 2 grey 16-bit, 4 RGBA
//     or NRGBA, 8 RGBA64 or NRGBA64 for 16-bit colour); interlaced images
//     also hold the largest Adam7 pass, half the image.
//   - JPEG: the YCbCr planes at their subsampling (3 B/px 4:4:4, 2 for 4:2:2
//     and 4:4:0, 1.5 for 4:2:0 and 4:1:1, 1.25 for 4:1:0, 1 for grey), plus a
//     4 B/px RGBA copy for Adobe RGB files and 1+4 B/px for CMYK; progressive
//     files also hold every DCT coefficient, 4 bytes per sample.
//   - WebP: lossy decodes to 1.5 B/px YCbCr; lossless to 4 B/px NRGBA plus
//     up to as much again for its colour-indexing transform; an alpha plane is
//     decoded through the lossless decoder too.
//
// It also says whether the decoded image is YCbCr or CMYK, which the PNG
// encoder cannot read from its pixel slice, so an image kept at its size is
// copied to RGBA first. An unrecognised layout is charged the worst case of
// its format.
func decodeQuarters(format string, data []byte, cm color.Model) (q int64, copied bool) {
	switch format {
	case "png":
		return pngQuarters(data, cm), false
	case "jpeg":
		return jpegQuarters(data)
	case "webp":
		return webpQuarters(data)
	}
	return worstJPEG, true
}

// worstJPEG is an Adobe RGB 4:4:4 progressive JPEG.
const worstJPEG = (3 + 4 + 12) * quarter

func pngQuarters(data []byte, cm color.Model) int64 {
	var bpp int64
	switch cm {
	case color.GrayModel:
		bpp = 1
	case color.Gray16Model:
		bpp = 2
	case color.RGBAModel, color.NRGBAModel:
		bpp = 4
	case color.RGBA64Model, color.NRGBA64Model:
		bpp = 8
	default:
		if _, ok := cm.(color.Palette); ok {
			bpp = 1
		} else {
			bpp = 8
		}
	}
	if (cm == color.GrayModel || cm == color.Gray16Model) && pngHasTRNS(data) {
		// png.DecodeConfig stops at IHDR; image/png decodes grey with a
		// tRNS chunk to NRGBA (8-bit and less) or NRGBA64 (16-bit).
		bpp *= 4
	}
	q := bpp * quarter
	// The interlace method is the last byte of IHDR, which Inspect has
	// already found where the PNG specification puts it.
	if len(data) > 28 && data[28] == 1 {
		q += q / 2
	}
	return q
}

// jpegQuarters reads the markers up to the first scan: the frame header
// (SOFn) for the components, their sampling and whether the file is
// progressive, and APP0/APP14 for whether 3 components are RGB.
func jpegQuarters(data []byte) (int64, bool) {
	var (
		jfif, adobe bool
		transform   byte   = 0xff
		comps       []byte // id, sampling (h<<4|v) per component
		progressive bool
	)
	i := 2 // after SOI
	for i+4 <= len(data) {
		if data[i] != 0xff {
			return worstJPEG, true
		}
		marker := data[i+1]
		if marker == 0xff { // fill byte
			i++
			continue
		}
		if marker >= 0xd0 && marker <= 0xd9 || marker == 0x01 { // no length
			i += 2
			continue
		}
		n := int(binary.BigEndian.Uint16(data[i+2:]))
		if n < 2 || i+2+n > len(data) {
			return worstJPEG, true
		}
		seg := data[i+4 : i+2+n]
		switch {
		case marker == 0xe0 && bytes.HasPrefix(seg, []byte("JFIF\x00")):
			jfif = true
		case marker == 0xee && bytes.HasPrefix(seg, []byte("Adobe")) && len(seg) >= 12:
			adobe, transform = true, seg[11]
		case marker == 0xc0 || marker == 0xc1 || marker == 0xc2:
			if len(seg) < 6 || len(seg) < 6+3*int(seg[5]) {
				return worstJPEG, true
			}
			progressive = marker == 0xc2
			for c := range int(seg[5]) {
				comps = append(comps, seg[6+3*c], seg[6+3*c+1])
			}
		case marker == 0xda: // start of scan: the headers are over
			return jpegFrameQuarters(comps, progressive, jfif, adobe, transform)
		}
		i += 2 + n
	}
	return worstJPEG, true
}

func jpegFrameQuarters(comps []byte, progressive, jfif, adobe bool, transform byte) (int64, bool) {
	n := len(comps) / 2
	if n != 1 && n != 3 && n != 4 {
		return worstJPEG, true
	}
	var hmax, vmax int64 = 1, 1
	for c := range n {
		hmax = max(hmax, int64(comps[2*c+1]>>4))
		vmax = max(vmax, int64(comps[2*c+1]&0x0f))
	}
	// Samples per pixel over all components, in quarters.
	var samples int64
	for c := range n {
		h, v := int64(comps[2*c+1]>>4), int64(comps[2*c+1]&0x0f)
		samples += quarter * h * v / (hmax * vmax)
	}
	q, copied := samples, true
	switch n {
	case 1:
		q, copied = quarter, false // image.Gray
	case 3:
		rgb := !jfif && (adobe && transform == 0 || comps[0] == 'R' && comps[2] == 'G' && comps[4] == 'B')
		if rgb {
			q, copied = q+4*quarter, false // converted into a new image.RGBA
		}
	case 4:
		q += 4 * quarter // combined into a new image.CMYK
	}
	if progressive {
		q += 4 * samples // one int32 per sample
	}
	return q, copied
}

func webpQuarters(data []byte) (int64, bool) {
	const alpha = 10*quarter + quarter/2 // lossy 1.5 + alpha 1 + lossless scratch 8
	if len(data) < 21 {
		return alpha, true
	}
	switch string(data[12:16]) {
	case "VP8 ":
		return quarter + quarter/2, true
	case "VP8L":
		return 8 * quarter, false
	}
	// VP8X, the extended format: its flags say whether there is alpha, not
	// whether the image is lossy or lossless.
	if data[20]&0x10 != 0 {
		return alpha, true
	}
	return 8 * quarter, true
}

// cost is the memory Prepare holds at its peak for an upload of w x h that
// the decoder holds at q quarter-bytes per pixel: the decoded image, what
// scaling allocates and the PNG being encoded. copied says whether an image
// kept at its size is copied to RGBA before encoding.
func cost(w, h int, q int64, copied bool, maxSide int) int64 {
	px := int64(w) * int64(h)
	if px > 1<<40 { // only with a MaxPixels far past any decoder's reach
		return math.MaxInt64
	}
	c := px * q / quarter
	ow, oh := w, h
	if max(w, h) > maxSide {
		ow, oh = fitSide(w, h, maxSide)
		if k := shrinkFactor(max(w, h), maxSide); k > 1 {
			sw, sh := (w+k-1)/k, (h+k-1)/k
			c += int64(sw)*int64(sh)*4 + int64(sw)*32 // shrunk RGBA + one row of sums
		}
	} else if copied {
		c += px * 4 // encodable: YCbCr and CMYK are copied to RGBA
	}
	out := int64(ow) * int64(oh)
	c += out * 4 // the scaled RGBA
	c += out     // a grey copy
	// The encoded PNG is at most about its raw size, and bytes.Buffer holds
	// the old and the doubled slice while it grows; zlib's writer about 1 MiB.
	c += out * 6
	// PNG decoding holds the current and previous row, up to 8 B/px each:
	// nothing for usual shapes, most of the cost for a 40-megapixel line.
	c += 2 * (1 + int64(w)*8)
	return c + 2<<20
}

// streamedCost is cost for a PNG that shrinkPNG decodes row by row: its
// two rows and zlib's state instead of the decoded image.
func streamedCost(w, h, maxSide int) int64 {
	return cost(w, h, 0, false, maxSide) + 64<<10
}

// pngHasTRNS reports whether a PNG has a tRNS chunk before its image data.
// Inspect has already checked the signature and IHDR.
func pngHasTRNS(data []byte) bool {
	for off := 8; off+8 <= len(data); {
		n := int64(binary.BigEndian.Uint32(data[off:]))
		switch string(data[off+4 : off+8]) {
		case "tRNS":
			return true
		case "IDAT", "IEND":
			return false
		}
		next := int64(off) + 12 + n
		if next > int64(len(data)) {
			return false
		}
		off = int(next)
	}
	return false
}
