package redisstore_test

// BenchmarkSlots measures what a concurrency cap adds to a submit: the
// reservation before RunComfy is called (and, for a submit that failed, its
// release), beside a Get of one record in the same run.
//
//	go test ./state/redisstore -run '^$' -bench BenchmarkSlots -benchtime 5000x

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

func BenchmarkSlots(b *testing.B) {
	// Written to its append-only file every second, as the production
	// guide recommends (the tests' default, every write, would time fsync).
	srv, err := redistest.StartPrivate("--appendfsync", "everysec")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()
	be, err := redisstore.New(srv.Client(b), redisstore.Options{Prefix: "bench:", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// A deployment capped at 1,000 with 999 unfinished requests bound; a
	// second one full (1,000 of 1,000) whose oldest places a refused
	// reservation checks.
	const limit = 1000
	fill := func(dep string, n int) {
		for i := range n {
			id := fmt.Sprintf("%s-req-%04d", dep, i)
			token, err := be.Reserve(ctx, dep, "tenant", state.Caps{Deployment: limit}, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			rec := &state.Record{RequestID: id, DeploymentID: dep, Owner: "tenant", State: runcomfy.StateQueued, CreatedAt: time.Now(), Seq: 1, Epoch: 1}
			if err := be.Save(ctx, rec, time.Hour); err != nil {
				b.Fatal(err)
			}
			if err := be.Bind(ctx, token, dep, "tenant", id); err != nil {
				b.Fatal(err)
			}
		}
	}
	fill("dep-room", limit-1)
	fill("dep-full", limit)
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"reference: Get of one record", func() error { _, err := be.Get(ctx, "dep-room-req-0003"); return err }},
		{"Reserve then Free, 999 of 1000 held", func() error {
			token, err := be.Reserve(ctx, "dep-room", "tenant", state.Caps{Deployment: limit}, time.Minute)
			if err != nil {
				return err
			}
			return be.Free(ctx, token, "dep-room", "tenant")
		}},
		{"Reserve refused, 1000 of 1000 held", func() error {
			_, err := be.Reserve(ctx, "dep-full", "tenant", state.Caps{Deployment: limit}, time.Minute)
			var ce *state.CapError
			if errors.As(err, &ce) {
				return nil
			}
			return fmt.Errorf("want a refusal, got %v", err)
		}},
	} {
		b.Run(c.name, func(b *testing.B) { benchLatency(b, c.call) })
	}
}
