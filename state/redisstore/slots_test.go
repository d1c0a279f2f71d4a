package redisstore_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// TestSlotFollowsRecord pins what the conformance suite cannot tell apart
// from a reservation's own check of ended requests: a bound slot expires
// with its record (its score follows each save's TTL) and the final save
// itself removes it.
func TestSlotFollowsRecord(t *testing.T) {
	ctx := context.Background()
	prefix := redistest.Prefix(t)
	rdb := server.Client(t)
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	const dep, id = "dep-slots", "req-slot-follows"
	counts := []string{prefix + "cap:{" + dep + "}", prefix + "cap:{" + dep + "}:a"}
	token, err := b.Reserve(ctx, dep, "a", state.Caps{Deployment: 1}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rec := &state.Record{RequestID: id, DeploymentID: dep, Owner: "a", State: runcomfy.StateQueued, CreatedAt: time.Now(), Seq: 1, Epoch: 1}
	if err := b.Save(ctx, rec.Clone(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Bind(ctx, token, dep, "a", id); err != nil {
		t.Fatal(err)
	}
	score := func(key string) time.Duration {
		t.Helper()
		s, err := rdb.ZScore(ctx, key, id).Result()
		if err != nil {
			t.Fatalf("ZSCORE %s %s: %v", key, id, err)
		}
		return time.Until(time.UnixMilli(int64(s)))
	}
	for _, k := range counts {
		if d := score(k); d < 59*time.Minute || d > time.Hour {
			t.Fatalf("%s: the slot expires in %s, want the record's hour", k, d)
		}
		if n := rdb.ZCard(ctx, k).Val(); n != 1 {
			t.Fatalf("%s holds %d members after the bind, want the request alone", k, n)
		}
	}
	rec.State, rec.StartedAt, rec.Seq = runcomfy.StateRunning, time.Now(), 2
	if err := b.Save(ctx, rec.Clone(), 3*time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, k := range counts {
		if d := score(k); d < 179*time.Minute || d > 3*time.Hour {
			t.Fatalf("%s: after a save with a 3 h TTL the slot expires in %s", k, d)
		}
		if d := rdb.PTTL(ctx, k).Val(); d < 179*time.Minute {
			t.Fatalf("%s expires in %s, before the place it holds", k, d)
		}
	}
	rec.State, rec.FinishedAt, rec.Seq = runcomfy.StateSucceeded, time.Now(), 3
	if err := b.Save(ctx, rec.Clone(), time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, k := range counts {
		if n := rdb.ZCard(ctx, k).Val(); n != 0 {
			t.Fatalf("%s holds %d members after the final save, want none", k, n)
		}
	}
	if f := rdb.HExists(ctx, redisstore.RecordKey(prefix, id), "cap").Val(); f {
		t.Fatal("the final record still names its counts")
	}
}
