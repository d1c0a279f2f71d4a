package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/internal/redistest"
)

// TestRedisCluster runs three replicas on a local Redis Cluster of three
// masters, each with a replica, and follows requests through it: watchers
// on all three replicas get every update once and in order while callbacks
// land on B, each replica holds one sharded subscription connection per
// shard, and a master's failover and a slot's migration in the middle of a
// stream lose and repeat nothing.
func TestRedisCluster(t *testing.T) {
	ctx := setup(t)
	rc, err := redistest.StartCluster(3, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	c := newCluster(ctx, t, clusterConfig{redisCluster: rc, queueTime: queueTime, runTime: runTime})

	// follow submits a request on A with the callbacks held, and watches it
	// on A, B and C until each has the submit's record.
	follow := func(t *testing.T) (string, []*watcher) {
		t.Helper()
		c.lb.hold()
		rid := c.submit(ctx, t, c.a)
		ws := []*watcher{
			watch(ctx, t, "watcher on A", c.a, rid, 0),
			watch(ctx, t, "watcher on B", c.b, rid, 0),
			watch(ctx, t, "watcher on C", c.c, rid, 0),
		}
		for _, w := range ws {
			w.waitSeq(ctx, t, 1)
		}
		return rid, ws
	}
	// finish opens the callbacks and checks that every watcher got the same
	// sequence, from seq 1 to the success with no gap and no repeat, and that
	// the record stopped there.
	finish := func(t *testing.T, rid string, ws []*watcher) {
		t.Helper()
		c.lb.open()
		var want []string
		for i, w := range ws {
			evs := w.waitOK(ctx, t)
			checkProgress(t, w.name, evs)
			checkSucceeded(t, w.name, evs)
			for j, e := range evs {
				if e.GetSeq() != int64(j+1) {
					t.Errorf("%s: got %v, want every seq from 1 once", w.name, pairs(evs))
					break
				}
			}
			if i == 0 {
				want = pairs(evs)
			} else if got := pairs(evs); !slices.Equal(got, want) {
				t.Errorf("%s got %v, %s got %v: want identical sequences", w.name, got, ws[0].name, want)
			}
		}
		if got := c.recordSeq(ctx, t, rid); got != int64(len(want)) {
			t.Errorf("the record is at seq %d; the watchers ended after %d events", got, len(want))
		}
	}
	// stepTo lets callbacks through one at a time until the watchers have
	// seq.
	stepTo := func(t *testing.T, ws []*watcher, seq int64) {
		t.Helper()
		for ws[0].lastSeq() < seq {
			c.lb.step(ctx, t)
		}
		for _, w := range ws {
			w.waitSeq(ctx, t, seq)
		}
	}

	t.Run("fan-out", func(t *testing.T) {
		// Requests until their records are on every master, each watched on
		// every replica: then each replica has a subscription on each shard.
		masters := map[string]bool{}
		var rids []string
		var all [][]*watcher
		for len(masters) < 3 {
			if len(rids) == 30 {
				t.Fatalf("30 requests, on %d masters only", len(masters))
			}
			rid, ws := follow(t)
			m, err := rc.MasterOf(ctx, c.keys.Record(rid))
			if err != nil {
				t.Fatal(err)
			}
			masters[m.Addr] = true
			rids, all = append(rids, rid), append(all, ws)
		}
		checkShardConnections(ctx, t, rc, 3)
		for i, rid := range rids {
			finish(t, rid, all[i])
		}
	})

	// moved checks that every replica noticed the slot's move under the
	// request's stream (its reconnect counter went up) and holds its
	// subscription on the master that serves the slot now.
	moved := func(t *testing.T, rid string, before map[string]int) {
		t.Helper()
		for _, g := range c.gateways() {
			eventually(ctx, t, g.name+" to re-establish its subscriptions", func() bool {
				return counterOn(ctx, t, c, g, "comfygate_pubsub_reconnects_total") > before[g.name]
			})
		}
		eventually(ctx, t, "every replica subscribed on the new master", func() bool {
			return c.subscribers(ctx, t, rid) == 3
		})
	}
	reconnects := func(t *testing.T) map[string]int {
		out := map[string]int{}
		for _, g := range c.gateways() {
			out[g.name] = counterOn(ctx, t, c, g, "comfygate_pubsub_reconnects_total")
		}
		return out
	}

	t.Run("failover", func(t *testing.T) {
		rid, ws := follow(t)
		stepTo(t, ws, 2)
		before := reconnects(t)
		m, err := rc.MasterOf(ctx, c.keys.Record(rid))
		if err != nil {
			t.Fatal(err)
		}
		r, err := rc.ReplicaOf(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		// The callbacks go on at once: the success lands while the shard
		// has no master (the replicas answer 503 and RunComfy retries) or
		// just after, while the replicas' subscriptions are still being
		// moved, and reaches the watchers by their resync if not by pub/sub.
		rc.Kill(m)
		c.lb.open()
		if err := rc.WaitMaster(ctx, r); err != nil {
			t.Fatal(err)
		}
		t.Logf("master %s killed; %s took over", m.Addr, r.Addr)
		finish(t, rid, ws)
		for _, g := range c.gateways() {
			eventually(ctx, t, g.name+" to re-establish its subscription", func() bool {
				return counterOn(ctx, t, c, g, "comfygate_pubsub_reconnects_total") > before[g.name]
			})
		}
		// The old master comes back as a replica of its successor.
		if err := rc.Revive(m); err != nil {
			t.Fatal(err)
		}
		if err := rc.WaitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		// Each replica is ready again once its slot map names a live
		// master for every bucket: its submits are refused until then.
		for _, g := range c.gateways() {
			eventually(ctx, t, g.name+" to be ready after the failover", func() bool {
				return c.readyz(ctx, g) == http.StatusOK
			})
		}
	})

	t.Run("reshard", func(t *testing.T) {
		rid, ws := follow(t)
		stepTo(t, ws, 2)
		before := reconnects(t)
		moveSlotOf(ctx, t, rc, c.keys.Record(rid))
		moved(t, rid, before)
		finish(t, rid, ws)
	})
	checkShardConnections(ctx, t, rc, 0)
}

// checkShardConnections checks, with CLIENT LIST on every node, that each
// master holds want connections with sharded subscriptions (one per
// replica, when every replica watches a request on every shard) and each
// replica node none.
func checkShardConnections(ctx context.Context, t *testing.T, rc *redistest.Cluster, want int) {
	t.Helper()
	for _, n := range rc.Nodes {
		rdb := n.Client(t)
		role, err := rdb.Do(ctx, "ROLE").Slice()
		if err != nil {
			continue // a node killed and not revived
		}
		list, err := rdb.ClientList(ctx).Result()
		if err != nil {
			t.Fatalf("CLIENT LIST on %s: %v", n.Addr, err)
		}
		got := 0
		for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "ssub="); ok && v != "0" {
					got++
				}
			}
		}
		w := want
		if role[0] != "master" {
			w = 0
		}
		if got != w {
			t.Errorf("%s (%v): %d connections with sharded subscriptions, want %d:\n%s", n.Addr, role[0], got, w, list)
		}
	}
}

// moveSlotOf moves the slot of key to another master with redis-cli
// --cluster reshard, which moves the source's lowest-numbered slots: as
// many as it takes to include key's.
func moveSlotOf(ctx context.Context, t *testing.T, rc *redistest.Cluster, key string) {
	t.Helper()
	src, err := rc.MasterOf(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	srdb := src.Client(t)
	slot, err := srdb.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	shards, err := srdb.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var srcID, dstID string
	count := int64(0)
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			if n.Role != "master" || n.Health != "online" {
				continue
			}
			if n.Port == int64(portOf(t, src.Addr)) {
				srcID = n.ID
				for _, r := range sh.Slots {
					if r.Start <= slot {
						count += min(r.End, slot) - r.Start + 1
					}
				}
			} else if dstID == "" {
				dstID = n.ID
			}
		}
	}
	if srcID == "" || dstID == "" {
		t.Fatalf("no source or destination master in %+v", shards)
	}
	out, err := exec.CommandContext(ctx, "redis-cli", "--cluster", "reshard", src.Addr,
		"--cluster-from", srcID, "--cluster-to", dstID, "--cluster-slots", fmt.Sprint(count), "--cluster-yes").CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster reshard: %v\n%s", err, out)
	}
	// redis-cli has told every master; the replicas learn it by gossip.
	var now *redistest.Server
	eventually(ctx, t, fmt.Sprintf("every node to see slot %d moved from %s", slot, src.Addr), func() bool {
		now, err = rc.MasterOf(ctx, key)
		return err == nil && now.Addr != src.Addr
	})
	t.Logf("slot %d moved from %s to %s (%d slots)", slot, src.Addr, now.Addr, count)
}

// portOf is the port of a host:port address.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	p, err := strconv.Atoi(addr[i+1:])
	if err != nil {
		t.Fatal(err)
	}
	return p
}
