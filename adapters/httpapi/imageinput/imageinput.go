package imageinput

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"
)

// Limits bounds what [Check] accepts. A field that is zero or negative takes
// its default from [DefaultLimits].
type Limits struct {
	MaxBytes  int64 // cap on the encoded size; default 20 MiB
	MaxPixels int64 // cap on width*height, checked before decoding; default 40 megapixels
	MaxSide   int   // a longer side above this is scaled down to it; default 1280
	// Budget, when not nil, bounds the memory that preparing uploads holds
	// at once, shared with every Limits that carries the same Budget.
	Budget *Budget
}

// DefaultLimits returns the limits used for colourisation uploads.
func DefaultLimits() Limits {
	return Limits{
		MaxBytes:  20 << 20,
		MaxPixels: 40_000_000,
		MaxSide:   1280,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxBytes <= 0 {
		l.MaxBytes = d.MaxBytes
	}
	if l.MaxPixels <= 0 {
		l.MaxPixels = d.MaxPixels
	}
	if l.MaxSide <= 0 {
		l.MaxSide = d.MaxSide
	}
	return l
}

// Image is an accepted upload, ready to be sent to ComfyUI.
type Image struct {
	Format                string // format of the upload: "png", "jpeg" or "webp"
	Width, Height         int    // size of PNG, after any scaling
	OrigWidth, OrigHeight int    // size of the upload
	Scaled                bool   // whether the upload was scaled down to fit Limits.MaxSide
	PNG                   []byte // the image re-encoded as PNG
}

// Codes carried in [Error.Code]. They are part of the HTTP API; do not rename.
const (
	CodeTooLarge          = "too_large"          // 413: more bytes than Limits.MaxBytes
	CodeTooManyPixels     = "too_many_pixels"    // 413: more pixels than Limits.MaxPixels
	CodeUnsupportedFormat = "unsupported_format" // 415: not PNG, JPEG or WebP
	CodeEmptyImage        = "empty_image"        // 400: zero bytes
	CodeBadImage          = "bad_image"          // 400: corrupt header or data, or zero size
	CodeReadFailed        = "read_failed"        // 400: the body could not be read to the end
	CodeTooBigToDecode    = "too_big_to_decode"  // 413: decoding needs more memory than the whole Budget
	CodeBusy              = "busy"               // 503: the Budget stayed full for its whole wait; retry after RetryAfter
)

// Error is why an upload was refused. Check returns it as *Error; use
// [errors.As] to get at it.
type Error struct {
	Status int    // HTTP status to answer with
	Code   string // one of the Code constants
	Msg    string // what was wrong, for the client
	// RetryAfter, when not zero, is how long the client should wait before
	// trying again (a Retry-After header); set for CodeBusy.
	RetryAfter time.Duration
	err        error // underlying decoder, read or context error, if any
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the decoder or read error behind e, if any.
func (e *Error) Unwrap() error { return e.err }

type codec struct {
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}

var codecs = map[string]codec{
	"png":  {png.DecodeConfig, png.Decode},
	"jpeg": {jpeg.DecodeConfig, jpeg.Decode},
	"webp": {webp.DecodeConfig, webp.Decode},
}

// Check reads one image from r and either accepts it, scaled down to
// lim.MaxSide and re-encoded as PNG, or returns an *Error saying why not.
// It reads at most lim.MaxBytes+1 bytes from r and never decodes an image
// whose header declares more than lim.MaxPixels pixels. It is Inspect
// followed by Prepare.
func Check(r io.Reader, lim Limits) (*Image, error) {
	u, err := Inspect(r, lim)
	if err != nil {
		return nil, err
	}
	return u.Prepare()
}

// Upload is an image whose bytes, format and header have been checked but
// which is not decoded yet: what a gateway knows cheaply, before it spends
// CPU on decoding.
type Upload struct {
	Format        string // "png", "jpeg" or "webp"
	Width, Height int    // as the header declares them
	data          []byte
	lim           Limits
	cost          int64 // bytes Prepare reserves from lim.Budget
}

// Inspect reads one image from r and checks everything that needs no
// decoding: its size in bytes, its format (sniffed from the bytes) and the
// dimensions its header declares against lim.MaxPixels.
func Inspect(r io.Reader, lim Limits) (*Upload, error) {
	lim = lim.withDefaults()

	data, err := readCapped(r, lim.MaxBytes)
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeEmptyImage,
			Msg: "image is empty: the request carried 0 bytes"}
	}

	format := sniff(data)
	if format == "" {
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedFormat,
			Msg: fmt.Sprintf("unsupported image format: got %s; accepted formats are PNG, JPEG and WebP", describe(data))}
	}
	c := codecs[format]

	cfg, err := c.config(bytes.NewReader(data))
	if err != nil {
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeBadImage,
			Msg: fmt.Sprintf("%s header is corrupt: %v", format, err), err: err}
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeBadImage,
			Msg: fmt.Sprintf("%s header declares an empty image: %dx%d", format, cfg.Width, cfg.Height)}
	}
	if px := int64(cfg.Width) * int64(cfg.Height); px > lim.MaxPixels {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooManyPixels,
			Msg: fmt.Sprintf("image is %dx%d = %d pixels; the limit is %d", cfg.Width, cfg.Height, px, lim.MaxPixels)}
	}
	q, copied := decodeQuarters(format, data, cfg.ColorModel)
	u := &Upload{Format: format, Width: cfg.Width, Height: cfg.Height, data: data, lim: lim,
		cost: cost(cfg.Width, cfg.Height, q, copied, lim.MaxSide)}
	if streamed(format, data, cfg.Width, cfg.Height, lim.MaxSide) {
		u.cost = streamedCost(cfg.Width, cfg.Height, lim.MaxSide)
	}
	if err := lim.Budget.fits(u.cost, u.what()); err != nil {
		return nil, err
	}
	return u, nil
}

// Cost is the memory in bytes that preparing u is expected to hold at its
// peak, and what [Upload.PrepareContext] reserves from [Limits.Budget]: the
// decoded image as the standard decoders allocate it (8 bytes per pixel for
// a 16-bit PNG, 1.5 for a typical JPEG) or, for a PNG decoded row by row,
// two rows; the scaled copies; and the encoded PNG. The upload's own bytes,
// already read, are not included.
func (u *Upload) Cost() int64 { return u.cost }

// streamed says whether Prepare decodes u row by row into block averages
// ([shrinkPNG]) rather than whole: a PNG of 8 or 16 bits per channel, not
// interlaced, shrunk by a factor of 2 or more.
func (u *Upload) streamed() bool {
	return streamed(u.Format, u.data, u.Width, u.Height, u.lim.MaxSide)
}

func streamed(format string, data []byte, w, h, maxSide int) bool {
	return format == "png" && shrinkFactor(max(w, h), maxSide) > 1 && pngStreamable(data)
}

// what names u in messages: "6324x6324 png".
func (u *Upload) what() string { return fmt.Sprintf("%dx%d %s", u.Width, u.Height, u.Format) }

// Prepare is PrepareContext without a context: it waits for the budget
// at most the budget's own wait.
func (u *Upload) Prepare() (*Image, error) {
	return u.PrepareContext(context.Background())
}

// PrepareContext reserves u's [Upload.Cost] from [Limits.Budget], waiting
// while ctx lasts and at most the budget's wait, then decodes the upload,
// scales it down to MaxSide on its longer side and re-encodes it as PNG. The
// reservation is given back when it returns, whatever the outcome.
func (u *Upload) PrepareContext(ctx context.Context) (*Image, error) {
	release, err := u.lim.Budget.acquire(ctx, u.cost, u.what())
	if err != nil {
		return nil, err
	}
	defer release()
	format := u.Format
	corrupt := func(err error) error {
		return &Error{Status: http.StatusBadRequest, Code: CodeBadImage,
			Msg: fmt.Sprintf("%s data is corrupt or truncated: %v", format, err), err: err}
	}
	var src image.Image
	out := &Image{Format: format, Width: u.Width, Height: u.Height, OrigWidth: u.Width, OrigHeight: u.Height}
	if u.streamed() {
		// Decoded row by row into block averages: the full-size image is
		// never held.
		out.Width, out.Height = fitSide(u.Width, u.Height, u.lim.MaxSide)
		out.Scaled = true
		mid, gray, err := shrinkPNG(u.data, shrinkFactor(max(u.Width, u.Height), u.lim.MaxSide))
		if err != nil {
			return nil, corrupt(err)
		}
		dst := resample(mid, out.Width, out.Height)
		src = dst
		if gray {
			src = grayOf(dst)
		}
	} else {
		var err error
		if src, err = codecs[format].decode(bytes.NewReader(u.data)); err != nil {
			return nil, corrupt(err)
		}
		ow, oh := src.Bounds().Dx(), src.Bounds().Dy()
		if ow != u.Width || oh != u.Height {
			return nil, &Error{Status: http.StatusBadRequest, Code: CodeBadImage,
				Msg: fmt.Sprintf("%s header declares %dx%d but the data decodes to %dx%d", format, u.Width, u.Height, ow, oh)}
		}
		if max(ow, oh) > u.lim.MaxSide {
			out.Width, out.Height = fitSide(ow, oh, u.lim.MaxSide)
			out.Scaled = true
			src = scale(src, out.Width, out.Height)
		} else {
			src = encodable(src)
		}
	}
	var buf bytes.Buffer
	// BestSpeed: the PNG only travels to ComfyUI on the local network, where a
	// few hundred extra kilobytes cost less than the CPU time of tighter
	// compression in the request path.
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, src); err != nil {
		// Encoding an in-memory image only fails for sizes the checks above
		// already rule out; report it rather than panic.
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeBadImage,
			Msg: fmt.Sprintf("re-encoding the %dx%d image as PNG failed: %v", out.Width, out.Height, err), err: err}
	}
	out.PNG = buf.Bytes()
	return out, nil
}

// readCapped reads all of r, refusing more than maxBytes.
func readCapped(r io.Reader, maxBytes int64) ([]byte, error) {
	n := maxBytes
	if n < math.MaxInt64 {
		n++ // one byte past the cap tells "exactly at the cap" from "over it"
	}
	data, err := io.ReadAll(io.LimitReader(r, n))
	var mbe *http.MaxBytesError // the caller capped the body tighter than we do
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge(mbe.Limit, err)
	case err != nil:
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeReadFailed,
			Msg: fmt.Sprintf("reading the image failed after %d bytes: %v", len(data), err), err: err}
	case int64(len(data)) > maxBytes:
		return nil, tooLarge(maxBytes, nil)
	}
	return data, nil
}

func tooLarge(limit int64, err error) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
		Msg: fmt.Sprintf("image is larger than %d bytes", limit), err: err}
}

var (
	pngMagic  = []byte("\x89PNG\r\n\x1a\n")
	jpegMagic = []byte{0xFF, 0xD8, 0xFF}
)

// sniff names the accepted format that data starts with, or returns "".
func sniff(data []byte) string {
	switch {
	case bytes.HasPrefix(data, pngMagic):
		return "png"
	case bytes.HasPrefix(data, jpegMagic):
		return "jpeg"
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return "webp"
	}
	return ""
}

// describe names what a refused upload looks like, for the error message.
func describe(data []byte) string {
	// Phones upload HEIC; http.DetectContentType does not know it.
	if len(data) >= 12 && string(data[4:8]) == "ftyp" {
		switch string(data[8:12]) {
		case "heic", "heix", "hevc", "heim", "heis", "mif1", "msf1":
			return "image/heic"
		case "avif", "avis":
			return "image/avif"
		}
	}
	mt, _, _ := strings.Cut(http.DetectContentType(data), ";")
	if mt == "application/octet-stream" {
		return fmt.Sprintf("unrecognised data starting with % x", data[:min(len(data), 8)])
	}
	return mt
}

// fitSide returns w x h scaled so the longer side is maxSide, keeping the
// aspect ratio (rounded to nearest) and at least 1 pixel per side.
func fitSide(w, h, maxSide int) (int, int) {
	long, short := int64(max(w, h)), int64(min(w, h))
	s := max(1, int((short*int64(maxSide)+long/2)/long))
	if w >= h {
		return maxSide, s
	}
	return s, maxSide
}

// grayOf keeps a greyscale upload greyscale, which makes the PNG about a
// third of the size. Scaling grey keeps R == G == B, so R is the grey value.
func grayOf(m *image.RGBA) *image.Gray {
	g := image.NewGray(m.Rect)
	for i := range g.Pix {
		g.Pix[i] = m.Pix[4*i]
	}
	return g
}

// encodable returns m as a type png.Encoder writes from its pixel slice.
// JPEG and lossy WebP decode to YCbCr, which it would read through one
// interface call and one allocation per pixel.
func encodable(m image.Image) image.Image {
	switch m.(type) {
	case *image.Gray, *image.Gray16, *image.RGBA, *image.RGBA64, *image.NRGBA, *image.NRGBA64, *image.Paletted:
		return m
	}
	b := m.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(dst, dst.Bounds(), m, b.Min, draw.Src)
	return dst
}
