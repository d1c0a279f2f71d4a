package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
	"github.com/comfygate/comfygate/state/statetest"
)

// server is the Redis every test of this package shares, each under its own
// key prefix; set by TestMain.
var server *redistest.Server

// cluster is the Redis Cluster the tests that need one share, started by the
// first of them and stopped by TestMain.
var cluster struct {
	once sync.Once
	c    *redistest.Cluster
	err  error
}

// sharedCluster returns the package's cluster: three masters, no replicas
// (the tests of failover start clusters of their own).
func sharedCluster(t *testing.T) *redistest.Cluster {
	t.Helper()
	cluster.once.Do(func() { cluster.c, cluster.err = redistest.StartCluster(3, 0) })
	if cluster.err != nil {
		t.Fatal(cluster.err)
	}
	return cluster.c
}

func TestMain(m *testing.M) {
	var err error
	server, err = redistest.Find()
	if err != nil {
		fmt.Fprintln(os.Stderr, "redis:", err)
		os.Exit(1)
	}
	code := m.Run()
	server.Stop()
	if cluster.c != nil {
		cluster.c.Stop()
	}
	if code == 0 {
		// A client closed while it redialled a node that was down (the
		// failover tests) leaves go-redis's redial goroutine asleep for up
		// to a second; it then sees the pool closed and ends.
		if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newBackend returns a running backend on its own prefix, stopped at cleanup.
func newBackend(t *testing.T) *redisstore.Backend {
	t.Helper()
	return newBackendOn(t, server)
}

// newBackendOn is newBackend on the given server.
func newBackendOn(t *testing.T, srv *redistest.Server) *redisstore.Backend {
	t.Helper()
	return startBackend(t, srv.Client(t), 0)
}

// layouts are the ways the conformance suites run: one server in the
// classic key layout, one server with buckets, and a Redis Cluster (in
// buckets, as every cluster).
func layouts() []struct {
	name string
	new  func(t *testing.T) *redisstore.Backend
} {
	return []struct {
		name string
		new  func(t *testing.T) *redisstore.Backend
	}{
		{"classic", newBackend},
		{"buckets", func(t *testing.T) *redisstore.Backend { return startBackend(t, server.Client(t), 4) }},
		{"cluster", func(t *testing.T) *redisstore.Backend { return startBackend(t, sharedCluster(t).Client(t), 0) }},
	}
}

// startBackend returns a running backend on rdb, on its own prefix, with
// buckets buckets, stopped at cleanup.
func startBackend(t *testing.T, rdb redis.UniversalClient, buckets int) *redisstore.Backend {
	t.Helper()
	b, err := redisstore.New(rdb, redisstore.Options{
		Prefix:  redistest.Prefix(t),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Buckets: buckets,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, func(context.Context, []string) error { return nil })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return b
}

func TestConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.Run(t, func(t *testing.T) statetest.Backend { return l.new(t) })
		})
	}
}

func TestUsageConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunUsage(t, func(t *testing.T) statetest.UsageBackend { return l.new(t) })
		})
	}
}

func TestListConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunList(t, func(t *testing.T) statetest.ListBackend { return l.new(t) })
		})
	}
}

// TestSaveScheduledAfterScriptFlush: Redis forgets loaded scripts when it
// restarts; the pipelined save must then send the script itself, and still
// write the record and the schedule together. SCRIPT FLUSH empties a whole
// server's script cache, so the test runs on a private server of its own.
func TestSaveScheduledAfterScriptFlush(t *testing.T) {
	ctx := context.Background()
	srv, err := redistest.StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	b := newBackendOn(t, srv)
	rdb := srv.Client(t)
	due := time.UnixMilli(time.Now().Add(time.Minute).UnixMilli())
	rec := &state.Record{RequestID: "req-flush", DeploymentID: "dep", State: runcomfy.StateQueued, Seq: 1, UpdatedAt: time.Now().UTC()}
	for i, step := range []string{"first save loads the script", "after SCRIPT FLUSH"} {
		if i == 1 {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			rec = rec.Clone()
			rec.Seq = 2
			rec.State = runcomfy.StateRunning
		}
		if err := b.SaveScheduled(ctx, rec, time.Hour, due, false); err != nil {
			t.Fatalf("%s: SaveScheduled: %v", step, err)
		}
		got, err := b.Get(ctx, rec.RequestID)
		if err != nil || got.Seq != rec.Seq || got.State != rec.State {
			t.Fatalf("%s: Get = %+v, %v; want seq %d %v", step, got, err, rec.Seq, rec.State)
		}
		ids, err := b.Due(ctx, due, 10)
		if err != nil || len(ids) != 1 || ids[0] != rec.RequestID {
			t.Fatalf("%s: Due = %v, %v; want [%s]", step, ids, err, rec.RequestID)
		}
	}
	// A final record that is refused still leaves the schedule (see
	// state.ScheduledSaver): its writer retries with a final record.
	final := rec.Clone()
	final.State = runcomfy.StateSucceeded
	err = b.SaveScheduled(ctx, final, time.Hour, time.Time{}, true) // seq 2 again: refused
	var conflict *state.ConflictError
	if !errors.As(err, &conflict) || conflict.Current == nil || conflict.Current.Seq != 2 {
		t.Fatalf("SaveScheduled over the same seq = %v, want a ConflictError carrying seq 2", err)
	}
	final.Seq = 3
	if err := b.SaveScheduled(ctx, final, time.Hour, time.Time{}, true); err != nil {
		t.Fatalf("final SaveScheduled: %v", err)
	}
	if ids, err := b.Due(ctx, due.Add(time.Hour), 10); err != nil || len(ids) != 0 {
		t.Errorf("Due after the final save = %v, %v; want none", ids, err)
	}
}

func TestIdempotencyConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunIdempotency(t, func(t *testing.T) state.Idempotency { return l.new(t) })
		})
	}
}

func TestOutboxConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunOutbox(t, func(t *testing.T) statetest.OutboxBackend { return l.new(t) })
		})
	}
}

func TestSlotsConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunSlots(t, func(t *testing.T) statetest.SlotsBackend { return l.new(t) })
		})
	}
}

// TestKeysOnCluster asks a real cluster (CLUSTER KEYSLOT) where the
// bucketed layout's keys go: each bucket in its own share of the slots, and
// a request's record with its bucket's shared keys.
func TestKeysOnCluster(t *testing.T) {
	ctx := context.Background()
	rdb := sharedCluster(t).Client(t)
	k := redisstore.NewKeys("cg:", 16)
	for b := range 16 {
		slot, err := rdb.ClusterKeySlot(ctx, k.Pending(b)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if lo, hi := int64(b*16384/16), int64((b+1)*16384/16); slot < lo || slot >= hi {
			t.Errorf("bucket %d (%s) in slot %d, want [%d, %d)", b, k.Pending(b), slot, lo, hi)
		}
	}
	for i := range 20 {
		id := fmt.Sprintf("req-%d", i)
		rs, err := rdb.ClusterKeySlot(ctx, k.Record(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		ps, err := rdb.ClusterKeySlot(ctx, k.Jobs(k.Bucket(id))).Result()
		if err != nil {
			t.Fatal(err)
		}
		if rs != ps {
			t.Errorf("%s: record in slot %d, its bucket's jobs in %d", id, rs, ps)
		}
	}
}

// TestReclaimForgetsConsumersThatDied pins that the consumers of replicas
// gone without a clean stop (their names are never used again) are taken
// out of the group once they hold no job and have not read for a long
// while; one that holds a job stays, for its job to be taken over.
func TestReclaimForgetsConsumersThatDied(t *testing.T) {
	ctx := context.Background()
	for _, buckets := range []int{0, 4} {
		t.Run(fmt.Sprintf("buckets=%d", buckets), func(t *testing.T) {
			rdb := server.Client(t)
			prefix := redistest.Prefix(t)
			b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler), Buckets: buckets})
			if err != nil {
				t.Fatal(err)
			}
			keys := redisstore.NewKeys(prefix, buckets)
			// consumers lists the group's consumers over every bucket.
			consumers := func() map[string]int64 {
				got := map[string]int64{}
				for bucket := range keys.Buckets() {
					cs, err := rdb.XInfoConsumers(ctx, keys.Jobs(bucket), "deliverers").Result()
					if err != nil && !redis.HasErrorPrefix(err, "NOGROUP") && !errors.Is(err, redis.Nil) {
						t.Fatal(err)
					}
					for _, c := range cs {
						got[c.Name] += c.Pending
					}
				}
				return got
			}
			for i := range 8 {
				if err := b.Wake(ctx, fmt.Sprintf("req-%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			take := func(consumer string) []state.Job {
				t.Helper()
				var jobs []state.Job
				for len(jobs) == 0 {
					got, err := b.Take(ctx, consumer, 1, 50*time.Millisecond)
					if err != nil {
						t.Fatal(err)
					}
					jobs = got
				}
				return jobs
			}
			if err := b.Done(ctx, take("died")...); err != nil {
				t.Fatal(err)
			}
			take("holds")
			if got := consumers(); got["died"] != 0 || got["holds"] != 1 {
				t.Fatalf("consumers %v, want died with no job and holds with one", got)
			}
			// minIdle 20ms: forgotten after 400ms without a read.
			const minIdle = 20 * time.Millisecond
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := b.Reclaim(ctx, "alive", minIdle, 0); err != nil {
					t.Fatal(err)
				}
				got := consumers()
				if _, ok := got["died"]; !ok {
					if got["holds"] != 1 {
						t.Errorf("consumers %v, want holds kept with its job", got)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("consumers %v: the one that died was never forgotten", got)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}
