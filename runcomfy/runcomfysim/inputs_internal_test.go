package runcomfysim

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestInputLimit: an input over the limit is refused whether the server announces
// its length or streams it, and one of exactly the limit is read. The real limit
// (256 MiB) is too large for a unit test, so the functions take it as a parameter.
func TestInputLimit(t *testing.T) {
	const limit = 1024
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := limit
		if r.URL.Path != "/exact" {
			n = limit + 1
		}
		if r.URL.Path == "/streamed" {
			// Flushing before the body forces chunked encoding: no Content-Length.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		}
		_, _ = w.Write([]byte(strings.Repeat("x", n)))
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	tests := []struct {
		path    string
		wantErr string
	}{
		{"/exact", ""},
		{"/announced", "content length 1025"},
		{"/streamed", "over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := fetchURL(context.Background(), client, srv.URL+tt.path, limit)
			if tt.wantErr == "" {
				if err != nil || got.Size != limit {
					t.Fatalf("got %+v, %v; want %d bytes", got, err, limit)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %+v, %v; want an error containing %q", got, err, tt.wantErr)
			}
		})
	}

	t.Run("data uri", func(t *testing.T) {
		ref, ok := classify("data:text/plain;base64," + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("y", limit+1))))
		if !ok {
			t.Fatal("data: URI not recognised")
		}
		if _, err := decodeDataURI(ref, limit); err == nil || !strings.Contains(err.Error(), "over the limit") {
			t.Fatalf("got %v, want an error over the limit", err)
		}
	})
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456789…"},
		{"ééééé", 5, "éé…"}, // é is two bytes: never cut inside a rune
	}
	for _, tt := range tests {
		if got := truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("truncate(%q, %d): got %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
