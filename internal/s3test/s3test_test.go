package s3test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// put stores body under key through the S3 API and returns it back.
func roundTrip(t *testing.T, ctx context.Context, s *Server, key string, body []byte) []byte {
	t.Helper()
	c := s.client()
	if _, err := c.PutObject(ctx, s.Bucket, key, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return get(t, ctx, s, key)
}

func get(t *testing.T, ctx context.Context, s *Server, key string) []byte {
	t.Helper()
	obj, err := s.client().GetObject(ctx, s.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Close()
	got, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return got
}

// TestStartServesBucket: Start returns a server that answers with its own
// credentials only, on loopback, with the bucket created, and Close takes it
// away.
func TestStartServesBucket(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") {
		t.Errorf("Endpoint = %q, want http://127.0.0.1:PORT", s.Endpoint)
	}
	if s.Region != "us-east-1" || s.Bucket == "" || s.AccessKey == "" || s.SecretKey == "" {
		t.Errorf("server = %+v, want region us-east-1 and a bucket and keys", s)
	}
	ok, err := s.client().BucketExists(ctx, s.Bucket)
	if err != nil || !ok {
		t.Fatalf("BucketExists(%s) = %v, %v; want true", s.Bucket, ok, err)
	}
	want := []byte("hello, object store")
	if got := roundTrip(t, ctx, s, "a/b/c.txt", want); !bytes.Equal(got, want) {
		t.Errorf("got %q back, want %q", got, want)
	}

	// An unsigned request is refused: the server checks credentials.
	resp, err := http.Get(s.Endpoint + "/" + s.Bucket + "/a/b/c.txt")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous GET: status %d, want 403", resp.StatusCode)
	}

	s.Close()
	if s.answers(ctx, s.client()) {
		t.Error("server still answers after Close")
	}
}

// TestRestartKeepsData: a stopped server refuses connections, and after
// Restart it answers on the same endpoint with the objects it had.
func TestRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	endpoint := s.Endpoint
	want := []byte("survives a restart")
	roundTrip(t, ctx, s, "kept", want)

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.answers(ctx, s.client()) {
		t.Fatal("server answers after Stop")
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Endpoint != endpoint {
		t.Errorf("endpoint after restart = %s, want %s", s.Endpoint, endpoint)
	}
	if got := get(t, ctx, s, "kept"); !bytes.Equal(got, want) {
		t.Errorf("after restart got %q, want %q", got, want)
	}
	// Restart of a running server works too.
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := get(t, ctx, s, "kept"); !bytes.Equal(got, want) {
		t.Errorf("after second restart got %q, want %q", got, want)
	}
}

// TestURLAndGetenv: URL gives the storage URL form, and Getenv answers the
// AWS credential variables only.
func TestURLAndGetenv(t *testing.T) {
	s := &Server{Endpoint: "http://127.0.0.1:1234", Bucket: "b", Region: "us-east-1", AccessKey: "ak", SecretKey: "sk"}
	for _, tc := range []struct{ prefix, wantPath string }{
		{"", "/"},
		{"outputs", "/outputs"},
		{"/a/b/", "/a/b"},
	} {
		u, err := url.Parse(s.URL(tc.prefix))
		if err != nil {
			t.Fatal(err)
		}
		if u.Scheme != "s3" || u.Host != "b" || u.Path != tc.wantPath ||
			u.Query().Get("endpoint") != s.Endpoint || u.Query().Get("region") != "us-east-1" {
			t.Errorf("URL(%q) = %s, want s3://b%s?endpoint=%s&region=us-east-1", tc.prefix, u, tc.wantPath, s.Endpoint)
		}
	}
	for name, want := range map[string]string{"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "AWS_SESSION_TOKEN": "", "HOME": ""} {
		if got := s.Getenv(name); got != want {
			t.Errorf("Getenv(%s) = %q, want %q", name, got, want)
		}
	}
}

// TestBackdate: Backdate changes the LastModified the server reports.
func TestBackdate(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	roundTrip(t, ctx, s, "old/one", []byte("x"))
	when := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.Backdate("old/one", when); err != nil {
		t.Fatal(err)
	}
	info, err := s.client().StatObject(ctx, s.Bucket, "old/one", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !info.LastModified.Equal(when) {
		t.Errorf("LastModified = %v, want %v", info.LastModified, when)
	}
	if err := s.Backdate("../escape", when); err == nil {
		t.Error("Backdate accepted a key outside the bucket")
	}
}
