package uploads

import (
	"encoding/base64"
	"testing"
)

// benchInput is a submit body of about 10 MiB, mostly a base64 image, as a
// large submit is: the size where the scan of every submit for references
// costs most.
func benchInput(ref string) string {
	img := make([]byte, 7<<20)
	for i := range img {
		img[i] = byte(i*7919 + i>>9) // varied bytes: every base64 letter occurs
	}
	return `{"overrides": {"12": {"inputs": {"image": "data:image/png;base64,` + base64.StdEncoding.EncodeToString(img) +
		`", "mask": "` + ref + `", "seed": 18446744073709551615}}}}`
}

// BenchmarkSubmitScan is what every submit now pays: the test for a
// reference (HasReferences) on a body without one, and the full rewrite of
// a body with one; beside a copy of the same bytes, the least any pass over
// them costs.
func BenchmarkSubmitScan(b *testing.B) {
	plain := benchInput("https://example.com/mask.png")
	withRef := benchInput(Scheme + "up_abcdefghijklmnopqrstuvwxyz")
	b.Run("reference: copy of the body", func(b *testing.B) {
		b.SetBytes(int64(len(plain)))
		dst := make([]byte, len(plain))
		for b.Loop() {
			copy(dst, plain)
		}
	})
	b.Run("HasReferences, none", func(b *testing.B) {
		b.SetBytes(int64(len(plain)))
		for b.Loop() {
			if HasReferences(plain) {
				b.Fatal("found one")
			}
		}
	})
	b.Run("rewrite, one reference", func(b *testing.B) {
		b.SetBytes(int64(len(withRef)))
		for b.Loop() {
			if _, err := rewrite(withRef, func(string) (string, error) { return "https://s/x", nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
}
