package uploads_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/storage"
	"github.com/comfygate/comfygate/uploads"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// pngBytes is a PNG of n bytes (a signature, then filler): what the
// sniffer calls image/png.
func pngBytes(n int) []byte {
	b := bytes.Repeat([]byte{7}, n)
	copy(b, "\x89PNG\r\n\x1a\n")
	for i := 8; i < n; i++ {
		b[i] = byte(i * 31)
	}
	return b
}

type fixture struct {
	srv   *s3test.Server
	store *storage.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := s3test.Start(t)
	return &fixture{srv: srv, store: srv.Store(t, "team")}
}

func (f *fixture) uploads(t *testing.T, cfg uploads.Config) *uploads.Uploads {
	t.Helper()
	cfg.Store = f.store
	cfg.Logger = slog.New(slog.DiscardHandler)
	u, err := uploads.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// fetch GETs url and returns the body; it fails the test on anything but 200.
func fetch(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v %s", url, resp.StatusCode, err, b)
	}
	return b
}

// TestUploadAndResolve: an upload's bytes are stored with their checksum,
// and a reference to it in an input becomes a presigned URL that fetches
// them; the rest of the input is untouched, byte for byte.
func TestUploadAndResolve(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{})
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		size int
		// declare says whether the size is given up front.
		declare bool
	}{
		{"small, size known", 3000, true},
		{"small, size unknown", 3000, false},
		{"over one part, size unknown", 9 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := pngBytes(tc.size)
			size := int64(-1)
			if tc.declare {
				size = int64(len(data))
			}
			up, err := u.Put(ctx, "acme", "image/png", size, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if up.Size != int64(len(data)) || up.SHA256 != hex.EncodeToString(sum[:]) || up.ContentType != "image/png" ||
				!strings.HasPrefix(up.Reference(), "comfygate://uploads/up_") || !up.ExpiresAt.After(up.CreatedAt) {
				t.Fatalf("upload = %+v", up)
			}
			input := `{"overrides": {"12": {"inputs": {"image": "` + up.Reference() + `", "seed": 18446744073709551615}},` +
				` "13": {"inputs": {"images": ["` + up.Reference() + `", "https://x.test/a.png"], "n": 1.50}}}}`
			out, err := u.Resolve(ctx, "acme", input)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "comfygate://") || !strings.Contains(out, `"seed": 18446744073709551615}`) || !strings.Contains(out, `"n": 1.50}`) {
				t.Fatalf("resolved input: %s", out)
			}
			var v struct {
				Overrides map[string]struct {
					Inputs struct {
						Image  string   `json:"image"`
						Images []string `json:"images"`
					} `json:"inputs"`
				} `json:"overrides"`
			}
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatal(err)
			}
			url := v.Overrides["12"].Inputs.Image
			if got := fetch(t, url); !bytes.Equal(got, data) {
				t.Errorf("the URL fetched %d bytes, want the %d uploaded", len(got), len(data))
			}
			if v.Overrides["13"].Inputs.Images[0] != url || v.Overrides["13"].Inputs.Images[1] != "https://x.test/a.png" {
				t.Errorf("images: %v", v.Overrides["13"].Inputs.Images)
			}
		})
	}
}

// TestResolveRefuses: a reference to another tenant's upload, to one that
// has expired, to none, or one that is malformed, fails the resolution
// with the error that says so.
func TestResolveRefuses(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{Lifetime: time.Hour})
	ctx := t.Context()
	up, err := u.Put(ctx, "acme", "image/png", -1, bytes.NewReader(pngBytes(100)))
	if err != nil {
		t.Fatal(err)
	}
	old, err := u.Put(ctx, "acme", "image/png", -1, bytes.NewReader(pngBytes(100)))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Backdate("team/.uploads/acme/"+old.ID, time.Now().Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, tenant, ref string
		want              error
	}{
		{"another tenant's", "other", up.Reference(), uploads.ErrNotFound},
		{"expired", "acme", old.Reference(), uploads.ErrNotFound},
		{"never uploaded", "acme", "comfygate://uploads/up_aaaaaaaaaaaaaaaaaaaaaaaaaa", uploads.ErrNotFound},
		{"malformed id", "acme", "comfygate://uploads/../x", uploads.ErrBadReference},
		{"trailing text", "acme", up.Reference() + " and more", uploads.ErrBadReference},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := u.Resolve(ctx, tc.tenant, `{"image": "`+tc.ref+`"}`)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Resolve = %v, want %v", err, tc.want)
			}
		})
	}
	// An input may hold at most 64 references, counted each time: a body of
	// repeated ones would grow many times over on its way to RunComfy.
	many := `["` + strings.Repeat(up.Reference()+`","`, 64) + up.Reference() + `"]`
	if _, err := u.Resolve(ctx, "acme", many); !errors.Is(err, uploads.ErrBadReference) {
		t.Errorf("65 references: %v, want ErrBadReference", err)
	}
	// The upload itself still resolves for its tenant.
	if _, err := u.Resolve(ctx, "acme", `{"image": "`+up.Reference()+`"}`); err != nil {
		t.Fatal(err)
	}
	// The sweep deletes the expired upload and keeps the other.
	if n, err := u.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	if _, err := f.store.Stat(ctx, f.store.Key(".uploads", "acme", up.ID)); err != nil {
		t.Fatalf("the live upload: %v", err)
	}
}

// TestInline: an upload at most InlineMaxBytes becomes a data: URI of its
// bytes; a larger one a URL.
func TestInline(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{InlineMaxBytes: 1000})
	ctx := t.Context()
	small, err := u.Put(ctx, "acme", "image/png", 1000, bytes.NewReader(pngBytes(1000)))
	if err != nil {
		t.Fatal(err)
	}
	large, err := u.Put(ctx, "acme", "image/png", 1001, bytes.NewReader(pngBytes(1001)))
	if err != nil {
		t.Fatal(err)
	}
	out, err := u.Resolve(ctx, "acme", `["`+small.Reference()+`","`+large.Reference()+`"]`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := "data:image/png;base64," + base64.StdEncoding.EncodeToString(pngBytes(1000))
	if got[0] != want {
		t.Errorf("small upload became %.80s…", got[0])
	}
	if !strings.HasPrefix(got[1], "http://") || !bytes.Equal(fetch(t, got[1]), pngBytes(1001)) {
		t.Errorf("large upload became %.80s…", got[1])
	}
}

// TestPutRefuses: a type not taken, bytes of another kind, an empty file,
// a file over the limit (declared or not) and one shorter than declared are
// refused, and nothing is stored.
func TestPutRefuses(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{MaxBytes: 4096})
	ctx := t.Context()
	html := []byte("<!DOCTYPE html><html><script>alert(1)</script></html>")
	for _, tc := range []struct {
		name, ctype string
		size        int64
		body        []byte
		want        error
	}{
		{"no type", "", -1, pngBytes(100), uploads.ErrType},
		{"not a media type", "png", -1, pngBytes(100), uploads.ErrType},
		{"type not taken", "application/pdf", -1, pngBytes(100), uploads.ErrType},
		{"html as an image", "image/png", -1, html, uploads.ErrType},
		{"svg as an image", "image/svg+xml", -1, []byte(`<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>`), uploads.ErrType},
		{"a wildcard", "image/*", -1, pngBytes(100), uploads.ErrType},
		{"png as jpeg", "image/jpeg", -1, pngBytes(100), uploads.ErrType},
		{"zeros as png", "image/png", -1, make([]byte, 600), uploads.ErrType},
		{"an executable as png", "image/png", -1, append([]byte("MZ\x90\x00"), make([]byte, 600)...), uploads.ErrType},
		{"empty", "image/png", -1, nil, uploads.ErrEmpty},
		{"declared empty", "image/png", 0, nil, uploads.ErrEmpty},
		{"declared too large", "image/png", 4097, pngBytes(4097), uploads.ErrTooLarge},
		{"too large", "image/png", -1, pngBytes(4097), uploads.ErrTooLarge},
		{"shorter than declared", "image/png", 2000, pngBytes(1000), uploads.ErrSizeMismatch},
		{"longer than declared", "image/png", 1000, pngBytes(2000), uploads.ErrSizeMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := u.Put(ctx, "acme", tc.ctype, tc.size, bytes.NewReader(tc.body)); !errors.Is(err, tc.want) {
				t.Fatalf("Put = %v, want %v", err, tc.want)
			}
		})
	}
	if n, err := f.store.DeleteOlderThan(ctx, f.store.Key(), time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("the refused uploads left %d objects (%v)", n, err)
	}
	// Parameters and case do not matter; the stored type is the bare one.
	up, err := u.Put(ctx, "acme", "Image/PNG; name=x.png", -1, bytes.NewReader(pngBytes(100)))
	if err != nil || up.ContentType != "image/png" {
		t.Fatalf("Put = %+v, %v", up, err)
	}
}

// TestStoreDown: a store that does not answer fails an upload and a
// resolution with ErrStore, which says nothing of the store.
func TestStoreDown(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{})
	ctx := t.Context()
	up, err := u.Put(ctx, "acme", "image/png", -1, bytes.NewReader(pngBytes(100)))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := u.Put(short, "acme", "image/png", -1, bytes.NewReader(pngBytes(100))); !errors.Is(err, uploads.ErrStore) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Put = %v, want ErrStore", err)
	}
	if _, err := u.Resolve(short, "acme", `"`+up.Reference()+`"`); !errors.Is(err, uploads.ErrStore) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Resolve = %v, want ErrStore", err)
	}
}

// TestNewRefusesBadTypes: a Types entry that is not type/subtype or
// type/* is a configuration error.
func TestNewRefusesBadTypes(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"image", "*/*", "image/png;x=1", "image/p*", "/png"} {
		if _, err := uploads.New(uploads.Config{Store: f.store, Logger: slog.New(slog.DiscardHandler), Types: []string{p}}); err == nil {
			t.Errorf("New took type %q", p)
		}
	}
}

// TestPerTenantBound: a tenant with PerTenant uploads in progress is
// refused another (ErrBusy) while other tenants are not; once one ends,
// the tenant may upload again.
func TestPerTenantBound(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{PerTenant: 1})
	ctx := t.Context()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := u.Put(ctx, "acme", "image/png", -1, pr)
		done <- err
	}()
	// The first bytes arrive: the upload is in progress.
	if _, err := pw.Write(pngBytes(600)); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Put(ctx, "acme", "image/png", -1, bytes.NewReader(pngBytes(100))); !errors.Is(err, uploads.ErrBusy) {
		t.Errorf("a second upload of the tenant: %v, want ErrBusy", err)
	}
	if _, err := u.Put(ctx, "other", "image/png", -1, bytes.NewReader(pngBytes(100))); err != nil {
		t.Errorf("another tenant's upload: %v", err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := u.Put(ctx, "acme", "image/png", -1, bytes.NewReader(pngBytes(100))); err != nil {
		t.Errorf("after the first ended: %v", err)
	}
}

// TestKeylessTenant: a gateway without API keys has one tenant, "": its
// uploads are stored and resolve like any other's.
func TestKeylessTenant(t *testing.T) {
	f := newFixture(t)
	u := f.uploads(t, uploads.Config{})
	ctx := t.Context()
	data := pngBytes(2000)
	up, err := u.Put(ctx, "", "image/png", -1, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	out, err := u.Resolve(ctx, "", `"`+up.Reference()+`"`)
	if err != nil {
		t.Fatal(err)
	}
	var url string
	if err := json.Unmarshal([]byte(out), &url); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fetch(t, url), data) {
		t.Error("the URL does not fetch the upload")
	}
	if _, err := f.store.Stat(ctx, f.store.Key(".uploads", "_", up.ID)); err != nil {
		t.Errorf("the keyless upload is not under .uploads/_/: %v", err)
	}
	if _, err := u.Resolve(ctx, "acme", `"`+up.Reference()+`"`); !errors.Is(err, uploads.ErrNotFound) {
		t.Errorf("a keyed tenant resolving the keyless upload: %v", err)
	}
}
