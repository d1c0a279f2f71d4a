package redisstore_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/state/redisstore"
	"github.com/comfygate/comfygate/state/statetest"
)

// server is the Redis every test of this package shares, each under its own
// key prefix; set by TestMain.
var server *redistest.Server

func TestMain(m *testing.M) {
	var err error
	server, err = redistest.Find()
	if err != nil {
		fmt.Fprintln(os.Stderr, "redis:", err)
		os.Exit(1)
	}
	code := m.Run()
	server.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newBackend returns a running backend on its own prefix, stopped at cleanup.
func newBackend(t *testing.T) *redisstore.Backend {
	t.Helper()
	b, err := redisstore.New(server.Client(t), redisstore.Options{
		Prefix: redistest.Prefix(t),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, func(context.Context) error { return nil })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return b
}

func TestConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) statetest.Backend { return newBackend(t) })
}
