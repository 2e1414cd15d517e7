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
// Check is CPU- and memory-heavy for large uploads and callers should bound
// how many run at once. At the default limits the worst case holds the decoded
// image (up to 4 bytes per pixel, 8 for 16-bit PNG: 160-320 MB at 40
// megapixels) plus the scaler's scratch buffer (32 bytes x output width x
// source height, about 260 MB for a square 40-megapixel upload); a 12-megapixel
// phone JPEG takes about half a second of one core, mostly in scaling.
//
// JPEG EXIF orientation is not applied; pixels are passed on as stored.
package imageinput
