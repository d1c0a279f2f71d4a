package redisstore_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// TestSlotFollowsRecord pins what the conformance suite cannot tell apart
// from a reservation's own check of ended requests: a bound slot expires
// with its record (its score follows each save's TTL) and the final save
// itself removes it.
// slotBackend is a backend on the test server under a prefix of its own,
// with the client it uses, for tests that read the counts' keys.
func slotBackend(t *testing.T) (b *redisstore.Backend, rdb *redis.Client, prefix string) {
	t.Helper()
	prefix = redistest.Prefix(t)
	rdb = server.Client(t)
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return b, rdb, prefix
}

func TestSlotFollowsRecord(t *testing.T) {
	ctx := context.Background()
	b, rdb, prefix := slotBackend(t)
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
	// A poll confirms it (the 'synced' field) before the final save, which
	// then drops both fields.
	if err := b.Touch(ctx, id, rec.Position(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if f := rdb.HExists(ctx, redisstore.RecordKey(prefix, id), "synced").Val(); !f {
		t.Fatal("Touch left no 'synced' field")
	}
	rec.State, rec.FinishedAt, rec.Seq = runcomfy.StateSucceeded, time.Now(), 3
	if err := b.Save(ctx, rec.Clone(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if f := rdb.HExists(ctx, redisstore.RecordKey(prefix, id), "synced").Val(); f {
		t.Fatal("the final record keeps the confirmation of the one before it")
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

// TestReserveDropsEndedSlotsOfBothCounts: requests whose records were
// evicted and made again (the records made again do not know they hold a
// slot) end without giving their slots back. A reservation that meets the
// deployment's cap drops the ended ones it finds there, and when it then
// meets the tenant's cap it drops that count's ended ones too, instead of
// refusing: those of other tenants' requests in the deployment's count, and
// its own in the tenant's, are found each at their own cap.
func TestReserveDropsEndedSlotsOfBothCounts(t *testing.T) {
	ctx := context.Background()
	b, rdb, prefix := slotBackend(t)
	const dep = "dep-evicted-slots"
	caps := state.Caps{Deployment: 3, PerTenant: 2}
	start := func(tenant, id string) {
		t.Helper()
		tok, err := b.Reserve(ctx, dep, tenant, caps, time.Minute)
		if err != nil {
			t.Fatalf("reserve for %s: %v", id, err)
		}
		rec := &state.Record{RequestID: id, DeploymentID: dep, Owner: tenant, State: runcomfy.StateQueued, CreatedAt: time.Now(), Seq: 1, Epoch: 1}
		if err := b.Save(ctx, rec, time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := b.Bind(ctx, tok, dep, tenant, id); err != nil {
			t.Fatal(err)
		}
	}
	// endAfterEviction loses id's record, which is made again and ends.
	endAfterEviction := func(tenant, id string) {
		t.Helper()
		if err := b.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		rec := &state.Record{RequestID: id, DeploymentID: dep, Owner: tenant, State: runcomfy.StateQueued, CreatedAt: time.Now(), Seq: 1, Epoch: 2}
		if err := b.Save(ctx, rec.Clone(), time.Hour); err != nil {
			t.Fatal(err)
		}
		rec.State, rec.Seq = runcomfy.StateSucceeded, 2
		if err := b.Save(ctx, rec.Clone(), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	members := func(key string) []string {
		t.Helper()
		return rdb.ZRange(ctx, prefix+key, 0, -1).Val()
	}
	start("b", "r-b1")
	endAfterEviction("b", "r-b1")
	start("a", "r-a1")
	start("a", "r-a2")
	// a, at the deployment's cap, drops b's ended slot there; b's count
	// keeps it. a then meets its own cap: refused, rightly.
	if _, err := b.Reserve(ctx, dep, "a", caps, time.Minute); !errors.As(err, new(*state.CapError)) {
		t.Fatalf("a's third reservation: %v, want its cap", err)
	}
	start("b", "r-b2")
	endAfterEviction("a", "r-a1")
	endAfterEviction("a", "r-a2")
	if got := members("cap:{" + dep + "}:b"); len(got) != 2 {
		t.Fatalf("b's count holds %v, want its ended r-b1 and its unfinished r-b2", got)
	}
	// b meets the deployment's cap (a's ended slots), then its own (its
	// ended r-b1): one unfinished request of its cap of two.
	tok, err := b.Reserve(ctx, dep, "b", caps, time.Minute)
	if err != nil {
		t.Fatalf("b's reservation with one unfinished request: %v", err)
	}
	for key, want := range map[string][]string{"cap:{" + dep + "}": {tok, "r-b2"}, "cap:{" + dep + "}:b": {tok, "r-b2"}} {
		got := members(key)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", key, got, want)
		}
	}
}
