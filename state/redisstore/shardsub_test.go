package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/internal/redistest"
)

// shardSubCluster starts a cluster of three masters with a replica each for
// one test, and returns it with a cluster client for the subscriber, whose
// connections carry a name of the test's own (the subscriber's: that name
// and -shardsub), and another that publishes (so that its following a
// failover or a moved slot does not help the subscriber's), all gone when
// the test ends.
// tweak, if any, adjusts the subscriber's client's options.
func shardSubCluster(t *testing.T, tweak ...func(*redis.ClusterOptions)) (c *redistest.Cluster, rdb, pub *redis.ClusterClient) {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	c, err := redistest.StartCluster(3, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	opts := c.Options()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	opts.ClientName = "shardsub-test-" + hex.EncodeToString(b)
	for _, f := range tweak {
		f(opts)
	}
	rdb = redis.NewClusterClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return c, rdb, c.Client(t)
}

// shardSubHarness is a shard subscriber that records what it delivers and
// logs, and counts the calls of lost.
type shardSubHarness struct {
	s    *shardSubscriber
	lost atomic.Int64
	logs lockedBuffer

	mu  sync.Mutex
	got map[string][]string
	// lostChans are the channels lost named, each time.
	lostChans map[string]int
}

func newShardSubHarness(rdb *redis.ClusterClient) *shardSubHarness {
	h := &shardSubHarness{got: map[string][]string{}, lostChans: map[string]int{}}
	log := slog.New(slog.NewTextHandler(&h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.s = newShardSubscriber(rdb, log, 500*time.Millisecond)
	return h
}

// lockedBuffer is a log's text, written and read concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// run starts the subscriber's Run, stopped when the test ends (before the
// cluster client closes), and checks that it closed every connection.
func (h *shardSubHarness) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- h.s.Run(ctx, h.deliver, func(chans []string) {
			h.mu.Lock()
			for _, ch := range chans {
				h.lostChans[ch]++
			}
			h.mu.Unlock()
			h.lost.Add(1)
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("subscriber's log:\n%s", h.logs.String())
		}
		h.s.mu.Lock()
		defer h.s.mu.Unlock()
		if n := len(h.s.conns); n > 0 {
			t.Errorf("%d connections left after Run", n)
		}
	})
}

func (h *shardSubHarness) deliver(ch, payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got[ch] = append(h.got[ch], payload)
}

// lostNamed returns the channels lost has named so far.
func (h *shardSubHarness) lostNamed() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(maps.Keys(h.lostChans))
}

func (h *shardSubHarness) received(ch string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got[ch])
}

// settled reports whether every wanted channel is on an open connection,
// confirmed.
func (h *shardSubHarness) settled() bool {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	for ch, c := range h.s.chans {
		if c.shard == nil || c.shard.closed || c.shard.expect[ch] > 0 || len(c.waiters) > 0 {
			return false
		}
	}
	return true
}

// subscribeAll subscribes to every channel at once.
func (h *shardSubHarness) subscribeAll(t *testing.T, chans []string) {
	t.Helper()
	var g errgroup.Group
	for _, ch := range chans {
		g.Go(func() error { return h.s.Subscribe(context.Background(), ch) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// shardSubReplica returns master's replica, once master lists it (a replica
// may be in sync before its master's shard list shows it).
func shardSubReplica(t *testing.T, c *redistest.Cluster, master *redistest.Server) *redistest.Server {
	t.Helper()
	var replica *redistest.Server
	waitUntil(t, master.Addr+"'s replica", func() bool {
		r, err := c.ReplicaOf(context.Background(), master)
		replica = r
		return err == nil
	})
	return replica
}

// waitUntil polls cond until it holds, failing the test after a deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// channelsOn picks perMaster channel names served by each master, by the
// master's address (sorted in masters).
func channelsOn(t *testing.T, rdb *redis.ClusterClient, perMaster int) (byMaster map[string][]string, masters []string) {
	t.Helper()
	ctx := context.Background()
	byMaster = map[string][]string{}
	full := 0
	for i := 0; full < 3; i++ {
		if i > 100*perMaster {
			t.Fatalf("no %d channels on each of 3 masters among %d names: %v", perMaster, i, byMaster)
		}
		ch := fmt.Sprintf("shardsub:%d", i)
		node, err := rdb.MasterForKey(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		addr := node.Options().Addr
		if len(byMaster[addr]) < perMaster {
			byMaster[addr] = append(byMaster[addr], ch)
			if len(byMaster[addr]) == perMaster {
				full++
			}
		}
	}
	return byMaster, slices.Sorted(maps.Keys(byMaster))
}

// publishAll SPUBLISHes n numbered messages to every channel, interleaved,
// each received by one subscriber.
func publishAll(t *testing.T, pub *redis.ClusterClient, chans []string, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		for _, ch := range chans {
			got, err := pub.SPublish(ctx, ch, fmt.Sprintf("%s%d", prefix, i)).Result()
			if err != nil || got != 1 {
				t.Fatalf("SPUBLISH %s: %d receivers, %v", ch, got, err)
			}
		}
	}
}

// numbered is prefix0 … prefix(n-1).
func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// subConns reads CLIENT LIST on the node at addr: how many connections are
// named name, and how many shard channels they are subscribed to.
func subConns(t *testing.T, addr, name string) (conns, ssub int) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST on %s: %v", addr, err)
	}
	for line := range strings.Lines(list) {
		fields := map[string]string{}
		for f := range strings.FieldsSeq(line) {
			k, v, _ := strings.Cut(f, "=")
			fields[k] = v
		}
		if fields["name"] != name {
			continue
		}
		conns++
		n, err := strconv.Atoi(fields["ssub"])
		if err != nil {
			t.Fatalf("CLIENT LIST on %s has no ssub field: %s", addr, line)
		}
		ssub += n
	}
	return conns, ssub
}

// connsAre reports whether each node of want (by address) has exactly one
// connection of the subscriber, subscribed to that many shard channels, and
// every other node of addrs none.
func connsAre(t *testing.T, addrs []string, name string, want map[string]int) bool {
	t.Helper()
	for _, addr := range addrs {
		conns, ssub := subConns(t, addr, name)
		n, ok := want[addr]
		if (ok && (conns != 1 || ssub != n)) || (!ok && conns != 0) {
			t.Logf("%s: %d connections with %d channels, want %d", addr, conns, ssub, n)
			return false
		}
	}
	return true
}

// moveSlot moves the slot of key (which holds no keys: channels are not
// keys) from the master at src to the one at dst, as redis-cli --cluster
// reshard does, minus MIGRATE: IMPORTING and MIGRATING, then the new owner
// told to every master, the destination first.
func moveSlot(t *testing.T, rdb *redis.ClusterClient, masters []string, key, src, dst string) {
	t.Helper()
	ctx := context.Background()
	slot, err := rdb.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	nodes := map[string]*redis.Client{}
	for _, m := range masters {
		nodes[m] = redis.NewClient(&redis.Options{Addr: m})
		defer nodes[m].Close()
		if ids[m], err = nodes[m].ClusterMyID(ctx).Result(); err != nil {
			t.Fatal(err)
		}
	}
	setslot := func(on string, args ...any) {
		t.Helper()
		if err := nodes[on].Do(ctx, append([]any{"cluster", "setslot", slot}, args...)...).Err(); err != nil {
			t.Fatalf("CLUSTER SETSLOT %d %v on %s: %v", slot, args, on, err)
		}
	}
	setslot(dst, "importing", ids[src])
	setslot(src, "migrating", ids[dst])
	setslot(dst, "node", ids[dst])
	setslot(src, "node", ids[dst])
	for _, m := range masters {
		if m != src && m != dst {
			setslot(m, "node", ids[dst])
		}
	}
}

// TestShardSubDelivers: channels on all three masters receive what is
// SPUBLISHed to them, in order, each on one connection per master; a
// message that arrives while a Subscribe of its channel awaits its
// confirmation is dropped; nothing is delivered for a channel once
// Unsubscribe returns, and the master stops sending it.
func TestShardSubDelivers(t *testing.T) {
	_, rdb, pub := shardSubCluster(t)
	ctx := context.Background()
	h := newShardSubHarness(rdb)
	byMaster, masters := channelsOn(t, rdb, 5)

	// A message published between two SSUBSCRIBEs of a channel (the second
	// unconfirmed when it arrives) is dropped: Run starts only once both
	// were sent, so the connection holds, unread, the first confirmation,
	// the message, then the second confirmation.
	pending := byMaster[masters[0]][0]
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- h.s.Subscribe(ctx, pending) }()
	waitUntil(t, "the first subscription active", func() bool {
		n, err := pub.SPublish(ctx, pending, "before").Result()
		return err == nil && n == 1
	})
	go func() { second <- h.s.Subscribe(ctx, pending) }()
	waitUntil(t, "the second SSUBSCRIBE sent", func() bool {
		h.s.mu.Lock()
		defer h.s.mu.Unlock()
		c := h.s.chans[pending]
		return c != nil && c.shard != nil && c.shard.expect[pending] == 2
	})
	h.run(t)
	for _, res := range []chan error{first, second} {
		if err := <-res; err != nil {
			t.Fatal(err)
		}
	}

	var all []string
	for _, m := range masters {
		all = append(all, byMaster[m]...)
	}
	h.subscribeAll(t, all)
	const n = 20
	publishAll(t, pub, all, "m", n)
	want := numbered("m", n)
	for _, ch := range all {
		waitUntil(t, ch+"'s messages", func() bool { return len(h.received(ch)) >= n })
		if got := h.received(ch); !slices.Equal(got, want) {
			t.Fatalf("%s received %q, want %q", ch, got, want)
		}
	}
	wantShards := map[string]int{}
	for _, m := range masters {
		wantShards[m] = len(byMaster[m])
	}
	if got := h.s.Shards(); !maps.Equal(got, wantShards) {
		t.Fatalf("Shards() = %v, want %v", got, wantShards)
	}

	gone, sibling := byMaster[masters[1]][0], byMaster[masters[1]][1]
	if err := h.s.Unsubscribe(ctx, gone); err != nil {
		t.Fatal(err)
	}
	had := len(h.received(gone))
	waitUntil(t, "the master to drop the unsubscribed channel", func() bool {
		n, err := pub.SPublish(ctx, gone, "after").Result()
		return err == nil && n == 0
	})
	// The sibling's marker comes on the same connection after anything
	// published to the unsubscribed channel.
	publishAll(t, pub, []string{sibling}, "marker", 1)
	waitUntil(t, "the marker", func() bool { return slices.Contains(h.received(sibling), "marker0") })
	if got := h.received(gone); len(got) != had {
		t.Fatalf("%s received %q after Unsubscribe", gone, got[had:])
	}
	wantShards[masters[1]]--
	if got := h.s.Shards(); !maps.Equal(got, wantShards) {
		t.Fatalf("Shards() = %v after Unsubscribe, want %v", got, wantShards)
	}
	if l, r := h.lost.Load(), h.s.Reconnects(); l != 0 || r != 0 {
		t.Fatalf("lost called %d times, %d reconnects, without a failure", l, r)
	}
}

// TestShardSubOneConnectionPerShard: however many channels over however many
// slots, the subscriber holds one connection per master (and none to
// replicas), and closes a master's once its last channel goes.
func TestShardSubOneConnectionPerShard(t *testing.T) {
	c, rdb, pub := shardSubCluster(t)
	ctx := context.Background()
	h, byMaster, masters, all := subscribedOnAll(t, rdb, 20)
	slots := map[int64]bool{}
	for _, ch := range all {
		slot, err := rdb.ClusterKeySlot(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[slot] = true
	}
	if len(slots) < 50 {
		t.Fatalf("%d channels on only %d slots", len(all), len(slots))
	}

	want := map[string]int{}
	for _, m := range masters {
		want[m] = len(byMaster[m])
	}
	waitUntil(t, "one connection per master", func() bool { return connsAre(t, c.Addrs(), h.s.name, want) })

	for _, ch := range byMaster[masters[2]] {
		if err := h.s.Unsubscribe(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	delete(want, masters[2])
	waitUntil(t, "the emptied master's connection closed", func() bool { return connsAre(t, c.Addrs(), h.s.name, want) })
	if got := h.s.Shards(); !maps.Equal(got, want) {
		t.Fatalf("Shards() = %v, want %v", got, want)
	}
	h.subscribeAll(t, byMaster[masters[2]][:1])
	want[masters[2]] = 1
	waitUntil(t, "the master's connection opened again", func() bool { return connsAre(t, c.Addrs(), h.s.name, want) })
	publishAll(t, pub, byMaster[masters[2]][:1], "again", 1)
	waitUntil(t, "delivery on the new connection", func() bool { return len(h.received(byMaster[masters[2]][0])) == 1 })

	// A connection the server drops is replaced by one again (go-redis's own
	// reconnection, which resubscribes every channel in one CROSSSLOT
	// command, notwithstanding), and lost is called.
	admin := redis.NewClient(&redis.Options{Addr: masters[0]})
	defer admin.Close()
	if n, err := admin.ClientKillByFilter(ctx, "USER", "default", "SKIPME", "yes").Result(); err != nil || n == 0 {
		t.Fatalf("CLIENT KILL: %d, %v", n, err)
	}
	waitUntil(t, "lost to be called", func() bool { return h.lost.Load() > 0 })
	waitUntil(t, "the channels settled", h.settled)
	if got := h.s.Shards(); !maps.Equal(got, want) {
		t.Fatalf("Shards() = %v, want %v", got, want)
	}
	waitUntil(t, "one connection per master", func() bool { return connsAre(t, c.Addrs(), h.s.name, want) })
	publishAll(t, pub, byMaster[masters[0]], "killed", 1)
	for _, ch := range byMaster[masters[0]] {
		waitUntil(t, ch+"'s message", func() bool { return slices.Equal(h.received(ch), []string{"killed0"}) })
	}
}

// TestShardSubFailover: when a master dies and its replica takes over, the
// subscriber subscribes its channels on the new master (one connection
// still), calls lost, and delivers what is published afterwards.
func TestShardSubFailover(t *testing.T) {
	c, rdb, pub := shardSubCluster(t)
	ctx := context.Background()
	h, byMaster, masters, all := subscribedOnAll(t, rdb, 4)
	publishAll(t, pub, all, "pre", 1)
	for _, ch := range all {
		waitUntil(t, ch+"'s first message", func() bool { return len(h.received(ch)) == 1 })
	}

	victim, err := c.MasterOf(ctx, byMaster[masters[0]][0])
	if err != nil {
		t.Fatal(err)
	}
	if victim.Addr != masters[0] {
		t.Fatalf("the cluster says %s serves %s, the client %s", victim.Addr, byMaster[masters[0]][0], masters[0])
	}
	replica, start := failOver(t, c, victim, func() error { c.Kill(victim); return nil })

	// What is published once the subscriber is back reaches it, in order;
	// what was published before that (no receiver) is lost, as lost says.
	seq := 0
	for _, ch := range byMaster[masters[0]] {
		waitUntil(t, ch+"'s messages after the failover", func() bool {
			if n, err := pub.SPublish(ctx, ch, fmt.Sprintf("post%06d", seq)).Result(); err == nil && n == 1 {
				seq++
			}
			got := h.received(ch)
			return len(got) > 1 && strings.HasPrefix(got[len(got)-1], "post")
		})
		if got := h.received(ch); !slices.IsSorted(got[1:]) {
			t.Fatalf("%s received %q: out of order", ch, got)
		}
	}
	t.Logf("delivering again %v after the kill", time.Since(start))
	waitUntil(t, "lost to be called", func() bool { return h.lost.Load() > 0 })
	if h.s.Reconnects() == 0 {
		t.Fatal("no reconnect counted")
	}
	// Only the killed shard's channels are to be resynced: the others lost
	// nothing.
	if got, want := h.lostNamed(), slices.Sorted(slices.Values(byMaster[masters[0]])); !slices.Equal(got, want) {
		t.Fatalf("lost named %v, want the killed master's channels %v", got, want)
	}

	checkFailedOver(t, h, c, victim, replica, byMaster, masters)
	publishAll(t, pub, all, "end", 1)
	for _, ch := range all {
		waitUntil(t, ch+"'s last message", func() bool { return slices.Contains(h.received(ch), "end0") })
	}
}

// TestShardSubSlotMigration: when the slot of a subscribed channel moves to
// another master, the old master unsubscribes it (a pushed sunsubscribe); the
// subscriber subscribes it on the new owner, calls lost, and delivers what is
// published there afterwards. Then another slot moves while channels of
// that slot are being subscribed: each Subscribe ends subscribed on the new
// owner, or fails leaving nothing.
func TestShardSubSlotMigration(t *testing.T) {
	c, rdb, pub := shardSubCluster(t)
	ctx := context.Background()
	h, byMaster, masters, all := subscribedOnAll(t, rdb, 4)
	want := map[string]int{}
	for _, m := range masters {
		want[m] = len(byMaster[m])
	}

	// Nothing but the pushed sunsubscribe tells the subscriber.
	src, dst := masters[0], masters[1]
	moved := byMaster[src][0]
	start := time.Now()
	moveSlot(t, rdb, masters, moved, src, dst)
	seq := 0
	waitUntil(t, "messages through the new owner", func() bool {
		if n, err := pub.SPublish(ctx, moved, fmt.Sprintf("moved%06d", seq)).Result(); err == nil && n == 1 {
			seq++
		}
		return len(h.received(moved)) > 0
	})
	t.Logf("delivering again %v after the move", time.Since(start))
	if got := h.received(moved); !slices.IsSorted(got) {
		t.Fatalf("%s received %q: out of order", moved, got)
	}
	waitUntil(t, "lost to be called", func() bool { return h.lost.Load() > 0 })
	want[src]--
	want[dst]++
	waitUntil(t, "the channels settled", h.settled)
	if got := h.s.Shards(); !maps.Equal(got, want) {
		t.Fatalf("Shards() = %v, want %v", got, want)
	}
	waitUntil(t, "one connection per master", func() bool { return connsAre(t, c.Addrs(), h.s.name, want) })

	// Channels of the next slot to move ({raced} is their hash tag) are
	// subscribed before, during and after the move and the rebuilds it
	// causes (old-owner refusals among them).
	src, dst = masters[2], masters[0]
	raced := byMaster[src][0]
	stop := make(chan struct{})
	type outcome struct {
		ch  string
		err error
	}
	racers := make(chan []outcome, 4)
	for r := range cap(racers) {
		go func() {
			var out []outcome
			defer func() { racers <- out }()
			for i := range 300 {
				select {
				case <-stop:
					return
				default:
				}
				ch := fmt.Sprintf("{%s}:%d:%d", raced, r, i)
				out = append(out, outcome{ch, h.s.Subscribe(ctx, ch)})
			}
		}()
	}
	moveSlot(t, rdb, masters, raced, src, dst)
	waitUntil(t, "messages through the new owner", func() bool {
		if n, err := pub.SPublish(ctx, raced, fmt.Sprintf("moved%06d", seq)).Result(); err == nil && n == 1 {
			seq++
		}
		return len(h.received(raced)) > 0
	})
	close(stop)
	var ok, failed []string
	for range cap(racers) {
		for _, o := range <-racers {
			if o.err != nil {
				t.Logf("Subscribe(%s): %v", o.ch, o.err)
				failed = append(failed, o.ch)
			} else {
				ok = append(ok, o.ch)
			}
		}
	}
	t.Logf("%d channels of the slot subscribed meanwhile, %d failed", len(ok), len(failed))
	want[src]--
	want[dst] += 1 + len(ok)
	waitUntil(t, "the channels settled", h.settled)
	if got := h.s.Shards(); !maps.Equal(got, want) {
		t.Fatalf("Shards() = %v, want %v", got, want)
	}
	h.s.mu.Lock()
	for _, ch := range failed {
		if h.s.chans[ch] != nil {
			t.Errorf("%s failed, but is still wanted", ch)
		}
	}
	h.s.mu.Unlock()
	for addr, want := range map[string]int64{dst: 1, src: 0} {
		node := redis.NewClient(&redis.Options{Addr: addr})
		subs, err := node.PubSubShardNumSub(ctx, append(ok, failed...)...).Result()
		node.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range ok {
			if subs[ch] != want {
				t.Fatalf("PUBSUB SHARDNUMSUB %s on %s: %d, want %d", ch, addr, subs[ch], want)
			}
		}
		for _, ch := range failed {
			if subs[ch] != 0 {
				t.Fatalf("PUBSUB SHARDNUMSUB %s on %s: %d after a failed Subscribe", ch, addr, subs[ch])
			}
		}
	}
	publishAll(t, pub, ok, "raced", 1)
	for _, ch := range ok {
		waitUntil(t, ch+"'s message", func() bool { return slices.Equal(h.received(ch), []string{"raced0"}) })
	}
	waitUntil(t, "one connection per master", func() bool { return connsAre(t, c.Addrs(), h.s.name, want) })
	publishAll(t, pub, all, "end", 1)
	for _, ch := range all {
		waitUntil(t, ch+"'s last message", func() bool { return slices.Contains(h.received(ch), "end0") })
	}
}

// TestShardSubHungMaster: a master that hangs (SIGSTOP) keeps its
// connections open, silent: the subscriber pings, gives the connection up
// when the ping goes unanswered, and subscribes its channels on the replica
// that takes over.
func TestShardSubHungMaster(t *testing.T) {
	c, rdb, _ := shardSubCluster(t)
	ctx := context.Background()
	// A publisher that gives up on the stopped node quickly.
	opts := c.Options()
	opts.ReadTimeout, opts.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	pub := redis.NewClusterClient(opts)
	t.Cleanup(func() { pub.Close() })
	h, byMaster, masters, _ := subscribedOnAll(t, rdb, 2)

	victim, err := c.MasterOf(ctx, byMaster[masters[0]][0])
	if err != nil {
		t.Fatal(err)
	}
	// Stopped as it is, with the cluster: a hang, not a crash.
	replica, start := failOver(t, c, victim, victim.Pause)
	seq := 0
	for _, ch := range byMaster[masters[0]] {
		waitUntil(t, ch+"'s messages after the failover", func() bool {
			if n, err := pub.SPublish(ctx, ch, fmt.Sprintf("post%06d", seq)).Result(); err == nil && n == 1 {
				seq++
			}
			return len(h.received(ch)) > 0
		})
	}
	t.Logf("delivering again %v after the hang", time.Since(start))
	waitUntil(t, "lost to be called", func() bool { return h.lost.Load() > 0 })
	checkFailedOver(t, h, c, victim, replica, byMaster, masters)
}

// subscribedOnAll runs a subscriber of perMaster channels on each master,
// subscribed: the channels by master, the masters, and all the channels.
func subscribedOnAll(t *testing.T, rdb *redis.ClusterClient, perMaster int) (h *shardSubHarness, byMaster map[string][]string, masters, all []string) {
	t.Helper()
	h = newShardSubHarness(rdb)
	h.run(t)
	byMaster, masters = channelsOn(t, rdb, perMaster)
	for _, m := range masters {
		all = append(all, byMaster[m]...)
	}
	h.subscribeAll(t, all)
	return h, byMaster, masters, all
}

// failOver stops victim with stop (a kill, a hang) and waits until its
// replica is master; it returns the replica and when the stop began.
func failOver(t *testing.T, c *redistest.Cluster, victim *redistest.Server, stop func() error) (*redistest.Server, time.Time) {
	t.Helper()
	replica := shardSubReplica(t, c, victim)
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitMaster(ctx, replica); err != nil {
		t.Fatal(err)
	}
	t.Logf("replica promoted in %v", time.Since(start))
	return replica, start
}

// checkFailedOver checks, after victim's replica took over, that the
// subscriber has victim's channels on the replica and the others where they
// were, one connection per master (CLIENT LIST, victim left out: it may
// hang).
func checkFailedOver(t *testing.T, h *shardSubHarness, c *redistest.Cluster, victim, replica *redistest.Server, byMaster map[string][]string, masters []string) {
	t.Helper()
	want := map[string]int{replica.Addr: len(byMaster[masters[0]])}
	for _, m := range masters[1:] {
		want[m] = len(byMaster[m])
	}
	if got := h.s.Shards(); !maps.Equal(got, want) {
		t.Fatalf("Shards() = %v, want %v", got, want)
	}
	var live []string
	for _, addr := range c.Addrs() {
		if addr != victim.Addr {
			live = append(live, addr)
		}
	}
	waitUntil(t, "one connection per master", func() bool { return connsAre(t, live, h.s.name, want) })
}

// TestShardSubStaleSlotMap: when a slot moves while the subscriber's client
// still believes the old owner serves it, the channel is sent back there and
// refused (MOVED); the subscriber keeps trying, without a storm of
// connections, and lands on the new owner as soon as its client learns the
// new map.
func TestShardSubStaleSlotMap(t *testing.T) {
	// The subscriber's client reads the slot map through ClusterSlots, which
	// serves a frozen copy while the test says so.
	var frozen atomic.Pointer[[]redis.ClusterSlot]
	var seed atomic.Pointer[redis.Client]
	// The nodes are named localhost: go-redis turns a loopback IP from a
	// ClusterSlots function into an empty host.
	load := func(ctx context.Context) ([]redis.ClusterSlot, error) {
		//lint:ignore SA1019 ClusterOptions.ClusterSlots takes CLUSTER SLOTS's form
		slots, err := seed.Load().ClusterSlots(ctx).Result()
		for _, s := range slots {
			for i, n := range s.Nodes {
				if _, port, err := net.SplitHostPort(n.Addr); err == nil {
					s.Nodes[i].Addr = net.JoinHostPort("localhost", port)
				}
			}
		}
		return slots, err
	}
	ip := func(addr string) string { return strings.Replace(addr, "localhost:", "127.0.0.1:", 1) }
	c, rdb, pub := shardSubCluster(t, func(o *redis.ClusterOptions) {
		o.ClusterSlots = func(ctx context.Context) ([]redis.ClusterSlot, error) {
			if s := frozen.Load(); s != nil {
				return *s, nil
			}
			return load(ctx)
		}
	})
	ctx := context.Background()
	seedClient := redis.NewClient(&redis.Options{Addr: c.Addrs()[0]})
	defer seedClient.Close()
	seed.Store(seedClient)
	slots, err := load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, byMaster, masters, all := subscribedOnAll(t, rdb, 3)
	if !strings.HasPrefix(masters[0], "localhost:") {
		t.Fatalf("the client names the masters %v", masters)
	}

	frozen.Store(&slots)
	src, dst := masters[0], masters[1]
	moved := byMaster[src][0]
	moveSlot(t, rdb, []string{ip(masters[0]), ip(masters[1]), ip(masters[2])}, moved, ip(src), ip(dst))
	waitUntil(t, "the old owner to refuse the channel", func() bool { return strings.Contains(h.logs.String(), "MOVED") })
	if got := h.received(moved); len(got) != 0 {
		t.Fatalf("%s received %q", moved, got)
	}
	frozen.Store(nil)
	start := time.Now()
	seq := 0
	waitUntil(t, "messages through the new owner", func() bool {
		if n, err := pub.SPublish(ctx, moved, fmt.Sprintf("moved%06d", seq)).Result(); err == nil && n == 1 {
			seq++
		}
		return len(h.received(moved)) > 0
	})
	t.Logf("delivering again %v after the map thawed; %d connections lost meanwhile", time.Since(start),
		strings.Count(h.logs.String(), "connection lost"))
	waitUntil(t, "lost to be called", func() bool { return h.lost.Load() > 0 })
	want := map[string]int{src: len(byMaster[src]) - 1, dst: len(byMaster[dst]) + 1, masters[2]: len(byMaster[masters[2]])}
	if got := h.s.Shards(); !maps.Equal(got, want) {
		t.Fatalf("Shards() = %v, want %v", got, want)
	}
	wantIP := map[string]int{}
	for addr, n := range want {
		wantIP[ip(addr)] = n
	}
	waitUntil(t, "one connection per master", func() bool { return connsAre(t, c.Addrs(), h.s.name, wantIP) })
	publishAll(t, pub, all, "end", 1)
	for _, ch := range all {
		waitUntil(t, ch+"'s last message", func() bool { return slices.Contains(h.received(ch), "end0") })
	}
}

// TestShardSubLeavesAReplacedMaster: a master that hangs (SIGSTOP) while
// its replica takes over is left as soon as the cluster client's slot map
// names the replica, without waiting for a ping (a minute here): what is
// published on the replica arrives, within seconds of the promotion.
func TestShardSubLeavesAReplacedMaster(t *testing.T) {
	// The client's map reload asks the nodes in turn, and waits its read
	// timeout on the hung one: a short one here, so the test waits less.
	c, rdb, pub := shardSubCluster(t, func(o *redis.ClusterOptions) { o.ReadTimeout = time.Second })
	ctx := context.Background()
	h := newShardSubHarness(rdb)
	h.s = newShardSubscriber(rdb, slog.New(slog.NewTextHandler(&h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), time.Minute)
	h.run(t)
	byMaster, masters := channelsOn(t, rdb, 2)
	chans := byMaster[masters[0]]
	h.subscribeAll(t, chans)
	victim, err := c.MasterOf(ctx, chans[0])
	if err != nil {
		t.Fatal(err)
	}
	replica, _ := failOver(t, c, victim, victim.Pause)
	t.Cleanup(func() { _ = victim.Resume() })
	waitUntil(t, "the channels on the promoted replica", func() bool {
		return h.s.Shards()[replica.Addr] == len(chans) && h.settled()
	})
	for _, ch := range chans {
		seq := 0
		waitUntil(t, ch+"'s message published on the replica", func() bool {
			if n, err := pub.SPublish(ctx, ch, fmt.Sprintf("after%06d", seq)).Result(); err == nil && n == 1 {
				seq++
			}
			got := h.received(ch)
			return len(got) > 0 && strings.HasPrefix(got[len(got)-1], "after")
		})
	}
	waitUntil(t, "lost to be called", func() bool { return h.lost.Load() > 0 })
}
