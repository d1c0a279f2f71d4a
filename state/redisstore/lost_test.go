package redisstore_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// The Backend is the state.LossDetector of the Redis backend.
var _ state.LossDetector = (*redisstore.Backend)(nil)

// lossReplica is a backend on rdb under prefix, as one replica of many
// sharing the prefix has it (Lost needs no Run).
func lossReplica(t *testing.T, rdb redis.UniversalClient, prefix string) *redisstore.Backend {
	t.Helper()
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantLost checks that b's Lost answers want. Errors that say Redis is
// unavailable (a client still redialling a restarted server) are asked
// again until a deadline: they change nothing (the answer still to come is
// the same).
func wantLost(ctx context.Context, t *testing.T, b *redisstore.Backend, want bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := b.Lost(ctx)
		if err == nil {
			if got != want {
				t.Fatalf("%s: Lost = %v, want %v", what, got, want)
			}
			return
		}
		if !errors.Is(err, state.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("%s: Lost: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deleteUnder deletes every key under prefix that rdb's node holds.
func deleteUnder(ctx context.Context, t *testing.T, rdb *redis.Client, prefix string) {
	t.Helper()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys { // one by one: on a cluster node, keys of many slots
		if err := rdb.Del(ctx, k).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// checkLossSeenOnce runs the loss protocol on two replicas a and b sharing
// rdb and prefix: no loss until lose runs; after it, each replica answers
// true exactly once, and then false again; the generation key is back; and
// a second loss is seen again.
func checkLossSeenOnce(ctx context.Context, t *testing.T, rdb redis.UniversalClient, prefix string, lose func()) {
	t.Helper()
	a, b := lossReplica(t, rdb, prefix), lossReplica(t, rdb, prefix)
	wantLost(ctx, t, a, false, "a's first call")
	wantLost(ctx, t, b, false, "b's first call")
	wantLost(ctx, t, a, false, "a, nothing lost")
	wantLost(ctx, t, b, false, "b, nothing lost")
	gen := redisstore.NewKeys(prefix, 0).GenerationKey()
	for round := range 2 {
		rec := &state.Record{RequestID: "req-lost", DeploymentID: "dep", State: runcomfy.StateQueued, Seq: 1, Epoch: int64(round + 1), UpdatedAt: time.Now().UTC()}
		if err := a.Save(ctx, rec, time.Hour); err != nil {
			t.Fatal(err)
		}
		lose()
		if _, err := a.Get(ctx, rec.RequestID); !errors.Is(err, state.ErrNotFound) {
			// A restarted client may need a moment: ask until it answers.
			for deadline := time.Now().Add(10 * time.Second); errors.Is(err, state.ErrUnavailable) && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
				_, err = a.Get(ctx, rec.RequestID)
			}
			if !errors.Is(err, state.ErrNotFound) {
				t.Fatalf("round %d: the loss left the record: Get = %v", round, err)
			}
		}
		wantLost(ctx, t, a, true, "a after the loss")
		wantLost(ctx, t, b, true, "b after the loss")
		wantLost(ctx, t, a, false, "a, the loss already reported")
		wantLost(ctx, t, b, false, "b, the loss already reported")
		if n, err := rdb.Exists(ctx, gen).Result(); err != nil || n != 1 {
			t.Fatalf("round %d: EXISTS %s = %d, %v; want the generation key back", round, gen, n, err)
		}
	}
}

// TestLostReportsALossOncePerReplica pins Backend.Lost on one server: two
// replicas under one prefix answer false while Redis keeps its data, then,
// whichever way the data went (its keys deleted, a FLUSHALL, a restart
// without them), each answers true exactly once and false again, and the
// generation key is there afterwards.
func TestLostReportsALossOncePerReplica(t *testing.T) {
	ctx := context.Background()
	srv, err := redistest.StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	rdb := srv.Client(t)
	tests := []struct {
		name string
		lose func(t *testing.T, prefix string)
	}{
		{"keys under the prefix deleted", func(t *testing.T, prefix string) { deleteUnder(ctx, t, rdb, prefix) }},
		{"FLUSHALL", func(t *testing.T, _ string) {
			if err := rdb.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"restarted empty", func(t *testing.T, _ string) {
			if err := srv.RestartEmpty(0); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := redistest.Prefix(t)
			checkLossSeenOnce(ctx, t, rdb, prefix, func() { tt.lose(t, prefix) })
		})
	}
}

// TestLostOnCluster pins the same on a Redis Cluster, the prefix's keys
// deleted on every master.
func TestLostOnCluster(t *testing.T) {
	ctx := context.Background()
	rdb := sharedCluster(t).Client(t)
	prefix := redistest.Prefix(t)
	checkLossSeenOnce(ctx, t, rdb, prefix, func() {
		err := rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			deleteUnder(ctx, t, node, prefix)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestLostWhileRedisIsDown pins that Lost of a Backend whose Redis is down
// (nothing listens, or it hangs) fails with an error wrapping
// state.ErrUnavailable, never a loss; that an outage that lost nothing is
// not reported as a loss once Redis answers again; and that a caller's own
// cancellation is reported as such, not as an outage.
func TestLostWhileRedisIsDown(t *testing.T) {
	// Port 1: nothing listens, as during an outage (a stopped private
	// server's port could be taken by another one meanwhile).
	refused := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { refused.Close() })
	down := lossReplica(t, refused, redistest.Prefix(t))

	// A hung server: its port taken, nothing answering.
	srv, err := redistest.StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	opts, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true // CallTimeout's deadline reaches the connection
	hungClient := redis.NewClient(opts)
	t.Cleanup(func() { hungClient.Close() })
	hung, err := redisstore.New(hungClient, redisstore.Options{Prefix: redistest.Prefix(t), Logger: slog.New(slog.DiscardHandler), CallTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wantLost(context.Background(), t, hung, false, "first call, before the server hangs")
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		b    *redisstore.Backend
		ctx  context.Context
		want error
	}{
		{"nothing listens", down, context.Background(), state.ErrUnavailable},
		{"hung", hung, context.Background(), state.ErrUnavailable},
		{"caller gone", down, cancelled, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			lost, err := tt.b.Lost(tt.ctx)
			if lost || !errors.Is(err, tt.want) {
				t.Errorf("Lost = %v, %v; want false, %v", lost, err, tt.want)
			}
			if tt.want == context.Canceled && errors.Is(err, state.ErrUnavailable) {
				t.Errorf("a cancelled caller reported as an outage: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Lost took %v: not bounded", d)
			}
		})
	}

	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	wantLost(context.Background(), t, hung, false, "after the hung server answers again, having lost nothing")
}
