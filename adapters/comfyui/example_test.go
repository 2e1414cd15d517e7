package comfyui_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"

	"github.com/sluicehq/sluice/adapters/comfyui"
	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
)

func ExampleClient_Run() {
	fake := comfyuitest.NewServer(comfyuitest.Options{})
	defer fake.Close()
	c, err := comfyui.NewClient(comfyui.Config{BaseURL: fake.URL})
	if err != nil {
		panic(err)
	}
	defer c.Close() // its WebSocket

	var photo bytes.Buffer
	png.Encode(&photo, image.NewGray(image.Rect(0, 0, 320, 200)))
	res, err := c.Run(context.Background(), comfyui.Job{Resource: "ddcolor_person", Image: photo.Bytes(), Size: 512})
	if err != nil {
		panic(err)
	}
	cfg, _ := png.DecodeConfig(bytes.NewReader(res.Image))
	fmt.Println(res.ContentType, res.Subfolder+"/"+res.Filename, cfg.Width, cfg.Height)
	// Output: image/png ddcolor/person_00001_.png 320 200
}
