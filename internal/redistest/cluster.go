package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/freeport"
)

// Cluster is a private Redis Cluster for tests: masters, each with its
// replicas, every node a redis-server of its own on a free port, made a
// cluster with `redis-cli --cluster create` and stopped by Stop.
type Cluster struct {
	// Nodes are the cluster's servers in the order they were created:
	// the masters first, then the replicas (which master each replica
	// follows is redis-cli's choice; see MasterOf and ReplicaOf).
	Nodes []*Server
}

// clusterNodeTimeout is how long a node may be unreachable before its
// replica replaces it: short, so that a failover test waits seconds.
const clusterNodeTimeout = "1000"

// StartCluster starts a cluster of masters masters with replicas replicas
// each, and returns once every node reports the cluster healthy and every
// replica is in sync with its master.
func StartCluster(masters, replicas int) (*Cluster, error) {
	if masters < 3 {
		return nil, errors.New("a Redis Cluster needs at least 3 masters")
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redis-cli is not installed (apt-get install redis-tools, or bash scripts/deps.sh)")
	}
	c := &Cluster{}
	for range masters * (1 + replicas) {
		// The bus port is picked as the node's port is: by default it is
		// the port plus 10,000, which may fall in the kernel's ephemeral
		// range, where an outbound connection can take it first.
		bus, err := freeport.Loopback()
		if err != nil {
			c.Stop()
			return nil, err
		}
		_, busPort, _ := net.SplitHostPort(bus)
		s, err := StartPrivate("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", busPort,
			"--cluster-node-timeout", clusterNodeTimeout, "--repl-diskless-sync-delay", "0", "--appendfsync", "everysec")
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", fmt.Sprint(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %w: %s", err, bytes.TrimSpace(out))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Addrs are the nodes' host:port addresses, in Nodes' order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return addrs
}

// Options are cluster client options for the cluster: every node as a
// seed, and the slot map read again every second, so that a client follows
// a failover within seconds (go-redis keeps a cached map for a minute by
// default, and goes on dialling a dead master meanwhile).
func (c *Cluster) Options() *redis.ClusterOptions {
	return &redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second}
}

// Client returns a cluster client of the cluster, closed when t ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(c.Options())
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Stop stops every node and removes its files.
func (c *Cluster) Stop() {
	for _, s := range c.Nodes {
		s.Stop()
	}
}

// live reports whether a node's process runs.
func (s *Server) live() bool {
	return s.cmd != nil && s.cmd.ProcessState == nil
}

// nodeClient is a plain client of one node, for its own view of the
// cluster.
func (s *Server) nodeClient() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// every running replica's link to its master is up.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, s := range c.Nodes {
		if !s.live() {
			continue
		}
		if err := s.waitInfo(ctx, func(rdb *redis.Client) bool {
			info, err := rdb.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			repl, err := rdb.Info(ctx, "replication").Result()
			return err == nil && (strings.Contains(repl, "role:master") || strings.Contains(repl, "master_link_status:up"))
		}); err != nil {
			return fmt.Errorf("cluster node %s: %w", s.Addr, err)
		}
	}
	return nil
}

// waitInfo polls the node until ok holds or ctx ends.
func (s *Server) waitInfo(ctx context.Context, ok func(*redis.Client) bool) error {
	rdb := s.nodeClient()
	defer rdb.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !ok(rdb) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// MasterOf returns the node that serves key's slot now, as the running
// nodes see it.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	for _, s := range c.Nodes {
		if !s.live() {
			continue
		}
		rdb := s.nodeClient()
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			rdb.Close()
			continue
		}
		shards, err := rdb.ClusterShards(ctx).Result()
		rdb.Close()
		if err != nil {
			continue
		}
		for _, sh := range shards {
			if !servesSlot(sh, slot) {
				continue
			}
			for _, n := range sh.Nodes {
				if n.Role == "master" && n.Health == "online" {
					return c.byPort(n.Port)
				}
			}
		}
	}
	return nil, fmt.Errorf("no running node knows the master of %q", key)
}

// ReplicaOf returns a running replica of master, as master's shard lists it.
func (c *Cluster) ReplicaOf(ctx context.Context, master *Server) (*Server, error) {
	rdb := master.nodeClient()
	defer rdb.Close()
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return nil, err
	}
	for _, sh := range shards {
		var isMine bool
		var replicas []int64
		for _, n := range sh.Nodes {
			switch {
			case n.Role == "master" && fmt.Sprintf("%s:%d", n.IP, n.Port) == master.Addr:
				isMine = true
			case n.Role == "replica" && n.Health != "failed": // "loading" until it has replicated a write
				replicas = append(replicas, n.Port)
			}
		}
		if isMine && len(replicas) > 0 {
			return c.byPort(replicas[0])
		}
	}
	return nil, fmt.Errorf("%s has no replica online", master.Addr)
}

// Kill stops a node at once (SIGKILL), as a crash; its files stay, so
// Revive brings it back as it was.
func (c *Cluster) Kill(s *Server) {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// Revive starts a killed node again on its port, with its data and its
// cluster configuration: it rejoins the cluster (a master that was
// replaced comes back as a replica of its successor).
func (c *Cluster) Revive(s *Server) error {
	s.cmd = exec.Command(s.cmd.Path, s.cmd.Args[1:]...)
	return s.start()
}

// WaitMaster waits until s reports itself a master (a replica's promotion
// after its master's failure).
func (c *Cluster) WaitMaster(ctx context.Context, s *Server) error {
	return s.waitInfo(ctx, func(rdb *redis.Client) bool {
		repl, err := rdb.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(repl, "role:master")
	})
}

func (c *Cluster) byPort(port int64) (*Server, error) {
	for _, s := range c.Nodes {
		if int64(s.port) == port {
			return s, nil
		}
	}
	return nil, fmt.Errorf("no node of the cluster listens on port %d", port)
}

// servesSlot reports whether a shard's slot ranges hold slot.
func servesSlot(sh redis.ClusterShard, slot int64) bool {
	for _, r := range sh.Slots {
		if slot >= r.Start && slot <= r.End {
			return true
		}
	}
	return false
}
