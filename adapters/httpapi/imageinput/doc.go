// Package imageinput checks an uploaded image before the gateway spends
// anything costly on it: a queue slot, a ComfyUI upload, GPU time.
//
// [Check] reads at most [Limits.MaxBytes] bytes, recognises PNG, JPEG and
// WebP by their magic bytes only (never by file name or Content-Type), reads
// the dimensions from the header and refuses images with more than
// [Limits.MaxPixels] pixels before any pixel buffer is allocated, then decodes,
// scales the longer side down to [Limits.MaxSide] and re-encodes the result as
// PNG, which is what is uploaded to ComfyUI.
//
// Every rejection is an [*Error] carrying the HTTP status to answer with, a
// stable machine-readable code and a message that says concretely what was
// wrong:
//
//	img, err := imageinput.Check(r.Body, imageinput.DefaultLimits())
//	var ie *imageinput.Error
//	if errors.As(err, &ie) {
//		// reply ie.Status with {"code": ie.Code, "error": ie.Msg}
//	}
//
// Only Check's own sniffing decides the format: decoders are called directly,
// not through the process-wide [image.RegisterFormat] registry, so a decoder
// registered elsewhere in the binary (GIF, BMP, ...) never widens what the
// gateway accepts.
//
// An empty body is answered 400 with code "empty_image", not 415: nothing was
// sent, so there is no format to reject, and the client's fix is to attach the
// file rather than to convert it.
//
// Decoding is the costly part and its memory is bounded by a [Budget]
// shared by all requests: [Inspect] computes from the header alone what
// preparing the upload will hold at its peak ([Upload.Cost]: the decoded
// image as the standard decoders allocate it, 8 bytes per pixel for a 16-bit
// PNG, 1.5 for a typical JPEG, plus the scaled copy and the encoded PNG), and
// [Upload.PrepareContext] reserves that much before decoding and gives it
// back when it returns. When the budget is taken a request waits briefly in
// arrival order, then is refused 503 [CodeBusy] with a RetryAfter; an upload
// that needs more than the whole budget is refused 413 [CodeTooBigToDecode]
// by Inspect already:
//
//	budget := imageinput.NewBudget(512<<20, 2*time.Second) // one per process
//	lim := imageinput.Limits{Budget: budget}
//	up, err := imageinput.Inspect(body, lim)
//	...
//	img, err := up.PrepareContext(ctx)
//
// Uploads larger than MaxSide are first averaged over k x k blocks into an
// image at most twice MaxSide on a side, then resampled with CatmullRom
// without a scratch buffer. A non-interlaced PNG of 8 or 16 bits per channel
// shrunk by 2 or more is decoded row by row straight into those block
// averages and never held whole: the 6324x6324 16-bit PNG costs
// about 28 MiB instead of its 320 MB NRGBA64. Other uploads (JPEG, WebP,
// interlaced or paletted PNG, or less than 2x too large) are decoded whole by
// the standard decoders, which offer no row or DCT-scaled decoding, and
// charged for it: no full-size copy is made besides the decoded image.
//
// JPEG EXIF orientation is not applied; pixels are passed on as stored.
package imageinput
