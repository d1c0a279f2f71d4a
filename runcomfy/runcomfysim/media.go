package runcomfysim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"math/rand/v2"
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

// paddingChunk is the PNG chunk type of an output's padding: ancillary
// (lower-case first letter), private (lower-case second) and safe to copy,
// so image readers skip it.
const paddingChunk = "cgPd"

// outputSize is the size of every output image file.
func (s *Sim) outputSize() int {
	if min := len(s.png) + 12; s.opts.OutputBytes > min {
		return s.opts.OutputBytes
	}
	return len(s.png)
}

// WriteOutput writes the bytes the simulator serves for output file name of
// requestID: its small PNG, padded to Options.OutputBytes with a chunk of
// bytes derived from the request and the name, streamed in blocks so a file
// of many MiB is never held whole. Tests compare stored copies with it.
func (s *Sim) WriteOutput(w io.Writer, requestID, name string) error {
	size := s.outputSize()
	if size == len(s.png) {
		_, err := w.Write(s.png)
		return err
	}
	iend := len(s.png) - 12 // the IEND chunk closes every PNG
	if _, err := w.Write(s.png[:iend]); err != nil {
		return err
	}
	n := size - len(s.png) - 12
	var head [8]byte
	binary.BigEndian.PutUint32(head[:4], uint32(n))
	copy(head[4:], paddingChunk)
	if _, err := w.Write(head[:]); err != nil {
		return err
	}
	sum := crc32.NewIEEE()
	sum.Write(head[4:])
	seed := sha256.Sum256([]byte(requestID + "/" + name))
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 32<<10)
	for n > 0 {
		b := buf[:min(n, len(buf))]
		_, _ = rng.Read(b)
		sum.Write(b)
		if _, err := w.Write(b); err != nil {
			return err
		}
		n -= len(b)
	}
	var crc [4]byte
	binary.BigEndian.PutUint32(crc[:], sum.Sum32())
	if _, err := w.Write(crc[:]); err != nil {
		return err
	}
	_, err := w.Write(s.png[iend:])
	return err
}
