package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
)

// redisClusterScenario measures comfygate on a Redis Cluster of three
// masters beside comfygate on the run's single Redis, in the same run: the
// fan-out and the callback ingest of the scenarios of those names, the two
// backends taking turns step by step. It then shows, on the same cluster,
// why comfygate publishes with SPUBLISH there: a classic PUBLISH is
// broadcast over the cluster bus to every node, so every node handles every
// message however many masters there are, while a sharded one stays on the
// master that serves its channel's slot.
func redisClusterScenario(ctx context.Context, e *env) (result, error) {
	perReplica, conns, _, step := fanOutSize(e.smoke)
	ingestDur, _ := clusterIngestSize(e.smoke)
	messages, channels := clusterPublishSize(e.smoke)
	res := result{Setup: fmt.Sprintf("A Redis Cluster of three masters and no replicas (internal/redistest, every node a redis-server of its own on this machine, "+
		"its append-only file turned off at start, as the run's single Redis has none), "+
		"beside the run's single Redis as the reference. Each gateway figure is measured on both with the same load, the two taking turns: "+
		"**fan-out** as in the fan-out scenario (two replicas per backend, %s watchers of one request, %d per replica over %d connections, callbacks POSTed to replica A at each rate for %s, "+
		"the single Redis's step then the cluster's at each rate); "+
		"**callback ingest** as in the callback ingest scenario (one replica per backend, 64 connections, %s in all in 3 windows each, alternating). "+
		"The replicas on the cluster get `--redis-url redis+cluster://…` (16 buckets, SPUBLISH from the save script, SSUBSCRIBE per shard: a request's publishes go to the master of its bucket, and 16 buckets fall 5, 5 and 6 on three masters, about 31%%, 31%% and 38%%); those on the single Redis the classic layout (PUBLISH, SUBSCRIBE). "+
		"Then, on the same cluster with no gateway running, %s messages of 1 KiB are published over %s channels spread over all slots through a go-redis ClusterClient (pipelined, 256 a batch, at most 2,048 not yet received), "+
		"once with classic PUBLISH (one subscriber, SUBSCRIBE on one node) and once with SPUBLISH (one subscriber per master, SSUBSCRIBE to the channels it serves). "+
		"A node *handles* a message when it runs the publish command (INFO commandstats: cmdstat_publish, cmdstat_spublish, counted inside scripts too) "+
		"or receives it over the cluster bus to deliver to its own subscribers (CLUSTER INFO: cluster_stats_messages_publish_received, cluster_stats_messages_publishshard_received; "+
		"Redis 7.0 lists a message type only once it has counted one, and sends sharded messages over the bus only to the shard's replicas, of which there are none here); "+
		"each counter is read before and after, per node. The same counters are read around comfygate's own cluster fan-out and ingest windows.",
		fmtInt(int64(2*perReplica)), perReplica, conns, step, ingestDur, fmtInt(int64(messages)), fmtInt(int64(channels)))}

	rc, err := startRedisCluster(ctx)
	if err != nil {
		return res, err
	}
	defer rc.stop()
	if err := clusterFanOut(ctx, e, rc, &res); err != nil {
		return res, fmt.Errorf("fan-out: %w", err)
	}
	if err := clusterIngest(ctx, e, rc, &res); err != nil {
		return res, fmt.Errorf("ingest: %w", err)
	}
	if err := publishShare(ctx, e, rc, &res); err != nil {
		return res, fmt.Errorf("publish share: %w", err)
	}
	return res, nil
}

// redisCluster is the scenario's Redis Cluster: the masters, each with a
// client of its own for its counters.
type redisCluster struct {
	c     *redistest.Cluster
	url   string // the gateway's --redis-url: every node as a seed
	nodes []clusterNode
}

type clusterNode struct {
	addr string
	pid  int // from INFO server: redistest does not hand out its processes
	rdb  *redis.Client
}

// startRedisCluster starts a cluster of three masters with redistest and
// turns their append-only files off: redistest's nodes write one (for its
// failover tests), the run's single Redis does not, and the comparison is
// of the two layouts, not of persistence.
func startRedisCluster(ctx context.Context) (rc *redisCluster, err error) {
	c, err := redistest.StartCluster(3, 0)
	if err != nil {
		return nil, fmt.Errorf("start the Redis Cluster: %w", err)
	}
	rc = &redisCluster{c: c, url: "redis+cluster://" + strings.Join(c.Addrs(), ",")}
	defer func() {
		if err != nil {
			rc.stop()
		}
	}()
	for _, addr := range c.Addrs() {
		n := clusterNode{addr: addr, rdb: redis.NewClient(&redis.Options{Addr: addr})}
		rc.nodes = append(rc.nodes, n)
		if err := n.rdb.ConfigSet(ctx, "appendonly", "no").Err(); err != nil {
			return rc, fmt.Errorf("node %s: CONFIG SET appendonly no: %w", addr, err)
		}
		info, err := n.rdb.InfoMap(ctx, "server").Result()
		if err != nil {
			return rc, fmt.Errorf("node %s: INFO server: %w", addr, err)
		}
		pid, err := strconv.Atoi(info["Server"]["process_id"])
		if err != nil {
			return rc, fmt.Errorf("node %s: process_id: %w", addr, err)
		}
		rc.nodes[len(rc.nodes)-1].pid = pid
	}
	return rc, nil
}

func (rc *redisCluster) stop() {
	for _, n := range rc.nodes {
		n.rdb.Close()
	}
	rc.c.Stop()
}

// named are the nodes' processes, for the CPU accounting.
func (rc *redisCluster) named() []namedPID {
	ps := make([]namedPID, len(rc.nodes))
	for i, n := range rc.nodes {
		ps[i] = namedPID{"redis node " + port(n.addr), n.pid}
	}
	return ps
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return ":" + p
}

// startClusterOn is startCluster on the Redis at redisURL, the replicas
// named after label: the scenario runs replicas on both backends at once,
// and their logs must not share a file.
func (e *env) startClusterOn(ctx context.Context, label, redisURL string, n int) (c *cluster, stop func(), err error) {
	return e.startReplicas(ctx, label, label+"-replica-", n, gwOpts{redisPrefix: label, redisURL: redisURL, callbacks: true})
}

// clusterFanOut runs the fan-out on both backends, a step of each at every
// rate in turn, and reads the cluster's publish counters around the
// cluster's steps.
func clusterFanOut(ctx context.Context, e *env, rc *redisCluster, res *result) error {
	perReplica, conns, rates, step := fanOutSize(e.smoke)
	watchers := 2 * perReplica
	single, stopSingle, err := e.startClusterOn(ctx, "single-fanout", e.redis.url, 2)
	defer stopSingle()
	if err != nil {
		return err
	}
	clustered, stopClustered, err := e.startClusterOn(ctx, "cluster-fanout", rc.url, 2)
	defer stopClustered()
	if err != nil {
		return err
	}
	fs, err := openFanOut(ctx, single, perReplica, conns, e.redis.named())
	if err != nil {
		return fmt.Errorf("one Redis: %w", err)
	}
	defer fs.close()
	fc, err := openFanOut(ctx, clustered, perReplica, conns, rc.named()...)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer fc.close()

	var pub pubDelta
	var bestSingle, bestCluster float64
	for _, rate := range rates {
		s, err := fs.step(ctx, e, rate, step, fmt.Sprintf("single-fanout-%d", rate))
		if err != nil {
			return fmt.Errorf("one Redis: %w", err)
		}
		before, err := rc.counts(ctx)
		if err != nil {
			return err
		}
		c, err := fc.step(ctx, e, rate, step, fmt.Sprintf("cluster-fanout-%d", rate))
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		after, err := rc.counts(ctx)
		if err != nil {
			return err
		}
		pub = pub.add(delta(before, after))
		res.Rows = append(res.Rows, row{
			Figure: fmt.Sprintf("fan-out deliveries/s at %d events/s offered (sent: %s cluster, %s one Redis; %s deliveries/s offered)",
				rate, fmtRate(c.sentPerSec()), fmtRate(s.sentPerSec()), fmtInt(int64(rate*watchers))),
			Value:     fanValue(c, watchers),
			Reference: fanValue(s, watchers) + " (one Redis)",
			Ratio:     pct(c.perSec(), s.perSec()),
		})
		res.CPU = append(res.CPU,
			cpuTable{Window: stepWindow("fan-out on the cluster, ", rate, c), Op: "delivery", Ops: int(c.delivered), Rows: c.cpu},
			cpuTable{Window: stepWindow("fan-out on one Redis, ", rate, s), Op: "delivery", Ops: int(s.delivered), Rows: s.cpu})
		if c.clean() {
			bestCluster = max(bestCluster, c.perSec())
		}
		if s.clean() {
			bestSingle = max(bestSingle, s.perSec())
		}
	}
	res.Rows = append(res.Rows,
		row{Figure: "fan-out best deliveries/s with no gaps", Value: fmtRate(bestCluster), Reference: fmtRate(bestSingle) + " (one Redis)", Ratio: pct(bestCluster, bestSingle)},
		pub.row(rc, "comfygate fan-out on the cluster: publishes each node handled", fmt.Sprintf("of %s callbacks posted (one request: one channel, one slot)", fmtInt(int64(fc.sent)))))
	return nil
}

// fanValue is a step's deliveries/s, marked when a watcher fell behind.
func fanValue(s fanStep, watchers int) string {
	v := fmtRate(s.perSec())
	if s.gapped > 0 {
		v += fmt.Sprintf(" (%d of %d watchers gapped)", s.gapped, watchers)
	}
	if s.lost > 0 {
		v += fmt.Sprintf(" (%d disconnected by the server)", s.lost)
	}
	if !s.complete {
		v += " (late: not every watcher had the last event within 5s)"
	}
	return v
}

// clusterIngestSize is the ingest's measured time (in all, per backend) and
// warm-up, as in the callback ingest scenario.
func clusterIngestSize(smoke bool) (dur, warm time.Duration) {
	if smoke {
		return 500 * time.Millisecond, 100 * time.Millisecond
	}
	return 10 * time.Second, 2 * time.Second
}

// clusterIngest runs the callback ingest's closed loop on a replica of each
// backend, in alternating windows.
func clusterIngest(ctx context.Context, e *env, rc *redisCluster, res *result) error {
	const conns, rounds = 64, 3
	dur, warm := clusterIngestSize(e.smoke)
	single, stopSingle, err := e.startClusterOn(ctx, "single-ingest", e.redis.url, 1)
	defer stopSingle()
	if err != nil {
		return err
	}
	clustered, stopClustered, err := e.startClusterOn(ctx, "cluster-ingest", rc.url, 1)
	defer stopClustered()
	if err != nil {
		return err
	}
	type side struct {
		name     string // "the cluster" or "one Redis"
		cluster  bool
		g        *gateway
		path     string
		procs    []namedPID
		before   float64
		load     loadResult
		cpu      []cpuRow
		appliedN int
	}
	sides := []*side{
		{name: "the cluster", cluster: true, g: clustered.replicas[0], path: clustered.path, procs: append([]namedPID{clustered.replicas[0].named()}, rc.named()...)},
		{name: "one Redis", g: single.replicas[0], path: single.path, procs: []namedPID{single.replicas[0].named(), e.redis.named()}},
	}
	load := func(s *side, label string) request {
		return func(w, i int, buf []byte) (string, []byte) {
			rid := fmt.Sprintf("in-%s-%d-%d", label, w, i/phases)
			return s.path, callbackBody(buf, benchDep, rid, i%phases, 3)
		}
	}
	const applied = `comfygate_callbacks_total{outcome="applied"}`
	for _, s := range sides {
		if _, err := closedLoop(ctx, s.g.httpAddr, conns, warm, 0, load(s, "warm")); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if s.before, err = scrape(ctx, s.g, applied); err != nil {
			return err
		}
	}
	var pub pubDelta
	for r := range rounds {
		for _, s := range sides {
			var before []pubCounts
			if s.cluster {
				if before, err = rc.counts(ctx); err != nil {
					return err
				}
			}
			m := meterOf(s.procs...)
			m.begin()
			part, err := closedLoop(ctx, s.g.httpAddr, conns, dur/rounds, 0, load(s, fmt.Sprintf("run%d", r)))
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			s.load = s.load.add(part)
			s.cpu = addCPU(s.cpu, m.end(part.ops), s.load.ops)
			if s.cluster {
				after, err := rc.counts(ctx)
				if err != nil {
					return err
				}
				pub = pub.add(delta(before, after))
			}
		}
	}
	for _, s := range sides {
		after, err := scrape(ctx, s.g, applied)
		if err != nil {
			return err
		}
		s.appliedN = int(after - s.before)
		res.CPU = append(res.CPU, cpuTable{Window: "callback ingest on " + s.name, Op: "callback", Ops: s.load.ops, Rows: s.cpu})
		res.Notes = append(res.Notes, fmt.Sprintf("Callback ingest on %s: %s callbacks answered, %s non-2xx; the replica counted %s applied in the windows (every callback is meant to apply).",
			s.name, fmtInt(int64(s.load.ops)), fmtInt(int64(s.load.failures)), fmtInt(int64(s.appliedN))))
		if s.load.failures > 0 || s.appliedN != s.load.ops {
			res.Notes = append(res.Notes, fmt.Sprintf("**Not every callback was applied on %s: its callbacks/s is not the full path.**", s.name))
		}
	}
	c, o := sides[0].load, sides[1].load
	res.Rows = append(res.Rows,
		row{Figure: "callback ingest, callbacks/s", Value: fmtRate(c.rate()), Reference: fmtRate(o.rate()) + " (one Redis)", Ratio: pct(c.rate(), o.rate())},
		row{Figure: "callback ingest, latency p50", Value: fmtDur(c.lat.quantile(0.50)), Reference: fmtDur(o.lat.quantile(0.50)), Ratio: ratio(float64(c.lat.quantile(0.50)), float64(o.lat.quantile(0.50)))},
		row{Figure: "callback ingest, latency p99", Value: fmtDur(c.lat.quantile(0.99)), Reference: fmtDur(o.lat.quantile(0.99)), Ratio: ratio(float64(c.lat.quantile(0.99)), float64(o.lat.quantile(0.99)))},
		row{Figure: "callback ingest, Redis CPU per callback (all nodes)", Value: fmt.Sprintf("%.1f µs", redisPerOp(sides[0].cpu)), Reference: fmt.Sprintf("%.1f µs", redisPerOp(sides[1].cpu)),
			Ratio: ratio(redisPerOp(sides[0].cpu), redisPerOp(sides[1].cpu))},
		pub.row(rc, "comfygate ingest on the cluster: publishes each node handled", fmt.Sprintf("of %s callbacks applied (3 per request, requests spread over 16 buckets)", fmtInt(int64(sides[0].appliedN)))))
	return nil
}

// clusterPublishSize is how many messages each publish run sends, over how
// many channels.
func clusterPublishSize(smoke bool) (messages, channels int) {
	if smoke {
		return 3_000, 1024
	}
	return 60_000, 1024
}

// publishShare publishes the same messages on the cluster with classic
// PUBLISH and with SPUBLISH, each with subscribers that receive every one,
// and reports how many each node handled.
func publishShare(ctx context.Context, e *env, rc *redisCluster, res *result) error {
	messages, nchan := clusterPublishSize(e.smoke)
	channels := make([]string, nchan)
	for i := range channels {
		channels[i] = "bench:pub:" + strconv.Itoa(i)
	}
	owner, err := rc.channelOwners(ctx, channels)
	if err != nil {
		return err
	}
	cc := redis.NewClusterClient(rc.c.Options())
	defer cc.Close()

	classic, err := publishRun(ctx, rc, cc, channels, owner, messages, false)
	if err != nil {
		return fmt.Errorf("classic: %w", err)
	}
	sharded, err := publishRun(ctx, rc, cc, channels, owner, messages, true)
	if err != nil {
		return fmt.Errorf("sharded: %w", err)
	}

	shares := func(p pubDelta) string {
		var s []string
		for i := range rc.nodes {
			s = append(s, pct(float64(p.nodes[i].handled()), float64(messages)))
		}
		return strings.Join(s, " / ")
	}
	res.Rows = append(res.Rows, row{
		Figure:    fmt.Sprintf("share of %s published messages each node handles (nodes %s)", fmtInt(int64(messages)), rc.ports()),
		Value:     "sharded: " + shares(sharded.pub),
		Reference: "classic: " + shares(classic.pub),
		Ratio:     ratio(float64(sharded.pub.handled()), float64(classic.pub.handled())),
	})
	for i, n := range rc.nodes {
		s, c := sharded.pub.nodes[i], classic.pub.nodes[i]
		res.Rows = append(res.Rows, row{
			Figure:    fmt.Sprintf("node %s: messages handled, sharded vs classic", port(n.addr)),
			Value:     fmt.Sprintf("%s (%s SPUBLISH + %s from the bus)", fmtInt(s.handled()), fmtInt(s.spublish), fmtInt(s.shardRecv)),
			Reference: fmt.Sprintf("%s (%s PUBLISH + %s from the bus)", fmtInt(c.handled()), fmtInt(c.publish), fmtInt(c.busRecv)),
			Ratio:     pct(float64(s.handled()), float64(c.handled())),
		})
	}
	res.Rows = append(res.Rows,
		row{
			Figure:    "publish messages sent over the cluster bus, all nodes",
			Value:     fmtInt(sharded.pub.busSent()),
			Reference: fmtInt(classic.pub.busSent()),
		},
		row{
			Figure:    "Redis CPU per message, all nodes, sharded vs classic",
			Value:     fmt.Sprintf("%.1f µs", redisPerOp(sharded.cpu)),
			Reference: fmt.Sprintf("%.1f µs", redisPerOp(classic.cpu)),
			Ratio:     ratio(redisPerOp(sharded.cpu), redisPerOp(classic.cpu)),
		},
		row{
			Figure:    "messages/s published and received, sharded vs classic",
			Value:     fmtRate(float64(messages) / sharded.took.Seconds()),
			Reference: fmtRate(float64(messages) / classic.took.Seconds()),
			Ratio:     ratio(classic.took.Seconds(), sharded.took.Seconds()),
		})
	res.CPU = append(res.CPU,
		cpuTable{Window: "classic PUBLISH", Op: "message", Ops: messages, Rows: classic.cpu},
		cpuTable{Window: "SPUBLISH", Op: "message", Ops: messages, Rows: sharded.cpu})
	return nil
}

// redisPerOp sums the µs per operation of the Redis processes (the single
// Redis, or every node of the cluster), leaving out the harness and the
// replicas.
func redisPerOp(rows []cpuRow) float64 {
	var sum float64
	for _, r := range rows {
		if strings.HasPrefix(r.Process, "redis") {
			sum += r.PerOp
		}
	}
	return sum
}

// channelOwners returns, per channel, the index of the node that serves its
// slot, from the cluster's own slot map and key hash.
func (rc *redisCluster) channelOwners(ctx context.Context, channels []string) ([]int, error) {
	rdb := rc.nodes[0].rdb
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SHARDS: %w", err)
	}
	cmds := make([]*redis.IntCmd, len(channels))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, ch := range channels {
			cmds[i] = p.ClusterKeySlot(ctx, ch)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("CLUSTER KEYSLOT: %w", err)
	}
	owner := make([]int, len(channels))
	for i, cmd := range cmds {
		slot := int(cmd.Val())
		owner[i] = -1
		for _, sh := range shards {
			serves := false
			for _, r := range sh.Slots {
				serves = serves || (int64(slot) >= r.Start && int64(slot) <= r.End)
			}
			if !serves {
				continue
			}
			for _, sn := range sh.Nodes {
				if sn.Role != "master" {
					continue
				}
				for j, n := range rc.nodes {
					if n.addr == net.JoinHostPort(sn.IP, strconv.FormatInt(sn.Port, 10)) {
						owner[i] = j
					}
				}
			}
		}
		if owner[i] < 0 {
			return nil, fmt.Errorf("no node of the cluster serves slot %d of %s", slot, channels[i])
		}
	}
	return owner, nil
}

// pubRun is what one publish run measured.
type pubRun struct {
	pub  pubDelta
	cpu  []cpuRow
	took time.Duration // from the first publish until the subscribers had the last
}

// publishRun subscribes to every channel, classic SUBSCRIBE on the first
// node or SSUBSCRIBE on each channel's master, then publishes messages
// round the channels through cc, and returns once the subscribers received
// them all. The subscribers are flow-controlled (at most 2,048 messages
// published and not yet received) so that no subscriber's output buffer
// reaches Redis's pub/sub limit and gets it disconnected.
func publishRun(ctx context.Context, rc *redisCluster, cc *redis.ClusterClient, channels []string, owner []int, messages int, sharded bool) (pubRun, error) {
	var pss []*redis.PubSub
	var got atomic.Int64
	var wg sync.WaitGroup
	defer func() {
		for _, ps := range pss {
			ps.Close()
		}
		wg.Wait()
	}()
	if sharded {
		for i, n := range rc.nodes {
			ps := n.rdb.SSubscribe(ctx)
			pss = append(pss, ps)
			want := 0
			for c, ch := range channels {
				if owner[c] != i {
					continue
				}
				// One channel a command: an SSUBSCRIBE of channels in
				// different slots is refused (CROSSSLOT).
				if err := ps.SSubscribe(ctx, ch); err != nil {
					return pubRun{}, fmt.Errorf("SSUBSCRIBE on %s: %w", n.addr, err)
				}
				want++
			}
			if err := waitSubscribed(ctx, func() (int, error) {
				chs, err := n.rdb.PubSubShardChannels(ctx, "bench:pub:*").Result()
				return len(chs), err
			}, want); err != nil {
				return pubRun{}, fmt.Errorf("SSUBSCRIBE on %s: %w", n.addr, err)
			}
		}
	} else {
		n := rc.nodes[0]
		ps := n.rdb.Subscribe(ctx, channels...)
		pss = append(pss, ps)
		if err := waitSubscribed(ctx, func() (int, error) {
			chs, err := n.rdb.PubSubChannels(ctx, "bench:pub:*").Result()
			return len(chs), err
		}, len(channels)); err != nil {
			return pubRun{}, fmt.Errorf("SUBSCRIBE on %s: %w", n.addr, err)
		}
	}
	for _, ps := range pss {
		wg.Go(func() {
			// Ends when the deferred Close breaks the connection.
			for {
				if _, err := ps.ReceiveMessage(ctx); err != nil {
					return
				}
				got.Add(1)
			}
		})
	}

	const batch, window = 256, 2048
	payload := strings.Repeat("x", bodySize)
	before, err := rc.counts(ctx)
	if err != nil {
		return pubRun{}, err
	}
	m := meterOf(rc.named()...)
	m.begin()
	t0 := time.Now()
	for off := 0; off < messages; off += batch {
		if err := waitGot(ctx, &got, off-window); err != nil {
			return pubRun{}, err
		}
		if _, err := cc.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := off; i < min(off+batch, messages); i++ {
				if sharded {
					p.SPublish(ctx, channels[i%len(channels)], payload)
				} else {
					p.Publish(ctx, channels[i%len(channels)], payload)
				}
			}
			return nil
		}); err != nil {
			return pubRun{}, fmt.Errorf("publish: %w", err)
		}
	}
	if err := waitGot(ctx, &got, messages); err != nil {
		return pubRun{}, err
	}
	r := pubRun{took: time.Since(t0), cpu: m.end(messages)}
	after, err := rc.counts(ctx)
	if err != nil {
		return pubRun{}, err
	}
	r.pub = delta(before, after)
	if n := got.Load(); n != int64(messages) {
		return r, fmt.Errorf("the subscribers received %d messages of %d", n, messages)
	}
	return r, nil
}

// waitSubscribed polls count until it reaches want: a subscription is only
// sure to be in place once the node lists it.
func waitSubscribed(ctx context.Context, count func() (int, error), want int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := count()
		if err == nil && n >= want {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d channels of %d subscribed (%v): %w", n, want, err, context.DeadlineExceeded)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGot waits until the subscribers received at least n messages, at most
// 30s.
func waitGot(ctx context.Context, got *atomic.Int64, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for got.Load() < int64(n) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the subscribers received %d messages of %d within 30s", got.Load(), n)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(200 * time.Microsecond)
	}
	return nil
}

// pubCounts are one node's counters of publishing, or their change over a
// window.
type pubCounts struct {
	// publish, spublish: the commands the node ran (INFO commandstats,
	// which counts the commands scripts call too).
	publish, spublish int64
	// busSent, busRecv: classic publish messages over the cluster bus,
	// which broadcasts each to every other node.
	busSent, busRecv int64
	// shardSent, shardRecv: sharded publish messages over the bus, which
	// go to the shard's replicas only.
	shardSent, shardRecv int64
}

// handled is how many messages the node processed: those it was asked to
// publish, and those it received from other nodes to deliver to its own
// subscribers.
func (p pubCounts) handled() int64 { return p.publish + p.spublish + p.busRecv + p.shardRecv }

func (p pubCounts) minus(o pubCounts) pubCounts {
	return pubCounts{p.publish - o.publish, p.spublish - o.spublish, p.busSent - o.busSent, p.busRecv - o.busRecv, p.shardSent - o.shardSent, p.shardRecv - o.shardRecv}
}

func (p pubCounts) plus(o pubCounts) pubCounts {
	return pubCounts{p.publish + o.publish, p.spublish + o.spublish, p.busSent + o.busSent, p.busRecv + o.busRecv, p.shardSent + o.shardSent, p.shardRecv + o.shardRecv}
}

// pubDelta is the change of every node's counters over windows, in the
// cluster's order of nodes.
type pubDelta struct{ nodes []pubCounts }

func delta(before, after []pubCounts) pubDelta {
	d := pubDelta{nodes: make([]pubCounts, len(after))}
	for i := range after {
		d.nodes[i] = after[i].minus(before[i])
	}
	return d
}

func (d pubDelta) add(o pubDelta) pubDelta {
	if d.nodes == nil {
		return o
	}
	for i := range d.nodes {
		d.nodes[i] = d.nodes[i].plus(o.nodes[i])
	}
	return d
}

// published is how many messages were published in the cluster: each is
// run as a command by one node.
func (d pubDelta) published() int64 {
	var n int64
	for _, p := range d.nodes {
		n += p.publish + p.spublish
	}
	return n
}

func (d pubDelta) handled() int64 {
	var n int64
	for _, p := range d.nodes {
		n += p.handled()
	}
	return n
}

func (d pubDelta) busSent() int64 {
	var n int64
	for _, p := range d.nodes {
		n += p.busSent + p.shardSent
	}
	return n
}

// row reports the per-node counts of comfygate's own publishing: what
// each node handled (and its share of what was published), against what
// was sent to the gateway.
func (d pubDelta) row(rc *redisCluster, figure, of string) row {
	var counts, shares []string
	var publish, spublish int64
	for _, p := range d.nodes {
		counts = append(counts, fmtInt(p.handled()))
		shares = append(shares, pct(float64(p.handled()), float64(d.published())))
		publish += p.publish
		spublish += p.spublish
	}
	return row{
		Figure: figure + " (nodes " + rc.ports() + ")",
		Value:  strings.Join(counts, " / ") + " (" + strings.Join(shares, " / ") + ")",
		Reference: fmt.Sprintf("%s; %s SPUBLISH, %s PUBLISH, %s bus messages", of,
			fmtInt(spublish), fmtInt(publish), fmtInt(d.busSent())),
	}
}

func (rc *redisCluster) ports() string {
	var ps []string
	for _, n := range rc.nodes {
		ps = append(ps, port(n.addr))
	}
	return strings.Join(ps, " / ")
}

// counts reads every node's counters.
func (rc *redisCluster) counts(ctx context.Context) ([]pubCounts, error) {
	out := make([]pubCounts, len(rc.nodes))
	for i, n := range rc.nodes {
		info, err := n.rdb.ClusterInfo(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("node %s: CLUSTER INFO: %w", n.addr, err)
		}
		// Redis lists a message type only once it has counted one: a
		// missing field is 0.
		f := infoFields(info)
		p := pubCounts{
			busSent: f["cluster_stats_messages_publish_sent"], busRecv: f["cluster_stats_messages_publish_received"],
			shardSent: f["cluster_stats_messages_publishshard_sent"], shardRecv: f["cluster_stats_messages_publishshard_received"],
		}
		stats, err := n.rdb.Info(ctx, "commandstats").Result()
		if err != nil {
			return nil, fmt.Errorf("node %s: INFO commandstats: %w", n.addr, err)
		}
		for _, l := range strings.Split(stats, "\n") {
			name, v, ok := strings.Cut(strings.TrimSpace(l), ":")
			if !ok || (name != "cmdstat_publish" && name != "cmdstat_spublish") {
				continue
			}
			calls := callsOf(v)
			if name == "cmdstat_publish" {
				p.publish = calls
			} else {
				p.spublish = calls
			}
		}
		out[i] = p
	}
	return out, nil
}

// infoFields parses "name:value" lines with integer values.
func infoFields(info string) map[string]int64 {
	f := map[string]int64{}
	for _, l := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			f[k] = n
		}
	}
	return f
}

// callsOf is the calls= of a commandstats value
// ("calls=1,usec=21,usec_per_call=21.00,...").
func callsOf(v string) int64 {
	for _, kv := range strings.Split(v, ",") {
		if n, ok := strings.CutPrefix(kv, "calls="); ok {
			c, _ := strconv.ParseInt(n, 10, 64)
			return c
		}
	}
	return 0
}
