package imageinput

import (
	"image"

	"golang.org/x/image/draw"
	"golang.org/x/image/math/f64"
)

// shrinkFactor is the integer factor by which an image whose longer side is
// long is box-averaged before the final resampling to maxSide: the largest k
// that leaves the longer side at least maxSide, so the final step shrinks by
// less than 2. It is 1 when no pre-shrink is needed.
func shrinkFactor(long, maxSide int) int {
	return max(1, long/maxSide)
}

// scale resamples src to w x h as *image.RGBA, or *image.Gray when src is
// greyscale.
//
// A large reduction is done in two steps, as libvips does for thumbnails: an
// exact box average over k x k blocks ([shrink]), which reads every source
// pixel once and keeps one row of sums, then CatmullRom for the remaining
// factor below 2. The second step uses the kernel's Transform, which
// computes each destination pixel directly. draw's Scale would be faster but
// allocates a 32-byte-per-sample scratch image of the destination's width
// by the source's height (about 260 MB for a 6324-pixel-tall upload scaled
// to 1280, 65 MB even after the box step), more than the decoded image.
//
// CatmullRom rather than ApproxBiLinear: ApproxBiLinear samples a fixed 2x2
// neighbourhood whatever the ratio and aliases fine detail (text, fabric,
// foliage), which the colourisation model then paints.
func scale(src image.Image, w, h int) image.Image {
	b := src.Bounds()
	mid := src
	if k := shrinkFactor(max(b.Dx(), b.Dy()), max(w, h)); k > 1 {
		mid = shrink(src, k)
	}
	dst := resample(mid, w, h)
	if _, ok := src.(*image.Gray); ok {
		return grayOf(dst)
	}
	return dst
}

// resample scales src to w x h with CatmullRom, computing each destination
// pixel directly (no scratch image).
func resample(src image.Image, w, h int) *image.RGBA {
	mb := src.Bounds()
	// *image.RGBA is the destination draw has fast paths for.
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	sx, sy := float64(mb.Dx())/float64(w), float64(mb.Dy())/float64(h)
	// s2d maps source to destination coordinates.
	s2d := f64.Aff3{1 / sx, 0, -float64(mb.Min.X) / sx, 0, 1 / sy, -float64(mb.Min.Y) / sy}
	draw.CatmullRom.Transform(dst, s2d, src, mb, draw.Src, nil)
	return dst
}

// box averages a sw x sh image, fed one premultiplied 16-bit pixel at a
// time in row order, over k x k blocks (fewer at the right and bottom edges
// when the size is not a multiple of k) into an RGBA image of
// ceil(sw/k) x ceil(sh/k). It holds one row of sums.
type box struct {
	k, sw, sh int
	y         int // source rows completed
	dst       *image.RGBA
	sums      []uint64
}

func newBox(sw, sh, k int) *box {
	w, h := (sw+k-1)/k, (sh+k-1)/k
	return &box{k: k, sw: sw, sh: sh, dst: image.NewRGBA(image.Rect(0, 0, w, h)), sums: make([]uint64, 4*w)}
}

// add adds the pixel at column x of the current row.
func (b *box) add(x int, r, g, bl, a uint32) {
	s := b.sums[4*(x/b.k) : 4*(x/b.k)+4 : 4*(x/b.k)+4]
	s[0] += uint64(r)
	s[1] += uint64(g)
	s[2] += uint64(bl)
	s[3] += uint64(a)
}

// endRow ends the current source row, writing a destination row once its
// block of rows is complete.
func (b *box) endRow() {
	b.y++
	if b.y%b.k != 0 && b.y != b.sh {
		return
	}
	oy := (b.y - 1) / b.k
	rows := uint64(b.y - oy*b.k)
	w := b.dst.Rect.Dx()
	row := b.dst.Pix[oy*b.dst.Stride : oy*b.dst.Stride+4*w]
	for ox := range w {
		n := rows * uint64(min((ox+1)*b.k, b.sw)-ox*b.k)
		for c := range 4 {
			// Mean of 16-bit values, rounded, then to 8 bits rounded.
			row[4*ox+c] = uint8(((b.sums[4*ox+c]+n/2)/n*255 + 0x7fff) / 0xffff)
		}
	}
	clear(b.sums)
}

// shrink averages src over k x k blocks into a new RGBA image of
// ceil(width/k) x ceil(height/k). It averages premultiplied 16-bit values,
// which is correct for transparent pixels, and holds one row of sums.
func shrink(src image.Image, k int) *image.RGBA {
	r := src.Bounds()
	bx := newBox(r.Dx(), r.Dy(), k)
	px := pixelReader(src)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			cr, cg, cb, ca := px(x, y)
			bx.add(x-r.Min.X, uint32(cr), uint32(cg), uint32(cb), uint32(ca))
		}
		bx.endRow()
	}
	return bx.dst
}

// pixelReader returns a function reading src's premultiplied 16-bit colour
// at (x, y), without the allocation image.Image.At makes for most types.
func pixelReader(src image.Image) func(x, y int) (r, g, b, a uint16) {
	switch m := src.(type) {
	case *image.NRGBA64:
		return func(x, y int) (uint16, uint16, uint16, uint16) {
			c := m.RGBA64At(x, y)
			return c.R, c.G, c.B, c.A
		}
	case *image.Gray:
		return func(x, y int) (uint16, uint16, uint16, uint16) {
			v := uint16(m.Pix[m.PixOffset(x, y)]) * 0x101
			return v, v, v, 0xffff
		}
	case image.RGBA64Image:
		return func(x, y int) (uint16, uint16, uint16, uint16) {
			c := m.RGBA64At(x, y)
			return c.R, c.G, c.B, c.A
		}
	}
	return func(x, y int) (uint16, uint16, uint16, uint16) {
		r, g, b, a := src.At(x, y).RGBA()
		return uint16(r), uint16(g), uint16(b), uint16(a)
	}
}
