package redisstore_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/state/redisstore"
)

// TestPersistence reads what a Redis keeps on disk, from servers of the
// test's own (CONFIG is not the test's to change on a shared one).
func TestPersistence(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	tests := []struct {
		name  string
		extra []string
		want  redisstore.Persistence
	}{
		{name: "append-only file", want: redisstore.Persistence{AOF: true}},
		{name: "snapshots", extra: []string{"--appendonly", "no", "--save", "3600 1"}, want: redisstore.Persistence{RDB: true}},
		{name: "nothing on disk", extra: []string{"--appendonly", "no", "--save", ""}, want: redisstore.Persistence{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := redistest.StartPrivate(tt.extra...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Stop)
			b, err := redisstore.New(srv.Client(t), redisstore.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := b.Persistence(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Persistence = %+v, want %+v", got, tt.want)
			}
		})
	}
}
