package imageinput_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

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

func ExampleNewBudget() {
	// One budget for the whole process, shared by every request: preparing
	// uploads holds at most 64 MiB at once, and a request waits at most 2 s
	// for room before it is refused 503 "busy".
	budget := imageinput.NewBudget(64<<20, 2*time.Second)
	lim := imageinput.Limits{MaxSide: 200, Budget: budget}

	f, err := os.Open("../../../testdata/images/building.jpg")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	up, err := imageinput.Inspect(f, lim)
	if err != nil {
		fmt.Println(err)
		return
	}
	img, err := up.PrepareContext(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%dx%d, reserved while preparing: %d KiB, in use after: %d\n",
		img.Width, img.Height, up.Cost()>>10, budget.InUse())

	// An upload that needs more than the whole budget is refused at once.
	small := imageinput.Limits{Budget: imageinput.NewBudget(1<<20, time.Second)}
	if _, err := f.Seek(0, 0); err != nil {
		fmt.Println(err)
		return
	}
	_, err = imageinput.Inspect(f, small)
	var ie *imageinput.Error
	if errors.As(err, &ie) {
		fmt.Println(ie.Status, ie.Code)
	}
	// Output:
	// 200x150, reserved while preparing: 2617 KiB, in use after: 0
	// 413 too_big_to_decode
}
