package imageinput_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/sluicehq/sluice/adapters/httpapi/imageinput"
)

func ExampleCheck() {
	f, err := os.Open("../../../testdata/images/building.jpg")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	img, err := imageinput.Check(f, imageinput.Limits{MaxSide: 200})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s %dx%d -> %dx%d scaled=%v\n", img.Format, img.OrigWidth, img.OrigHeight, img.Width, img.Height, img.Scaled)
	// Output: jpeg 400x300 -> 200x150 scaled=true
}

func ExampleError() {
	f, err := os.Open("../../../testdata/images/not-an-image.txt")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	_, err = imageinput.Check(f, imageinput.DefaultLimits())
	var ie *imageinput.Error
	if errors.As(err, &ie) {
		fmt.Println(ie.Status, ie.Code)
		fmt.Println(ie.Msg)
	}
	// Output:
	// 415 unsupported_format
	// unsupported image format: got text/plain; accepted formats are PNG, JPEG and WebP
}
