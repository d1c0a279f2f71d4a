package redisstore_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// namedBackend is a running backend whose connections carry name, so the test
// can find them in CLIENT LIST; resyncs counts calls of the resync hook.
func namedBackend(t *testing.T, name, prefix string, resyncs *atomic.Int64, hub **state.Hub) *redisstore.Backend {
	t.Helper()
	opts, err := redis.ParseURL(server.URL)
	if err != nil {
		t.Fatal(err)
	}
	opts.ClientName = name
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if *hub, err = state.NewHub(b, 0); err != nil {
		t.Fatal(err)
	}
	h := *hub
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, func(ctx context.Context, only []string) error {
			resyncs.Add(1)
			return h.Resync(ctx, b, only...)
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return b
}

// pubsubConns returns the ids of the subscribed connections named name.
func pubsubConns(t *testing.T, admin *redis.Client, name string) []string {
	t.Helper()
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+name+" ") && !strings.Contains(line, " sub=0 ") {
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			ids = append(ids, id)
		}
	}
	return ids
}

// TestOneSubscriptionConnectionPerReplica: many watchers of many requests share
// one pub/sub connection, subscribed to exactly the watched channels (no
// pattern), which are released when the last watcher leaves.
func TestOneSubscriptionConnectionPerReplica(t *testing.T) {
	ctx := context.Background()
	prefix := redistest.Prefix(t)
	name := "bus-" + strings.Trim(prefix[5:], ":")
	var resyncs atomic.Int64
	var hub *state.Hub
	namedBackend(t, name, prefix, &resyncs, &hub)
	admin := server.Client(t)

	var watchers []*state.Watcher
	for i := range 10 {
		for range 5 {
			w, err := hub.Watch(ctx, fmt.Sprintf("req-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			watchers = append(watchers, w)
		}
	}
	if got, want := len(pubsubConns(t, admin, name)), 1; got != want {
		t.Errorf("pub/sub connections = %d, want %d", got, want)
	}
	for i := range 10 {
		ch := redisstore.Channel(prefix, fmt.Sprintf("req-%d", i))
		n, err := admin.PubSubNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n[ch] != 1 {
			t.Errorf("subscribers of %s = %d, want 1", ch, n[ch])
		}
	}
	pats, err := admin.PubSubNumPat(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if pats != 0 {
		t.Errorf("pattern subscriptions = %d, want 0", pats)
	}
	for _, w := range watchers {
		w.Close()
	}
	ch := redisstore.Channel(prefix, "req-0")
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := admin.PubSubNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n[ch] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still subscribed after every watcher left", ch)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestResyncAfterConnectionKilled kills the pub/sub connection (CLIENT KILL):
// the backend reconnects, resubscribes, resyncs its watchers from the store, and
// records published afterwards are delivered again.
func TestResyncAfterConnectionKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	prefix := redistest.Prefix(t)
	name := "kill-" + strings.Trim(prefix[5:], ":")
	var resyncs atomic.Int64
	var hub *state.Hub
	b := namedBackend(t, name, prefix, &resyncs, &hub)
	admin := server.Client(t)

	w, err := hub.Watch(ctx, "req-k")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	save := func(seq int64, st runcomfy.State) {
		t.Helper()
		rec := &state.Record{RequestID: "req-k", DeploymentID: "d", State: st, Seq: seq}
		if err := b.Save(ctx, rec, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	save(1, runcomfy.StateQueued)
	if recs, err := w.Next(ctx); err != nil || recs[len(recs)-1].Seq != 1 {
		t.Fatalf("before the kill: %v %v", recs, err)
	}

	// Only this backend's connection: other tests share the server.
	ids := pubsubConns(t, admin, name)
	if len(ids) != 1 {
		t.Fatalf("pub/sub connections %v, want one", ids)
	}
	if killed, err := admin.ClientKillByFilter(ctx, "ID", ids[0]).Result(); err != nil || killed != 1 {
		t.Fatalf("CLIENT KILL ID %s: %d, %v", ids[0], killed, err)
	}
	// Written while the connection may be down: it reaches the watcher through
	// the live subscription once restored, or through the resync.
	save(2, runcomfy.StateRunning)
	got := int64(1)
	for got < 2 {
		recs, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for seq 2: %v", err)
		}
		for _, r := range recs {
			if r.Seq <= got {
				t.Fatalf("seq %d after %d", r.Seq, got)
			}
			got = r.Seq
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Reconnects() < 1 || resyncs.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("reconnects %d, resyncs %d: want both", b.Reconnects(), resyncs.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The restored subscription carries new records.
	save(3, runcomfy.StateSucceeded)
	for got < 3 {
		recs, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for seq 3: %v", err)
		}
		got = recs[len(recs)-1].Seq
	}
}

// TestShardReconnectResyncsItsRequests: on a Redis Cluster, when one shard's
// subscription connection is lost and made again, the resync covers the
// requests subscribed on that shard, not every watched request.
func TestShardReconnectResyncsItsRequests(t *testing.T) {
	ctx := context.Background()
	cl := sharedCluster(t)
	opts := cl.Options()
	opts.ClientName = "resync-" + strings.ReplaceAll(redistest.Prefix(t), ":", "")
	rdb := redis.NewClusterClient(opts)
	t.Cleanup(func() { rdb.Close() })
	prefix := redistest.Prefix(t)
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	resynced := make(chan []string, 10)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(rctx, func(_ context.Context, only []string) error {
			resynced <- only
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// One request on each master.
	keys := redisstore.NewKeys(prefix, redisstore.DefaultClusterBuckets)
	byMaster := map[string]string{}
	for i := 0; len(byMaster) < 3; i++ {
		id := fmt.Sprintf("req-%d", i)
		node, err := rdb.MasterForKey(ctx, keys.Channel(id))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := byMaster[node.Options().Addr]; !ok {
			byMaster[node.Options().Addr] = id
			if err := b.Subscribe(ctx, id, func(*state.Record) {}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var victim, lostID string
	for addr, id := range byMaster {
		victim, lostID = addr, id
		break
	}
	node := redis.NewClient(&redis.Options{Addr: victim})
	t.Cleanup(func() { node.Close() })
	list, err := node.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, " name="+opts.ClientName+"-shardsub ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				if err := node.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
					t.Fatal(err)
				}
				killed++
			}
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d subscription connections on %s, want its one:\n%s", killed, victim, list)
	}
	select {
	case only := <-resynced:
		if len(only) != 1 || only[0] != lostID {
			t.Fatalf("resync of %v, want only %s, the request of the shard whose connection was lost", only, lostID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no resync after the shard's connection was lost")
	}
	if n := len(resynced); n != 0 {
		t.Fatalf("%d more resyncs, want one", n)
	}
}
