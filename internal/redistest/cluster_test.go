package redistest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestClusterFailsOver: StartCluster makes a healthy cluster of 3 masters
// and 3 replicas that spreads keys over its masters; when the master of a
// key is killed, its replica takes over and the key is served again (from
// the replica's copy); the killed node rejoins when revived.
func TestClusterFailsOver(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six redis-servers")
	}
	start := time.Now()
	c, err := StartCluster(3, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if len(c.Nodes) != 6 {
		t.Fatalf("%d nodes, want 6", len(c.Nodes))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := c.Client(t)
	masters := map[string]bool{}
	for i := range 30 {
		key := fmt.Sprintf("key-%d", i)
		if err := cc.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		m, err := c.MasterOf(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Addr] = true
	}
	if len(masters) != 3 {
		t.Fatalf("30 keys on %d masters, want 3", len(masters))
	}

	m, err := c.MasterOf(ctx, "key-0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.ReplicaOf(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	// The replica has the key before its master goes (WAIT: replicated).
	if err := cc.Set(ctx, "key-0", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	master := m.nodeClient()
	if n, err := master.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n < 1 {
		t.Fatalf("WAIT: %d replicas, %v", n, err)
	}
	master.Close()
	t.Logf("cluster up and keys written in %v", time.Since(start))
	start = time.Now()
	c.Kill(m)
	if err := c.WaitMaster(ctx, r); err != nil {
		t.Fatal(err)
	}
	for {
		v, err := cc.Get(ctx, "key-0").Result()
		if err == nil {
			if v != "before" {
				t.Fatalf("key-0 = %q after the failover, want the replicated value", v)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("key-0 not served after the failover: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("failed over in %v", time.Since(start))
	start = time.Now()
	if err := c.Revive(m); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("revived and healthy in %v", time.Since(start))
	if now, err := c.MasterOf(ctx, "key-0"); err != nil || now != r {
		t.Fatalf("key-0's master after the revival: %v (%v), want the promoted replica %s", now, err, r.Addr)
	}
}
