package runcomfysim_test

import (
	"bytes"
	"image/png"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// TestOutputsOfRealisticSize: with OutputBytes, every output image is a
// valid PNG of exactly that size, its bytes the same on every download and
// what WriteOutput writes, and different from one file (or request) to the
// next; HEAD tells the size without the body.
func TestOutputsOfRealisticSize(t *testing.T) {
	const size = 3<<20 + 17
	opts := manual()
	opts.OutputBytes = size
	h := newHarness(t, opts)
	h.sim.SetOutcome(func(string, []byte) runcomfysim.Outcome { return runcomfysim.Outcome{Images: 2} })
	a := h.submit(t, "v1", "dep", "", `{}`)
	b := h.submit(t, "v1", "dep", "", `{}`)
	advance(t, h.sim, a, 2)
	advance(t, h.sim, b, 2)

	get := func(method, path string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, h.srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}
	files := map[string][]byte{}
	for _, id := range []string{a, b} {
		for _, name := range []string{"ComfyUI_00001_.png", "ComfyUI_00002_.png"} {
			path := "/media/" + id + "/" + name
			resp, body := get(http.MethodGet, path)
			if resp.StatusCode != http.StatusOK || len(body) != size || resp.Header.Get("Content-Length") != strconv.Itoa(size) {
				t.Fatalf("GET %s: HTTP %d, %d bytes (Content-Length %s), want %d", path, resp.StatusCode, len(body), resp.Header.Get("Content-Length"), size)
			}
			if _, err := png.Decode(bytes.NewReader(body)); err != nil {
				t.Errorf("%s is not a PNG: %v", path, err)
			}
			var want bytes.Buffer
			if err := h.sim.WriteOutput(&want, id, name); err != nil || !bytes.Equal(body, want.Bytes()) {
				t.Errorf("%s differs from WriteOutput (%v)", path, err)
			}
			if _, again := get(http.MethodGet, path); !bytes.Equal(again, body) {
				t.Errorf("%s changed between two downloads", path)
			}
			for other, prev := range files {
				if bytes.Equal(prev, body) {
					t.Errorf("%s has the bytes of %s", path, other)
				}
			}
			files[path] = body
			if resp, body := get(http.MethodHead, path); resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Length") != strconv.Itoa(size) {
				t.Errorf("HEAD %s: HTTP %d, %d bytes, Content-Length %s", path, resp.StatusCode, len(body), resp.Header.Get("Content-Length"))
			}
		}
	}
}
