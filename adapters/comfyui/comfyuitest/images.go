package comfyuitest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"image"
	"image/draw"
	_ "image/gif" // LoadImage reads what PIL reads, within reason
	_ "image/jpeg"
	"image/png"
	"math"
	"math/big"
	"math/rand/v2"
	"path"

	_ "golang.org/x/image/webp"
)

const (
	maxInputPixels = 50_000_000 // LoadImage refuses more, as PIL refuses bombs
	maxGenPixels   = 2048 * 2048
	maxBatch       = 4 // images decoded from a latent batch; more are not drawn
)

// args gives a running node its inputs, links resolved.
type args struct {
	x      *execution
	inputs map[string]any
}

func (a args) value(name string) any {
	v := a.inputs[name]
	if target, ok := linkTarget(v); ok {
		idx, err := v.([]any)[1].(json.Number).Int64()
		outs := a.x.values[target]
		if err != nil || idx < 0 || idx >= int64(len(outs)) {
			return nil
		}
		return outs[idx]
	}
	return v
}

func (a args) int(name string) int64 {
	n, err := pyInt(a.value(name))
	if err != nil || !n.IsInt64() {
		return 0
	}
	return n.Int64()
}

func (a args) uint(name string) uint64 {
	n, err := pyInt(a.value(name))
	if err != nil || n.Sign() < 0 || n.Cmp(new(big.Int).SetUint64(math.MaxUint64)) > 0 {
		return 0
	}
	return n.Uint64()
}

func (a args) str(name string) string { return pyStr(a.value(name)) }

func (a args) images(name string) ([]image.Image, error) {
	imgs, ok := a.value(name).([]image.Image)
	if !ok {
		return nil, &pyException{"AttributeError", fmt.Sprintf("'%s' object has no attribute 'shape'", pyType(a.value(name)))}
	}
	return imgs, nil
}

// latent stands for a LATENT: the size and what the sampler was given.
type latent struct {
	width, height, batch int
	seed                 uint64
	text                 string
}

func runPassThrough(input string) func(*execution, args) ([]any, map[string]any, error) {
	return func(_ *execution, a args) ([]any, map[string]any, error) {
		return []any{a.value(input)}, nil, nil
	}
}

func inputPath(name string) string {
	rel, typ := annotated(name)
	return "/ComfyUI/" + typ + "/" + rel
}

func runLoadImage(x *execution, a args) ([]any, map[string]any, error) {
	name := a.str("image")
	data, ok := x.s.files.lookupAnnotated(name)
	if !ok {
		return nil, nil, &pyException{"FileNotFoundError", fmt.Sprintf("[Errno 2] No such file or directory: '%s'", inputPath(name))}
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, nil, &pyException{"PIL.UnidentifiedImageError", fmt.Sprintf("cannot identify image file '%s'", inputPath(name))}
	}
	if px := cfg.Width * cfg.Height; px > maxInputPixels {
		return nil, nil, &pyException{"PIL.Image.DecompressionBombError",
			fmt.Sprintf("Image size (%d pixels) exceeds limit of %d pixels, could be decompression bomb DOS attack.", px, maxInputPixels)}
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, nil, &pyException{"OSError", "image file is truncated"}
	}
	return []any{[]image.Image{img}, "MASK"}, nil, nil
}

// runDDColor "colourises" by tinting: a warm sepia at the input's size.
func runDDColor(_ *execution, a args) ([]any, map[string]any, error) {
	imgs, err := a.images("image")
	if err != nil {
		return nil, nil, err
	}
	out := make([]image.Image, len(imgs))
	for i, img := range imgs {
		out[i] = tint(img)
	}
	return []any{out}, nil, nil
}

func tint(src image.Image) *image.NRGBA {
	b := src.Bounds()
	dst := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(dst, dst.Bounds(), src, b.Min, draw.Src)
	p := dst.Pix
	for i := 0; i+3 < len(p); i += 4 {
		y := (299*int(p[i]) + 587*int(p[i+1]) + 114*int(p[i+2])) / 1000
		p[i] = clamp8(y + 40)
		p[i+1] = clamp8(y + 20)
		p[i+2] = clamp8(y - 20)
	}
	return dst
}

func clamp8(v int) uint8 {
	return uint8(min(max(v, 0), 255))
}

func runEmptyLatent(_ *execution, a args) ([]any, map[string]any, error) {
	return []any{latent{
		width:  int(a.int("width")) / 8 * 8,
		height: int(a.int("height")) / 8 * 8,
		batch:  int(a.int("batch_size")),
	}}, nil, nil
}

func runKSampler(_ *execution, a args) ([]any, map[string]any, error) {
	lat, ok := a.value("latent_image").(latent)
	if !ok {
		return nil, nil, &pyException{"TypeError", fmt.Sprintf("'%s' object is not subscriptable", pyType(a.value("latent_image")))}
	}
	lat.seed = a.uint("seed")
	lat.text = a.str("positive")
	return []any{lat}, nil, nil
}

// runVAEDecode draws a gradient per image, its colours from the seed and the
// prompt, at the latent's size (scaled down beyond maxGenPixels).
func runVAEDecode(_ *execution, a args) ([]any, map[string]any, error) {
	lat, ok := a.value("samples").(latent)
	if !ok {
		return nil, nil, &pyException{"TypeError", fmt.Sprintf("'%s' object is not subscriptable", pyType(a.value("samples")))}
	}
	n := min(max(lat.batch, 1), maxBatch)
	imgs := make([]image.Image, n)
	for i := range imgs {
		imgs[i] = gradient(lat.width, lat.height, lat.seed+uint64(i), lat.text)
	}
	return []any{imgs}, nil, nil
}

func gradient(w, h int, seed uint64, text string) *image.NRGBA {
	if px := w * h; px > maxGenPixels {
		f := math.Sqrt(float64(maxGenPixels) / float64(px))
		w, h = max(int(float64(w)*f), 1), max(int(float64(h)*f), 1)
	}
	w, h = max(w, 1), max(h, 1)
	hash := fnv.New64a()
	fmt.Fprintf(hash, "%d\x00%s", seed, text)
	sum := hash.Sum64()
	c1 := [3]int{int(sum & 0xff), int(sum >> 8 & 0xff), int(sum >> 16 & 0xff)}
	c2 := [3]int{int(sum >> 24 & 0xff), int(sum >> 32 & 0xff), int(sum >> 40 & 0xff)}
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	span := max(w+h-2, 1)
	for y := 0; y < h; y++ {
		row := img.Pix[y*img.Stride:]
		for x := 0; x < w; x++ {
			t := x + y
			for c := 0; c < 3; c++ {
				row[4*x+c] = uint8((c1[c]*(span-t) + c2[c]*t) / span)
			}
			row[4*x+3] = 0xff
		}
	}
	return img
}

func encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func runSaveImage(x *execution, a args) ([]any, map[string]any, error) {
	return saveImages(x, a, "output", a.str("filename_prefix"))
}

func runPreviewImage(x *execution, a args) ([]any, map[string]any, error) {
	const letters = "abcdefghijklmnopqrstupvxyz"
	suffix := make([]byte, 5)
	for i := range suffix {
		suffix[i] = letters[rand.IntN(len(letters))]
	}
	return saveImages(x, a, "temp", "ComfyUI_temp_"+string(suffix))
}

// saveImages writes prefix_00001_.png and so on, the prefix's folder part
// becoming the subfolder, as ComfyUI's SaveImage does.
func saveImages(x *execution, a args, typ, prefix string) ([]any, map[string]any, error) {
	imgs, err := a.images("images")
	if err != nil {
		return nil, nil, err
	}
	clean := path.Clean(prefix)
	sub, base := path.Dir(clean), path.Base(clean)
	if sub == "." {
		sub = ""
	}
	if !within(sub) || path.IsAbs(clean) {
		return nil, nil, &pyException{"Exception", fmt.Sprintf("**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: /ComfyUI/%s/%s\n         output_dir: /ComfyUI/%s", typ, sub, typ)}
	}
	saved := make([]any, 0, len(imgs))
	for _, img := range imgs {
		data, err := encodePNG(img)
		if err != nil {
			return nil, nil, &pyException{"OSError", err.Error()}
		}
		name := fmt.Sprintf("%s_%05d_.png", base, x.s.files.next(typ, sub, base))
		x.s.files.put(typ, path.Join(sub, name), data)
		saved = append(saved, map[string]any{"filename": name, "subfolder": sub, "type": typ})
	}
	return []any{}, map[string]any{"images": saved}, nil
}
