package runcomfysim

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
)

// tinyPNG encodes the 16x16 gradient served for every output image. It is built
// once per Sim so serving an image costs a write, which keeps benchmarks honest.
func tinyPNG() []byte {
	const size = 16
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	for y := range size {
		for x := range size {
			img.SetNRGBA(x, y, color.NRGBA{R: uint8(x * 16), G: uint8(y * 16), B: 0x80, A: 0xff})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		// Encoding an in-memory image into a buffer cannot fail.
		panic("runcomfysim: encode png: " + err.Error())
	}
	return buf.Bytes()
}
