package imageinput_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
)

const imagesDir = "../../../testdata/images"

// pattern returns a w x h image with enough structure that scaling and
// compression have something to work on.
func pattern(w, h int) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			i := m.PixOffset(x, y)
			m.Pix[i+0] = uint8(x)
			m.Pix[i+1] = uint8(y)
			m.Pix[i+2] = uint8(x ^ y)
			m.Pix[i+3] = 0xff
		}
	}
	return m
}

func grayPattern(w, h int) *image.Gray {
	m := image.NewGray(image.Rect(0, 0, w, h))
	for i := range m.Pix {
		m.Pix[i] = uint8(i % 251)
	}
	return m
}

func encPNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encJPEG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encGIF(t testing.TB) []byte {
	t.Helper()
	var b bytes.Buffer
	m := image.NewPaletted(image.Rect(0, 0, 4, 4), color.Palette{color.Black, color.White})
	if err := gif.Encode(&b, m, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// pngHeader returns a PNG signature and a well-formed IHDR chunk (correct CRC)
// declaring w x h 8-bit RGBA, and no image data.
func pngHeader(w, h uint32) []byte {
	var ihdr [13]byte
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8] = 8 // bit depth
	ihdr[9] = 6 // colour type RGBA
	b := []byte("\x89PNG\r\n\x1a\n")
	b = binary.BigEndian.AppendUint32(b, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr[:]...)
	b = append(b, chunk...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(imagesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheck(t *testing.T) {
	big := encPNG(t, pattern(300, 300))
	valid := encPNG(t, pattern(800, 600))

	type want struct {
		// accepted
		format        string
		width, height int
		orig          [2]int // OrigWidth, OrigHeight; zero means width, height
		scaled        bool
		gray          bool // output PNG decodes as *image.Gray
		// refused
		status  int
		code    string
		msgPart string
	}
	tests := []struct {
		name string
		data []byte
		lim  imageinput.Limits
		want want
	}{
		{name: "png 800x600 kept at its size", data: valid,
			want: want{format: "png", width: 800, height: 600}},
		{name: "png 3000x1500 scaled to 1280x640", data: encPNG(t, pattern(3000, 1500)),
			want: want{format: "png", width: 1280, height: 640, orig: [2]int{3000, 1500}, scaled: true}},
		{name: "portrait png 600x1500 scaled to 512x1280", data: encPNG(t, pattern(600, 1500)),
			want: want{format: "png", width: 512, height: 1280, orig: [2]int{600, 1500}, scaled: true}},
		{name: "long side exactly MaxSide is not scaled", data: encPNG(t, pattern(200, 120)), lim: imageinput.Limits{MaxSide: 200},
			want: want{format: "png", width: 200, height: 120}},
		{name: "aspect ratio rounds to nearest", data: encPNG(t, pattern(300, 200)), lim: imageinput.Limits{MaxSide: 100},
			want: want{format: "png", width: 100, height: 67, orig: [2]int{300, 200}, scaled: true}},
		{name: "extreme aspect keeps at least one pixel", data: encPNG(t, pattern(5000, 1)),
			want: want{format: "png", width: 1280, height: 1, orig: [2]int{5000, 1}, scaled: true}},
		{name: "colour jpeg", data: encJPEG(t, pattern(640, 480)),
			want: want{format: "jpeg", width: 640, height: 480}},
		{name: "greyscale jpeg kept greyscale", data: encJPEG(t, grayPattern(300, 200)),
			want: want{format: "jpeg", width: 300, height: 200, gray: true}},
		{name: "greyscale jpeg scaled stays greyscale", data: encJPEG(t, grayPattern(400, 200)), lim: imageinput.Limits{MaxSide: 100},
			want: want{format: "jpeg", width: 100, height: 50, orig: [2]int{400, 200}, scaled: true, gray: true}},
		{name: "lossless webp", data: readFile(t, "gopher.lossless.webp"),
			want: want{format: "webp", width: 75, height: 100}},
		{name: "webp scaled", data: readFile(t, "gopher.lossless.webp"), lim: imageinput.Limits{MaxSide: 50},
			want: want{format: "webp", width: 38, height: 50, orig: [2]int{75, 100}, scaled: true}},
		{name: "exactly MaxBytes is accepted", data: big, lim: imageinput.Limits{MaxBytes: int64(len(big))},
			want: want{format: "png", width: 300, height: 300}},

		{name: "one byte over MaxBytes", data: big, lim: imageinput.Limits{MaxBytes: int64(len(big) - 1)},
			want: want{status: 413, code: "too_large", msgPart: "image is larger than"}},
		{name: "gif", data: encGIF(t),
			want: want{status: 415, code: "unsupported_format",
				msgPart: "got image/gif; accepted formats are PNG, JPEG and WebP"}},
		{name: "bmp", data: append([]byte("BM"), make([]byte, 60)...),
			want: want{status: 415, code: "unsupported_format", msgPart: "got image/bmp"}},
		{name: "heic", data: []byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"),
			want: want{status: 415, code: "unsupported_format", msgPart: "got image/heic"}},
		{name: "text", data: readFile(t, "not-an-image.txt"),
			want: want{status: 415, code: "unsupported_format", msgPart: "got text/plain;"}},
		{name: "unknown binary", data: []byte{0x00, 0x01, 0x02, 0x03, 0xfe, 0xfa, 0x00, 0x00, 0x09},
			want: want{status: 415, code: "unsupported_format",
				msgPart: "got unrecognised data starting with 00 01 02 03 fe fa 00 00;"}},
		{name: "png signature cut short", data: []byte("\x89PN"),
			want: want{status: 415, code: "unsupported_format"}},
		{name: "empty", data: nil,
			want: want{status: 400, code: "empty_image", msgPart: "0 bytes"}},
		{name: "truncated png", data: valid[:len(valid)/2],
			want: want{status: 400, code: "bad_image", msgPart: "png data is corrupt or truncated"}},
		{name: "png signature only", data: valid[:8],
			want: want{status: 400, code: "bad_image", msgPart: "png header is corrupt"}},
		{name: "png header with zero width", data: pngHeader(0, 10),
			want: want{status: 400, code: "bad_image"}},
		{name: "png header claiming 100000x100000", data: pngHeader(100000, 100000),
			want: want{status: 413, code: "too_many_pixels",
				msgPart: "image is 100000x100000 = 10000000000 pixels; the limit is 40000000"}},
		{name: "MaxPixels is honoured", data: valid, lim: imageinput.Limits{MaxPixels: 800*600 - 1},
			want: want{status: 413, code: "too_many_pixels",
				msgPart: "image is 800x600 = 480000 pixels; the limit is 479999"}},
		{name: "jpeg magic then garbage", data: []byte{0xFF, 0xD8, 0xFF, 0x00, 'n', 'o', 'p', 'e'},
			want: want{status: 400, code: "bad_image", msgPart: "jpeg header is corrupt"}},
		{name: "webp container with garbage", data: []byte("RIFF\x10\x00\x00\x00WEBPVP8Lxxxxxxxx"),
			want: want{status: 400, code: "bad_image", msgPart: "webp header is corrupt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lim := imageinput.DefaultLimits()
			if tt.lim != (imageinput.Limits{}) {
				lim = tt.lim // zero fields take their defaults inside Check
			}
			img, err := imageinput.Check(bytes.NewReader(tt.data), lim)
			w := tt.want
			if w.status != 0 {
				var ie *imageinput.Error
				if !errors.As(err, &ie) {
					t.Fatalf("Check() error = %v (%T), want *imageinput.Error", err, err)
				}
				if ie.Status != w.status || ie.Code != w.code || !strings.Contains(ie.Msg, w.msgPart) {
					t.Fatalf("Check() error = %d %s %q, want %d %s containing %q",
						ie.Status, ie.Code, ie.Msg, w.status, w.code, w.msgPart)
				}
				if img != nil {
					t.Errorf("Check() returned an image along with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Check() error = %v", err)
			}
			if img.Format != w.format || img.Width != w.width || img.Height != w.height || img.Scaled != w.scaled {
				t.Errorf("Check() = %s %dx%d scaled=%v, want %s %dx%d scaled=%v",
					img.Format, img.Width, img.Height, img.Scaled, w.format, w.width, w.height, w.scaled)
			}
			orig := w.orig
			if orig == [2]int{} {
				orig = [2]int{w.width, w.height}
			}
			if img.OrigWidth != orig[0] || img.OrigHeight != orig[1] {
				t.Errorf("OrigWidth x OrigHeight = %dx%d, want %dx%d", img.OrigWidth, img.OrigHeight, orig[0], orig[1])
			}
			out, err := png.Decode(bytes.NewReader(img.PNG))
			if err != nil {
				t.Fatalf("output is not a PNG: %v", err)
			}
			if b := out.Bounds(); b.Dx() != img.Width || b.Dy() != img.Height {
				t.Errorf("output PNG is %dx%d, Image says %dx%d", b.Dx(), b.Dy(), img.Width, img.Height)
			}
			if _, isGray := out.(*image.Gray); isGray != w.gray {
				t.Errorf("output PNG is %T, want greyscale = %v", out, w.gray)
			}
		})
	}
}

// countingReader is an endless stream of zero bytes that counts what is read.
type countingReader struct{ n int64 }

func (c *countingReader) Read(p []byte) (int, error) {
	clear(p)
	c.n += int64(len(p))
	return len(p), nil
}

func TestCheckReading(t *testing.T) {
	t.Run("endless body is read only to MaxBytes+1", func(t *testing.T) {
		r := &countingReader{}
		_, err := imageinput.Check(r, imageinput.Limits{MaxBytes: 1000})
		assertError(t, err, 413, "too_large", "image is larger than 1000 bytes")
		if r.n != 1001 {
			t.Errorf("read %d bytes, want 1001", r.n)
		}
	})
	t.Run("http.MaxBytesReader tighter than MaxBytes", func(t *testing.T) {
		body := http.MaxBytesReader(nil, io.NopCloser(&countingReader{}), 500)
		_, err := imageinput.Check(body, imageinput.DefaultLimits())
		assertError(t, err, 413, "too_large", "image is larger than 500 bytes")
	})
	t.Run("read error", func(t *testing.T) {
		r := io.MultiReader(strings.NewReader("\x89PNG"), iotest.ErrReader(io.ErrUnexpectedEOF))
		_, err := imageinput.Check(r, imageinput.DefaultLimits())
		assertError(t, err, 400, "read_failed", "reading the image failed after 4 bytes")
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("errors.Is(err, io.ErrUnexpectedEOF) = false for %v", err)
		}
	})
}

// TestCheckPixelBombAllocatesLittle runs alone (not parallel) so the process
// allocation counter reflects only Check.
func TestCheckPixelBombAllocatesLittle(t *testing.T) {
	data := pngHeader(100000, 100000) // 40 GB as RGBA if decoded
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := imageinput.Check(bytes.NewReader(data), imageinput.DefaultLimits())
	runtime.ReadMemStats(&after)
	assertError(t, err, 413, "too_many_pixels", "100000x100000")
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Errorf("Check allocated %d bytes refusing a header-only bomb, want < 1 MiB", got)
	}
}

func TestSampleImagesDecode(t *testing.T) {
	tests := []struct {
		file          string
		format        string
		width, height int
	}{
		{"person.png", "png", 256, 320},
		{"building.jpg", "jpeg", 400, 300},
		{"gopher.lossless.webp", "webp", 75, 100},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			img, err := imageinput.Check(bytes.NewReader(readFile(t, tt.file)), imageinput.Limits{MaxSide: 4096})
			if err != nil {
				t.Fatal(err)
			}
			if img.Format != tt.format || img.Width != tt.width || img.Height != tt.height {
				t.Errorf("%s = %s %dx%d, want %s %dx%d", tt.file,
					img.Format, img.Width, img.Height, tt.format, tt.width, tt.height)
			}
		})
	}
	t.Run("not-an-image.txt", func(t *testing.T) {
		_, err := imageinput.Check(bytes.NewReader(readFile(t, "not-an-image.txt")), imageinput.DefaultLimits())
		assertError(t, err, 415, "unsupported_format", "text/plain")
	})
}

func TestDefaultLimits(t *testing.T) {
	got := imageinput.DefaultLimits()
	want := imageinput.Limits{MaxBytes: 20 << 20, MaxPixels: 40_000_000, MaxSide: 1280}
	if got != want {
		t.Errorf("DefaultLimits() = %+v, want %+v", got, want)
	}
}

func assertError(t *testing.T, err error, status int, code, msgPart string) {
	t.Helper()
	var ie *imageinput.Error
	if !errors.As(err, &ie) {
		t.Fatalf("error = %v (%T), want *imageinput.Error", err, err)
	}
	if ie.Status != status || ie.Code != code || !strings.Contains(ie.Error(), msgPart) {
		t.Fatalf("error = %d %s %q, want %d %s containing %q", ie.Status, ie.Code, ie.Msg, status, code, msgPart)
	}
}
