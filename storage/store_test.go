package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const mib = 1 << 20

// newStore starts a server for t and returns a store on it under prefix.
func newStore(t *testing.T, prefix string) (*storage.Store, *s3test.Server) {
	t.Helper()
	srv := s3test.Start(t)
	return storeOn(t, srv, prefix), srv
}

func storeOn(t *testing.T, srv *s3test.Server, prefix string) *storage.Store {
	t.Helper()
	return srv.Store(t, prefix)
}

// rawClient is a plain client of srv, to look at the bucket behind the
// store's back.
func rawClient(t *testing.T, srv *s3test.Server) *minio.Client {
	t.Helper()
	c, err := minio.New(strings.TrimPrefix(srv.Endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// bucketContents lists every object and every unfinished multipart upload
// in the bucket.
func bucketContents(t *testing.T, srv *s3test.Server) (objects, uploads []string) {
	t.Helper()
	ctx := context.Background()
	c := rawClient(t, srv)
	for o := range c.ListObjects(ctx, srv.Bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		objects = append(objects, o.Key)
	}
	for u := range c.ListIncompleteUploads(ctx, srv.Bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		uploads = append(uploads, u.Key)
	}
	return objects, uploads
}

// data returns n deterministic pseudo-random bytes.
func data(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// opaque hides everything but Read, as a network body does: no size, no
// ReaderAt, no WriterTo for the client to take a shortcut through.
type opaque struct{ r io.Reader }

func (o *opaque) Read(p []byte) (int, error) { return o.r.Read(p) }

// counting counts what is read from it.
type counting struct {
	r io.Reader
	n int64
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestPutGetRoundTrip: what Put stores comes back byte for byte from Get,
// with its SHA-256 from Put, Get and Stat alike, for sizes on both sides of
// the single-PUT/multipart boundary and with the size known or not; no
// temporary object or unfinished upload is left behind.
func TestPutGetRoundTrip(t *testing.T) {
	t.Parallel()
	st, srv := newStore(t, "rt")
	ctx := context.Background()
	for i, tc := range []struct {
		name  string
		size  int
		known bool
	}{
		{"empty", 0, false},
		{"small known", 1000, true},
		{"small unknown", 1000, false},
		{"one part exactly", 8 * mib, false},
		{"one part and a byte", 8*mib + 1, false},
		{"several parts unknown", 21*mib + 123, false},
		{"several parts known", 17 * mib, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := data(tc.size, uint64(i))
			size := int64(-1)
			if tc.known {
				size = int64(tc.size)
			}
			key := st.Key("outputs", tc.name, "file.bin")
			obj, err := st.Put(ctx, key, &opaque{bytes.NewReader(body)}, size, "image/png", 64*mib)
			if err != nil {
				t.Fatal(err)
			}
			want := storage.Object{Key: key, Size: int64(tc.size), ContentType: "image/png", SHA256: sum(body)}
			if obj.Key != want.Key || obj.Size != want.Size || obj.ContentType != want.ContentType || obj.SHA256 != want.SHA256 || obj.ETag == "" {
				t.Errorf("Put = %+v, want %+v and an ETag", obj, want)
			}

			rc, got, err := st.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			back, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, body) {
				t.Errorf("Get returned %d bytes (sha256 %s), want the %d put (%s)", len(back), sum(back), len(body), sum(body))
			}
			if got.SHA256 != want.SHA256 || got.Size != want.Size || got.ContentType != want.ContentType {
				t.Errorf("Get object = %+v, want %+v", got, want)
			}
			stat, err := st.Stat(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if stat.SHA256 != want.SHA256 || stat.Size != want.Size || stat.ContentType != want.ContentType || stat.LastModified.IsZero() {
				t.Errorf("Stat = %+v, want %+v", stat, want)
			}
		})
	}
	objects, uploads := bucketContents(t, srv)
	for _, o := range objects {
		if strings.Contains(o, ".partial-") {
			t.Errorf("temporary object %s left behind", o)
		}
	}
	if len(uploads) > 0 {
		t.Errorf("unfinished uploads left behind: %v", uploads)
	}
}

// TestPutTooLarge: more bytes than maxBytes fail with ErrTooLarge, reading at
// most one byte past the limit, and leave neither the object nor parts of it
// in the bucket; a declared size over the limit fails before reading.
func TestPutTooLarge(t *testing.T) {
	t.Parallel()
	st, srv := newStore(t, "big")
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		size     int   // bytes the source has
		declared int64 // size passed to Put
		max      int64
		maxRead  int64 // most bytes Put may read
	}{
		{"small over", 1001, -1, 1000, 1001},
		{"past the first part", 12 * mib, -1, 9 * mib, 9*mib + 1},
		{"declared over", 5000, 5000, 4999, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := st.Key(tc.name)
			src := &counting{r: bytes.NewReader(data(tc.size, 7))}
			_, err := st.Put(ctx, key, src, tc.declared, "", tc.max)
			if !errors.Is(err, storage.ErrTooLarge) {
				t.Fatalf("Put error = %v, want ErrTooLarge", err)
			}
			if src.n > tc.maxRead {
				t.Errorf("read %d bytes of the source, want at most %d", src.n, tc.maxRead)
			}
			if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Stat after a refused Put: %v, want ErrNotFound", err)
			}
		})
	}
	if objects, uploads := bucketContents(t, srv); len(objects) > 0 || len(uploads) > 0 {
		t.Errorf("left behind: objects %v, uploads %v", objects, uploads)
	}
}

// errSource is what a failing source returns.
var errSource = errors.New("source broke")

// failing yields n bytes, then errSource.
type failing struct {
	r io.Reader
}

func (f *failing) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errSource
	}
	return n, err
}

// TestPutBadSource: a source that fails, or yields another number of bytes
// than declared, fails Put with an error saying so and stores nothing.
func TestPutBadSource(t *testing.T) {
	t.Parallel()
	st, srv := newStore(t, "bad")
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		src      io.Reader
		declared int64
		wantIs   error
		wantText string
	}{
		{"fails early", &failing{bytes.NewReader(data(100, 1))}, -1, errSource, ""},
		{"fails after a part", &failing{bytes.NewReader(data(10*mib, 1))}, -1, errSource, ""},
		{"shorter than declared", bytes.NewReader(data(50, 1)), 100, io.ErrUnexpectedEOF, ""},
		{"shorter than declared, a mismatch", bytes.NewReader(data(50, 1)), 100, storage.ErrSizeMismatch, ""},
		{"longer than declared", bytes.NewReader(data(150, 1)), 100, storage.ErrSizeMismatch, "more than the 100 bytes declared"},
		{"longer than declared, large", &opaque{bytes.NewReader(data(10*mib, 1))}, 9 * mib, storage.ErrSizeMismatch, "more than the 9437184 bytes declared"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := st.Put(ctx, st.Key(tc.name), tc.src, tc.declared, "", 64*mib)
			if err == nil {
				t.Fatal("Put succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Put error = %v, want one wrapping %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("Put error = %v, want one saying %q", err, tc.wantText)
			}
			if errors.Is(err, storage.ErrTooLarge) {
				t.Errorf("Put error = %v is ErrTooLarge; the limit was not reached", err)
			}
		})
	}
	if objects, uploads := bucketContents(t, srv); len(objects) > 0 || len(uploads) > 0 {
		t.Errorf("left behind: objects %v, uploads %v", objects, uploads)
	}
}

// TestPutArguments: calls that cannot be right are refused without a
// request.
func TestPutArguments(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, "args")
	ctx := context.Background()
	for _, tc := range []struct {
		name, key string
		size, max int64
	}{
		{"no limit", st.Key("a"), -1, 0},
		{"negative size", st.Key("a"), -2, 10},
		{"key outside the prefix", "elsewhere/a", -1, 10},
		{"the prefix itself", st.Key(), -1, 10},
		{"dot-dot key", "args/../a", -1, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := st.Put(ctx, tc.key, strings.NewReader("x"), tc.size, "", tc.max); err == nil {
				t.Error("Put succeeded")
			}
		})
	}
}

// TestPresign: a presigned URL fetches the object with plain net/http, says
// its lifetime, stops working once that has passed, and does not open
// another key.
func TestPresign(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, "pre")
	ctx := context.Background()
	body := []byte("presigned content")
	key := st.Key("req 1", "out.png")
	if _, err := st.Put(ctx, key, bytes.NewReader(body), int64(len(body)), "image/png", 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, st.Key("other"), strings.NewReader("secret"), 6, "", 1000); err != nil {
		t.Fatal(err)
	}

	raw, err := st.Presign(ctx, key, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Query().Get("X-Amz-Expires"); got != "600" {
		t.Errorf("X-Amz-Expires = %q, want 600", got)
	}
	status, got, ctype := fetch(t, raw)
	if status != http.StatusOK || !bytes.Equal(got, body) || ctype != "image/png" {
		t.Errorf("GET presigned: %d %q %s, want 200 %q image/png", status, got, ctype, body)
	}

	// The signature covers the path: the same query on another key fails.
	other := *u
	other.Path = strings.Replace(u.Path, "req%201/out.png", "other", 1)
	other.RawPath = ""
	if other.Path == u.Path {
		t.Fatalf("could not rewrite %s", u.Path)
	}
	if status, _, _ := fetch(t, other.String()); status != http.StatusForbidden {
		t.Errorf("GET of another key with the signature: %d, want 403", status)
	}

	// A one-second URL works at once and fails soon after.
	short, err := st.Presign(ctx, key, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, _, _ := fetch(t, short)
		if status == http.StatusForbidden {
			break
		}
		if status != http.StatusOK {
			t.Fatalf("GET of a short-lived URL: %d, want 200 then 403", status)
		}
		if time.Now().After(deadline) {
			t.Fatal("a one-second presigned URL still works after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, d := range []time.Duration{0, time.Millisecond, 8 * 24 * time.Hour} {
		if _, err := st.Presign(ctx, key, d); err == nil {
			t.Errorf("Presign with lifetime %v succeeded", d)
		}
	}
}

func fetch(t *testing.T, raw string) (status int, body []byte, contentType string) {
	t.Helper()
	resp, err := http.Get(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header.Get("Content-Type")
}

// TestPresignPublicBase: with public_base, Presign returns the public URL of
// the key (below the prefix, each segment escaped once more, since keys
// hold literal "%"), without asking the server.
func TestPresignPublicBase(t *testing.T) {
	t.Parallel()
	cfg, err := storage.ParseURL("s3://bucket/team/outputs?endpoint=http://127.0.0.1:1&public_base=https://cdn.example.com/o/")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Getenv = func(k string) string {
		return map[string]string{"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}[k]
	}
	st, err := storage.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	for _, tc := range []struct {
		parts []string
		want  string
	}{
		{[]string{"req1", "out.png"}, "https://cdn.example.com/o/req1/out.png"},
		{[]string{"a b", "..", "ü.png"}, "https://cdn.example.com/o/a%2520b/%252E%252E/%25C3%25BC.png"},
	} {
		got, err := st.Presign(context.Background(), st.Key(tc.parts...), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("Presign(Key(%q)) = %s, want %s", tc.parts, got, tc.want)
		}
	}
	if _, err := st.Presign(context.Background(), "team/other/x", time.Hour); err == nil {
		t.Error("Presign of a key outside the prefix succeeded")
	}
	// Sign ignores the public base: a signed URL on the store's endpoint.
	signed, err := st.Sign(context.Background(), st.Key("req1", "out.png"), time.Hour)
	if err != nil || !strings.HasPrefix(signed, "http://127.0.0.1:1/bucket/team/outputs/req1/out.png?") || !strings.Contains(signed, "X-Amz-Signature=") {
		t.Errorf("Sign = %s, %v; want a presigned URL on the endpoint", signed, err)
	}
}

// TestKey: parts become single, safe, distinct segments under the prefix.
func TestKey(t *testing.T) {
	t.Parallel()
	mk := func(prefix string) *storage.Store {
		cfg, err := storage.ParseURL("s3://bucket/" + prefix + "?endpoint=http://127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Getenv = func(k string) string {
			return map[string]string{"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}[k]
		}
		st, err := storage.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		return st
	}
	p, root := mk("p/q"), mk("")
	for _, tc := range []struct {
		st    *storage.Store
		parts []string
		want  string
	}{
		{p, nil, "p/q"},
		{root, nil, ""},
		{p, []string{"outputs", "req-1", "image_00001_.png"}, "p/q/outputs/req-1/image_00001_.png"},
		{root, []string{"a", "b"}, "a/b"},
		{p, []string{"a/b"}, "p/q/a%2Fb"},
		{p, []string{".."}, "p/q/%2E%2E"},
		{p, []string{"."}, "p/q/%2E"},
		{p, []string{"..."}, "p/q/..."},
		{p, []string{""}, "p/q/%"},
		{p, []string{"%2E%2E"}, "p/q/%252E%252E"},
		{p, []string{"a b+c?d#e&f=g~h"}, "p/q/a%20b%2Bc%3Fd%23e%26f%3Dg%7Eh"},
		{p, []string{"ü", "\x00\n"}, "p/q/%C3%BC/%00%0A"},
		{root, []string{"/abs"}, "%2Fabs"},
	} {
		if got := tc.st.Key(tc.parts...); got != tc.want {
			t.Errorf("Key(%q) = %q, want %q", tc.parts, got, tc.want)
		}
	}
	// Distinct part lists give distinct keys.
	tricky := []string{"", ".", "..", "%", "%2E", "a", "a/b", "a%2Fb", "/", "%25"}
	seen := map[string][]string{}
	for _, a := range tricky {
		for _, b := range tricky {
			k := p.Key(a, b)
			if prev, ok := seen[k]; ok {
				t.Errorf("Key(%q) = Key(%q) = %q", []string{a, b}, prev, k)
			}
			seen[k] = []string{a, b}
		}
	}
}

// TestStatGetDelete: missing keys are ErrNotFound for Stat and Get; Delete
// removes an object and deleting again is no error.
func TestStatGetDelete(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, "sgd")
	ctx := context.Background()
	key := st.Key("x.txt")
	if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat of a missing key: %v, want ErrNotFound", err)
	}
	if rc, _, err := st.Get(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("Get of a missing key: %v, want ErrNotFound", err)
	}
	if _, err := st.Put(ctx, key, strings.NewReader("hello"), 5, "text/plain", 100); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, key); err != nil {
		t.Fatalf("Stat after Put: %v", err)
	}
	if err := st.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after Delete: %v, want ErrNotFound", err)
	}
	if err := st.Delete(ctx, key); err != nil {
		t.Errorf("second Delete: %v, want nil", err)
	}
	if _, err := st.Stat(ctx, "elsewhere/x.txt"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat outside the prefix: %v, want a refusal", err)
	}
}

// TestDeleteOlderThan: the sweep deletes exactly the objects below the
// directory that are older than the cut-off: not newer ones, not a sibling
// directory sharing the name's start, not another store's prefix.
func TestDeleteOlderThan(t *testing.T) {
	t.Parallel()
	st, srv := newStore(t, "p")
	other := storeOn(t, srv, "q")
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour)
	put := func(s *storage.Store, key string, backdate bool) {
		t.Helper()
		if _, err := s.Put(ctx, key, strings.NewReader("x"), 1, "", 10); err != nil {
			t.Fatal(err)
		}
		if backdate {
			if err := srv.Backdate(key, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(st, st.Key("old", "r1", "a"), true)
	put(st, st.Key("old", "r2", "b"), true)
	put(st, st.Key("old", "r3", "c"), false)
	put(st, st.Key("older", "d"), true)
	put(other, other.Key("old", "e"), true)
	cutoff := time.Now().Add(-24 * time.Hour)

	n, err := st.DeleteOlderThan(ctx, st.Key("old"), cutoff)
	if err != nil || n != 2 {
		t.Fatalf("DeleteOlderThan(old) = %d, %v; want 2, nil", n, err)
	}
	for key, want := range map[string]bool{
		st.Key("old", "r1", "a"): false, st.Key("old", "r2", "b"): false, st.Key("old", "r3", "c"): true, st.Key("older", "d"): true,
	} {
		if _, err := st.Stat(ctx, key); (err == nil) != want {
			t.Errorf("after the sweep, Stat(%s) = %v; want present %v", key, err, want)
		}
	}

	n, err = st.DeleteOlderThan(ctx, st.Key(), cutoff)
	if err != nil || n != 1 {
		t.Fatalf("DeleteOlderThan(prefix) = %d, %v; want 1, nil", n, err)
	}
	if _, err := other.Stat(ctx, other.Key("old", "e")); err != nil {
		t.Errorf("another prefix's object was swept: %v", err)
	}
	if _, err := st.DeleteOlderThan(ctx, "q", cutoff); err == nil {
		t.Error("DeleteOlderThan outside the prefix succeeded")
	}
}

// TestSetExpiry: versitygw has no lifecycle rules, so SetExpiry reports
// ErrUnsupported (the caller then sweeps with DeleteOlderThan).
func TestSetExpiry(t *testing.T) {
	t.Parallel()
	st, _ := newStore(t, "exp")
	err := st.SetExpiry(context.Background(), st.Key("outputs"), 7)
	if !errors.Is(err, storage.ErrUnsupported) {
		t.Errorf("SetExpiry on versitygw: %v, want ErrUnsupported", err)
	}
	if err := st.SetExpiry(context.Background(), st.Key("outputs"), -1); err == nil || errors.Is(err, storage.ErrUnsupported) {
		t.Errorf("SetExpiry with -1 days: %v, want a refusal", err)
	}
}

// TestCheck: Check passes on a reachable bucket with good credentials and
// fails, within its bound, on a missing bucket, wrong credentials or a
// server that is down.
func TestCheck(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		url     string
		getenv  func(string) string
		wantErr string
	}{
		{"good", srv.URL("p"), srv.Getenv, ""},
		{"missing bucket", strings.Replace(srv.URL("p"), "s3://"+srv.Bucket, "s3://no-such-bucket", 1), srv.Getenv, "does not exist"},
		{"wrong secret", srv.URL("p"), func(k string) string {
			if k == "AWS_SECRET_ACCESS_KEY" {
				return "wrong"
			}
			return srv.Getenv(k)
		}, "bucket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := storage.ParseURL(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Getenv = tc.getenv
			st, err := storage.New(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			err = st.Check(ctx)
			if tc.wantErr == "" && err != nil {
				t.Errorf("Check: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Check: %v, want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

// TestStoreDown: with the server down, calls fail within the caller's
// deadline instead of hanging, and work again once it is back.
func TestStoreDown(t *testing.T) {
	t.Parallel()
	st, srv := newStore(t, "down")
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := st.Put(ctx, st.Key("a"), strings.NewReader("x"), 1, "", 10); err == nil {
		t.Fatal("Put succeeded with the server down")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Put failed after %v, with a deadline of 2s", d)
	}
	// Check does not retry: a store that is down is reported at once.
	start = time.Now()
	if err := st.Check(context.Background()); err == nil {
		t.Fatal("Check succeeded with the server down")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Check failed after %v, want at once", d)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(context.Background(), st.Key("a"), strings.NewReader("x"), 1, "", 10); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
}

// ExampleStore_Key shows the keys a store builds.
func ExampleStore_Key() {
	cfg, _ := storage.ParseURL("s3://bucket/gateway?endpoint=http://127.0.0.1:9000")
	cfg.Getenv = func(k string) string {
		return map[string]string{"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}[k]
	}
	st, err := storage.New(context.Background(), cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()
	fmt.Println(st.Key("outputs", "tenant/a", "req-1", "image.png"))
	// Output: gateway/outputs/tenant%2Fa/req-1/image.png
}

// TestAbortStaleUploads: multipart uploads that a dead copier left (begun,
// a part sent, never completed) are aborted once older than the bound;
// newer ones, and those outside the store's prefix, are left alone.
func TestAbortStaleUploads(t *testing.T) {
	t.Parallel()
	st, srv := newStore(t, "outputs")
	ctx := context.Background()
	core := minio.Core{Client: rawClient(t, srv)}
	begin := func(key string) {
		t.Helper()
		id, err := core.NewMultipartUpload(ctx, srv.Bucket, key, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		part := data(5<<20, 1)
		if _, err := core.PutObjectPart(ctx, srv.Bucket, key, id, 1, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	begin(st.Key("team", "dep", "req", "9", "a.png"))
	begin("elsewhere/a.png")
	if n, err := st.AbortStaleUploads(ctx, st.Key(), time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("uploads begun within the bound: aborted %d, %v; want none", n, err)
	}
	if n, err := st.AbortStaleUploads(ctx, st.Key(), time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Errorf("AbortStaleUploads = %d, %v; want the one under the prefix", n, err)
	}
	if _, uploads := bucketContents(t, srv); len(uploads) != 1 || uploads[0] != "elsewhere/a.png" {
		t.Errorf("unfinished uploads left: %v, want only the one outside the prefix", uploads)
	}
}
