package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/freeport"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/state/redisstore"
)

const (
	deployment = "dep-e2e"
	// simToken is the RunComfy API token the simulator demands and the
	// replicas send.
	simToken = "e2e-runcomfy-token"
	// webhookSecret is the same on every replica, so any of them accepts a
	// callback URL signed by another.
	webhookSecret = "e2e-webhook-secret-0123456789abcdef"
	// testTimeout bounds each test: a hang fails it instead of stalling CI.
	testTimeout = 30 * time.Second
)

// ---- child processes ----

// logBuffer keeps a process's output; safe to read while the process writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// process is a running binary under test.
type process struct {
	name string
	cmd  *exec.Cmd
	logs *logBuffer
	done chan struct{} // closed once the process has exited
}

// startProcess runs bin with args. The environment is the test's, minus
// anything that would configure the binaries behind the test's back, plus env.
func startProcess(t *testing.T, name, bin string, args []string, env ...string) *process {
	t.Helper()
	p := &process{name: name, logs: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COMFYGATE_") && !strings.HasPrefix(kv, "RUNCOMFY_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill ends the process at once (SIGKILL: no drain, no goodbye to clients),
// as a crashed replica or a lost machine does.
func (p *process) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not exit after SIGKILL", p.name)
	}
}

// stop asks the process to stop (SIGTERM) and kills it if it takes too long.
func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freeAddr returns a loopback address with a port free at the time of the call.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// eventually polls cond until it holds, failing the test when ctx ends first.
// Polling with a deadline, not sleeping, is how these tests wait.
func eventually(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// launch starts a server process and waits until up reports it serving.
// start picks fresh ports each time: freeAddr's ports can be taken by another
// process before the server binds them, and then the server exits with
// "address already in use" and is started again.
func launch(ctx context.Context, t *testing.T, name string, start func() *process, up func() bool) *process {
	t.Helper()
	for attempt := 1; ; attempt++ {
		p := start()
		eventually(ctx, t, name+" to serve", func() bool { return p.exited() || up() })
		if !p.exited() {
			return p
		}
		if attempt == 3 || !strings.Contains(p.logs.String(), "address already in use") {
			t.Fatalf("%s exited:\n%s", name, p.logs)
		}
	}
}

// ---- the cluster ----

// clusterConfig varies what newCluster starts.
type clusterConfig struct {
	// redis is the server the replicas share; nil means the package's shared
	// one (each cluster has its own key prefix).
	redis *redistest.Server
	// queueTime and runTime are the simulator's job timings.
	queueTime, runTime time.Duration
	// redisCluster, when set, is the Redis Cluster the replicas share
	// instead of a single server (redis is then unused).
	redisCluster *redistest.Cluster
	// proxied puts a redisProxy of its own between each replica and Redis.
	proxied bool
	// pollInterval, when set, is every replica's --poll-interval.
	pollInterval time.Duration
	// pollOnly leaves out --public-url: the replicas ask for no callbacks
	// and learn every state by polling.
	pollOnly bool
	// args are more flags for every replica, env more variables of theirs,
	// simArgs more flags for the simulator.
	args    []string
	env     []string
	simArgs []string
}

// cluster is a simulator, three replicas A, B and C on one Redis, the load
// balancer their callbacks come through, and the upstream proxy between the
// replicas and the simulator, which counts submits and records (and can slow
// or throttle) every status call.
type cluster struct {
	redis *redistest.Server
	rdb   *redis.Client // the test's own Redis client; nil on a Redis Cluster
	// kv is the test's own client of the Redis the replicas share, a
	// single server's or a cluster's, and keys its key layout.
	kv      redis.UniversalClient
	keys    redisstore.Keys
	prefix  string
	sim     *process
	lb      *balancer
	up      *upstream
	submits atomic.Int64 // submit calls that reached the simulator
	// simURL is the simulator itself, for requests submitted by "another
	// tool" on the same RunComfy account.
	simURL  string
	a, b, c *gateway
	httpc   *http.Client
}

// gateway is one comfygate replica and a gRPC client of it.
type gateway struct {
	name     string
	proc     *process
	grpcAddr string
	httpAddr string
	conn     *grpc.ClientConn
	api      comfygatev1.GatewayServiceClient
	// redis is the replica's proxy to Redis (clusterConfig.proxied), or nil.
	redis *redisProxy
}

// newCluster starts everything, waits until every replica is ready, and stops
// everything when t ends; if t failed (or E2E_LOGS is set), every process's log
// is printed. Every e2e test with replicas starts them here.
func newCluster(ctx context.Context, t *testing.T, cfg clusterConfig) *cluster {
	t.Helper()
	if cfg.redis == nil && cfg.redisCluster == nil {
		cfg.redis = sharedRedis
	}
	tr := &http.Transport{}
	c := &cluster{
		redis:  cfg.redis,
		prefix: redistest.Prefix(t),
		httpc:  &http.Client{Transport: tr, Timeout: 10 * time.Second},
	}
	redisURL := ""
	if cfg.redisCluster != nil {
		c.kv = cfg.redisCluster.Client(t)
		c.keys = redisstore.NewKeys(c.prefix, redisstore.DefaultClusterBuckets)
		redisURL = "redis+cluster://" + strings.Join(cfg.redisCluster.Addrs(), ",")
	} else {
		c.rdb = cfg.redis.Client(t)
		c.kv = c.rdb
		c.keys = redisstore.NewKeys(c.prefix, 0)
		redisURL = c.redis.URL
	}
	var (
		procs    []*process
		cleanups []func()
	)
	t.Cleanup(func() {
		// The clients first (ending any stream still open, so the replicas
		// drain at once), then the replicas all at once (a replica built
		// with the race detector lingers a second at exit), then the
		// simulator, then the test's own servers.
		for _, g := range c.gateways() {
			if g != nil {
				g.conn.Close()
			}
		}
		var wg sync.WaitGroup
		for _, p := range procs {
			if p != c.sim {
				wg.Go(p.stop)
			}
		}
		wg.Wait()
		if c.sim != nil {
			c.sim.stop()
		}
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		tr.CloseIdleConnections()
		checkLogs(t, procs)
	})

	simAddr := startSimulator(ctx, t, cfg.queueTime, cfg.runTime, &procs, &c.sim, cfg.simArgs...)
	c.simURL = "http://" + simAddr
	c.up = newUpstream(&url.URL{Scheme: "http", Host: simAddr}, &c.submits)
	cleanups = append(cleanups, c.up.close)

	c.lb = newBalancer()
	cleanups = append(cleanups, c.lb.close)

	for _, name := range []string{"A", "B", "C"} {
		g := &gateway{name: name}
		redisURL := redisURL
		if cfg.proxied {
			g.redis = newRedisProxy(t, c.redis.Addr)
			cleanups = append(cleanups, g.redis.close)
			redisURL = "redis://" + g.redis.addr() + "/0"
		}
		// Each replica has an upstream address of its own, so the proxy
		// knows which replica made each call.
		args := []string{
			"--runcomfy-url", c.up.listen(name),
			"--redis-url", redisURL,
			"--redis-prefix", c.prefix,
			"--upstream-timeout", "5s",
		}
		if !cfg.pollOnly {
			args = append(args, "--public-url", c.lb.srv.URL, "--webhook-secret", webhookSecret)
		}
		if cfg.pollInterval > 0 {
			args = append(args, "--poll-interval", cfg.pollInterval.String())
		}
		launchReplica(ctx, t, g, gatewayBin, append(args, cfg.args...), append([]string{"RUNCOMFY_API_TOKEN=" + simToken}, cfg.env...), &procs)
		c.up.replicaPID(g.proc.cmd.Process.Pid, name)
		c.join(t, g)
	}
	// Callbacks go to B; A and C get the same callback at the same instant.
	c.lb.setTargets(c.b, c.a, c.c)
	// The proxy notes who holds the lease of each status call's request.
	rdb, keys := c.kv, c.keys
	c.up.mu.Lock()
	c.up.holderOf = func(requestID string) string {
		gctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		owner, err := rdb.Get(gctx, keys.Lease(requestID)).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return ""
		case err != nil:
			return "unknown: " + err.Error()
		}
		pid, ok := leasePID(owner)
		if !ok {
			return "unknown owner " + owner
		}
		return c.up.replicaOf(pid)
	}
	c.up.mu.Unlock()
	return c
}

// launchReplica starts gateway g from bin with args (and env) on fresh ports,
// waits until it is ready, and appends each process it starts to procs, for
// the caller to stop. A cluster's replicas and a test's lone gateway start
// here.
func launchReplica(ctx context.Context, t *testing.T, g *gateway, bin string, args, env []string, procs *[]*process) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	name := "replica " + g.name
	g.proc = launch(ctx, t, name, func() *process {
		g.grpcAddr, g.httpAddr = freeAddr(t), freeAddr(t)
		p := startProcess(t, name, bin, append([]string{
			"--grpc-addr", g.grpcAddr, "--http-addr", g.httpAddr, "--shutdown-timeout", "2s",
		}, args...), env...)
		*procs = append(*procs, p)
		return p
	}, func() bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.httpAddr+"/readyz", nil)
		if err != nil {
			return false
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// byPID returns the replica whose process has pid, or nil.
func (c *cluster) byPID(pid int) *gateway {
	for _, g := range c.gateways() {
		if g.proc.cmd.Process.Pid == pid {
			return g
		}
	}
	return nil
}

func (c *cluster) gateways() []*gateway { return []*gateway{c.a, c.b, c.c} }

// readyz answers the replica's readiness status, or 0 when it does not answer.
func (c *cluster) readyz(ctx context.Context, g *gateway) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.httpAddr+"/readyz", nil)
	if err != nil {
		return 0
	}
	resp, err := c.httpc.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// submit starts a request through g and returns its id.
func (c *cluster) submit(ctx context.Context, t *testing.T, g *gateway) string {
	t.Helper()
	resp, err := g.api.Submit(ctx, &comfygatev1.SubmitRequest{
		DeploymentId: deployment,
		InputJson:    `{"overrides": {"3": {"inputs": {"seed": 18446744073709551615}}}}`,
	})
	if err != nil {
		t.Fatalf("submit on %s: %v", g.name, err)
	}
	st := resp.GetRequest()
	if st.GetRequestId() == "" || st.GetStatus() != comfygatev1.Status_STATUS_QUEUED || st.GetSeq() != 1 {
		t.Fatalf("submit on %s answered %v, want a queued request at seq 1", g.name, st)
	}
	return st.GetRequestId()
}

// recordSeq reads the seq of the request's record straight from Redis (the
// key layout of state/redisstore), or 0 when there is no record.
func (c *cluster) recordSeq(ctx context.Context, t *testing.T, requestID string) int64 {
	t.Helper()
	seq, err := c.kv.HGet(ctx, c.keys.Record(requestID), "seq").Int64()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	if err != nil {
		t.Fatalf("read the record of %s from Redis: %v", requestID, err)
	}
	return seq
}

// subscribers counts the pub/sub connections subscribed to the request's
// channel (the channel layout of state/redisstore): one per replica watching
// it. On a Redis Cluster the channel is a shard channel, counted by the
// master of its slot; -1 while the test's client cannot reach that master
// (it learns a failover's new one within a second).
func (c *cluster) subscribers(ctx context.Context, t *testing.T, requestID string) int64 {
	t.Helper()
	ch := c.keys.Channel(requestID)
	if cc, ok := c.kv.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, ch)
		if err != nil {
			return -1
		}
		n, err := node.PubSubShardNumSub(ctx, ch).Result()
		if err != nil {
			return -1
		}
		return n[ch]
	}
	n, err := c.rdb.PubSubNumSub(ctx, ch).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return n[ch]
}

// startSimulator launches the simulator binary, with callback retries that
// outlast a Redis restart (8 retries, the first after 100ms, doubling: 25s in
// all), records its process in procs and sim, and returns its address.
func startSimulator(ctx context.Context, t *testing.T, queueTime, runTime time.Duration, procs *[]*process, sim **process, extra ...string) string {
	t.Helper()
	var simAddr string
	*sim = launch(ctx, t, "the simulator", func() *process {
		simAddr = freeAddr(t)
		p := startProcess(t, "runcomfy-sim", simBin, append([]string{
			"--addr", simAddr,
			"--queue-time", queueTime.String(), "--run-time", runTime.String(),
			"--callback-retries", "8", "--callback-backoff", "100ms",
		}, extra...), "RUNCOMFY_API_TOKEN="+simToken)
		*procs = append(*procs, p)
		return p
	}, func() bool {
		conn, err := net.DialTimeout("tcp", simAddr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return simAddr
}

// join dials replica g and makes it the cluster's A, B or C by its name.
func (c *cluster) join(t *testing.T, g *gateway) {
	t.Helper()
	conn, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	g.conn, g.api = conn, comfygatev1.NewGatewayServiceClient(conn)
	switch g.name {
	case "A":
		c.a = g
	case "B":
		c.b = g
	case "C":
		c.c = g
	}
}

// checkLogs fails t when a process's log shows a data race, and prints every
// log when t failed (or E2E_LOGS is set).
func checkLogs(t *testing.T, procs []*process) {
	t.Helper()
	for _, p := range procs {
		if strings.Contains(p.logs.String(), "DATA RACE") {
			t.Errorf("%s: the race detector found a data race (see its log)", p.name)
		}
	}
	if t.Failed() || os.Getenv("E2E_LOGS") != "" {
		for _, p := range procs {
			t.Logf("---- log of %s ----\n%s", p.name, p.logs)
		}
	}
}
