package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// TestTakePassesOverADownMaster: on a Redis Cluster whose other masters
// serve on while one is down (cluster-require-full-coverage no), the
// delivery jobs of the buckets on the live masters are taken, and the
// failing bucket does not make Take fail: jobs it had already read would be
// held by this consumer until a takeover, tens of seconds later.
func TestTakePassesOverADownMaster(t *testing.T) {
	ctx := context.Background()
	cl, err := redistest.StartCluster(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	for _, n := range cl.Nodes {
		if err := n.Client(t).ConfigSet(ctx, "cluster-require-full-coverage", "no").Err(); err != nil {
			t.Fatal(err)
		}
	}
	rdb := cl.Client(t)
	b := startBackend(t, rdb, 0)
	keys := redisstore.NewKeys(redistest.Prefix(t), redisstore.DefaultClusterBuckets)
	victim, err := cl.MasterOf(ctx, keys.Jobs(0))
	if err != nil {
		t.Fatal(err)
	}
	// A job in every bucket of the other masters.
	var want []string
	seen := map[int]bool{}
	for i := 0; len(seen) < redisstore.DefaultClusterBuckets; i++ {
		id := fmt.Sprintf("req-%d", i)
		bucket := keys.Bucket(id)
		if seen[bucket] {
			continue
		}
		seen[bucket] = true
		m, err := cl.MasterOf(ctx, keys.Jobs(bucket))
		if err != nil {
			t.Fatal(err)
		}
		if m.Addr == victim.Addr {
			continue
		}
		if err := b.Wake(ctx, id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	cl.Kill(victim)
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(want) {
		jobs, err := b.Take(ctx, "consumer", 100, 0)
		if err != nil {
			t.Fatalf("Take with one master down: %v (after %v)", err, got)
		}
		for _, j := range jobs {
			got = append(got, j.RequestID)
		}
		if time.Now().After(deadline) {
			t.Fatalf("took %v, want %v", got, want)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("took %v, want %v", got, want)
	}
}

// TestPingNeedsEveryMaster: on a Redis Cluster, Ping (the proof Submit asks
// for before it starts a job) fails while a master that serves buckets is
// down and its replica not yet promoted, since the job's record may belong
// there; it passes again once the replica took over.
func TestPingNeedsEveryMaster(t *testing.T) {
	ctx := context.Background()
	cl, b, _, victim := pingedCluster(t, 1)
	replica := listedReplica(t, cl, victim)
	// The replica is held back from taking over until the ping with its
	// master down has been made: otherwise a ping made late (a loaded
	// machine) could meet the shard already failed over.
	node := replica.Client(t)
	config := func(name, value string) {
		t.Helper()
		if err := node.ConfigSet(ctx, name, value).Err(); err != nil {
			t.Fatal(err)
		}
	}
	config("cluster-replica-no-failover", "yes")
	// However long the hold lasts, the replica takes over once let go: its
	// data is never judged too old to.
	config("cluster-replica-validity-factor", "0")
	cl.Kill(victim)
	if err := b.Ping(ctx); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Ping with a master down = %v, want ErrUnavailable", err)
	}
	config("cluster-replica-no-failover", "no")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cl.WaitMaster(wctx, replica); err != nil {
		t.Fatalf("the replica did not take over: %v", err)
	}
	waitPingPasses(t, b, "after the failover")
}

// listedReplica returns master's replica once master lists it: a replica
// is in sync (StartCluster waits for that) before its master has heard
// from it over the cluster bus and shows it in its shard.
func listedReplica(t *testing.T, cl *redistest.Cluster, master *redistest.Server) *redistest.Server {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		replica, err := cl.ReplicaOf(context.Background(), master)
		if err == nil {
			return replica
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replica of %s listed: %v", master.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pingedCluster starts a cluster of three masters with replicas replicas
// each and a backend on it whose Ping passes, and returns them with the
// backend's key names and the master of its bucket 0.
func pingedCluster(t *testing.T, replicas int) (*redistest.Cluster, *redisstore.Backend, redisstore.Keys, *redistest.Server) {
	t.Helper()
	cl, err := redistest.StartCluster(3, replicas)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	prefix := redistest.Prefix(t)
	b, err := redisstore.New(cl.Client(t), redisstore.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("Ping of a healthy cluster: %v", err)
	}
	keys := redisstore.NewKeys(prefix, redisstore.DefaultClusterBuckets)
	owner, err := cl.MasterOf(ctx, keys.Pending(0))
	if err != nil {
		t.Fatal(err)
	}
	return cl, b, keys, owner
}

// waitPingPasses waits until b's Ping passes again.
func waitPingPasses(t *testing.T, b *redisstore.Backend, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for err := b.Ping(context.Background()); err != nil; err = b.Ping(context.Background()) {
		if time.Now().After(deadline) {
			t.Fatalf("Ping %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPingNeedsMastersThatTakeKeys: a master that answers PING but refuses
// keys (CLUSTERDOWN, as a restarted master does until it sees the cluster
// whole again; here one that gave up a slot it served) fails the ping, so
// Submit refuses; once it serves its slots again the ping passes.
func TestPingNeedsMastersThatTakeKeys(t *testing.T) {
	ctx := context.Background()
	_, b, keys, owner := pingedCluster(t, 0)
	node := owner.Client(t)
	slot, err := node.ClusterKeySlot(ctx, keys.Pending(0)).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The master forgets a slot of its own: it sees the cluster incomplete
	// and refuses every key, while it still answers PING.
	if err := node.ClusterDelSlots(ctx, int(slot)).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for node.Exists(ctx, keys.Pending(0)).Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the master still takes keys after giving up a slot")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := node.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING of the master: %v; want an answer", err)
	}
	if err := b.Ping(ctx); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Ping with a master refusing keys = %v, want ErrUnavailable", err)
	}
	if err := node.ClusterAddSlots(ctx, int(slot)).Err(); err != nil {
		t.Fatal(err)
	}
	waitPingPasses(t, b, "once the master serves its slot again")
}

// TestPingOfAHungMasterIsUnavailable: a master that hangs (SIGSTOP) makes
// the ping fail within the call timeout as state.ErrUnavailable (Submit's
// 503, "retry"), not as the caller's own deadline (504, "a job may exist").
func TestPingOfAHungMasterIsUnavailable(t *testing.T) {
	ctx := context.Background()
	cl, err := redistest.StartCluster(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	// As the gateway makes it (--redis-timeout): go-redis heeds a call's
	// deadline on the connection only with ContextTimeoutEnabled.
	opts := cl.Options()
	opts.ContextTimeoutEnabled = true
	rdb := redis.NewClusterClient(opts)
	t.Cleanup(func() { rdb.Close() })
	b, err := redisstore.New(rdb, redisstore.Options{
		Prefix: redistest.Prefix(t), Logger: slog.New(slog.DiscardHandler), CallTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("Ping of a healthy cluster: %v", err)
	}
	victim := cl.Nodes[0]
	if err := victim.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Resume() })
	start := time.Now()
	err = b.Ping(ctx)
	if !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Ping with a hung master = %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Ping took %v with a call timeout of 300ms", took)
	}
}

// TestAnotherLayoutWritesNothing: a backend whose number of buckets is not
// the one noted under its prefix (a replica started with another
// --redis-buckets while Redis did not answer its start-up check) is not
// ready and saves nothing: its records would be where the others do not
// look.
func TestAnotherLayoutWritesNothing(t *testing.T) {
	ctx := context.Background()
	rdb := server.Client(t)
	prefix := redistest.Prefix(t)
	if err := rdb.Set(ctx, redisstore.NewKeys(prefix, 16).LayoutKey(), "16", 0).Err(); err != nil {
		t.Fatal(err)
	}
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler), Buckets: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(ctx); !errors.Is(err, state.ErrUnavailable) || !strings.Contains(err.Error(), "16 buckets") {
		t.Fatalf("Ping = %v, want ErrUnavailable naming the 16 buckets under the prefix", err)
	}
	rec := &state.Record{RequestID: "req-1", DeploymentID: "dep", State: runcomfy.StateQueued, Seq: 1, UpdatedAt: time.Now().UTC()}
	if err := b.Save(ctx, rec, time.Hour); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Save = %v, want ErrUnavailable", err)
	}
	for _, n := range []int{4, 16} {
		if k := redisstore.NewKeys(prefix, n).Record("req-1"); rdb.Exists(ctx, k).Val() != 0 {
			t.Errorf("%s was written", k)
		}
	}
	// The layout the others use is this one's: it goes on.
	same, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler), Buckets: 16})
	if err != nil {
		t.Fatal(err)
	}
	if err := same.Ping(ctx); err != nil {
		t.Fatalf("Ping of a backend in the noted layout: %v", err)
	}
	if err := same.Save(ctx, rec, time.Hour); err != nil {
		t.Fatalf("Save in the noted layout: %v", err)
	}
}
