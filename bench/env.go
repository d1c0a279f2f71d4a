package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

const (
	benchToken  = "bench-runcomfy-token"
	benchSecret = "bench-webhook-secret-0123456789"
	benchDep    = "dep-bench"
)

// env is what every scenario shares: the built binaries, a private Redis, and
// a directory for logs and profiles.
type env struct {
	dir         string
	gatewayBin  string
	simBin      string
	selfBin     string // this harness, run again as a reference server
	redis       *redisServer
	smoke       bool
	profile     bool // collect CPU profiles of the gateway replicas
	idleStreams int  // streams the idle-watchers scenario holds
	centrifugo  bool // the fan-out also measures Centrifugo (never in a smoke run)
}

// gateway is one replica started by a scenario.
type gateway struct {
	*proc
	grpcAddr, httpAddr, debugAddr string
}

// startSim starts the standalone simulator. Jobs stay queued for an hour, so
// the simulator does the same work for every request whatever the run's length.
func (e *env) startSim(ctx context.Context, name string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc(e.dir, name, e.simBin, []string{"--addr", addr, "--queue-time", "1h", "--run-time", "1h"},
		"RUNCOMFY_API_TOKEN="+benchToken)
	if err != nil {
		return nil, "", err
	}
	url := "http://" + addr
	// The simulator answers 404 at / once it listens.
	if err := waitStatus(ctx, p, url+"/", 404); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, url, nil
}

// gwOpts says how a replica is started.
type gwOpts struct {
	// redisPrefix, when set, shares the run's Redis under this prefix; empty
	// keeps the state in the process.
	redisPrefix string
	// redisURL, when set with redisPrefix, is the Redis to share instead of
	// the run's (the cluster scenario's Redis Cluster).
	redisURL string
	// callbacks gives the replica a public URL, so Submit asks for callbacks.
	callbacks bool
	extra     []string
	env       []string // more environment variables
}

// startGateway starts a replica against the simulator at simURL. Polling is
// pushed out of every window (--poll-interval 1h): the scenarios measure the
// paths they name.
func (e *env) startGateway(ctx context.Context, name, simURL string, o gwOpts) (*gateway, error) {
	g := &gateway{}
	var err error
	for _, a := range []*string{&g.grpcAddr, &g.httpAddr, &g.debugAddr} {
		if *a, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	args := []string{
		"--grpc-addr", g.grpcAddr, "--http-addr", g.httpAddr, "--debug-addr", g.debugAddr,
		"--runcomfy-url", simURL,
		"--poll-interval", "1h", "--shutdown-timeout", "2s", "--log-format", "json",
		// The scenarios measure capacity: one tenant opens thousands of
		// streams and reads at will, so the per-tenant limits are off.
		"--read-rate", "0", "--max-watches-per-tenant", "0",
	}
	if o.callbacks {
		args = append(args, "--public-url", "http://"+g.httpAddr)
	}
	if o.redisPrefix != "" {
		url := e.redis.url
		if o.redisURL != "" {
			url = o.redisURL
		}
		args = append(args, "--redis-url", url, "--redis-prefix", o.redisPrefix)
	}
	args = append(args, o.extra...)
	if g.proc, err = startProc(e.dir, name, e.gatewayBin, args, append([]string{"RUNCOMFY_API_TOKEN=" + benchToken, "COMFYGATE_WEBHOOK_SECRET=" + benchSecret}, o.env...)...); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, g.proc, "http://"+g.httpAddr+"/readyz"); err != nil {
		g.stop()
		return nil, err
	}
	return g, nil
}

// dial opens a gRPC connection to the replica.
func (g *gateway) dial() (*grpc.ClientConn, comfygatev1.GatewayServiceClient, error) {
	cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", g.name, err)
	}
	return cc, comfygatev1.NewGatewayServiceClient(cc), nil
}

// profileCPU records a CPU profile of the replica for d into the run's
// directory, when profiling is on; it returns at once otherwise.
func (e *env) profileCPU(ctx context.Context, g *gateway, label string, seconds int) func() {
	if !e.profile {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path := filepath.Join(e.dir, fmt.Sprintf("%s-%s.pprof", label, g.name))
		if err := fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.debugAddr, seconds), path); err != nil {
			fmt.Fprintf(os.Stderr, "profile %s: %v\n", g.name, err)
		}
	}()
	return func() { <-done }
}

// cluster is the simulator and replicas sharing the run's Redis under one
// prefix, with callbacks on, as the callback scenarios use them.
type cluster struct {
	sim      *proc
	replicas []*gateway // named replica-a, replica-b, ...
	path     string     // the authenticated callback path of benchDep
}

// startCluster starts the simulator and n replicas; stop ends them all, and
// is to be called whatever startCluster returned.
func (e *env) startCluster(ctx context.Context, label string, n int, extra ...string) (c *cluster, stop func(), err error) {
	return e.startClusterEnv(ctx, label, n, nil, extra...)
}

// startClusterEnv is startCluster with more environment variables for the
// replicas.
func (e *env) startClusterEnv(ctx context.Context, label string, n int, environ []string, extra ...string) (c *cluster, stop func(), err error) {
	return e.startReplicas(ctx, label, "replica-", n, gwOpts{redisPrefix: label, callbacks: true, extra: extra, env: environ})
}

// startReplicas starts the simulator and n replicas with options o, named
// name followed by a, b, ...; stop is to be called whatever it returned.
func (e *env) startReplicas(ctx context.Context, label, name string, n int, o gwOpts) (c *cluster, stop func(), err error) {
	c = &cluster{}
	stop = func() {
		for _, g := range c.replicas {
			g.stop()
		}
		if c.sim != nil {
			c.sim.stop()
		}
	}
	var simURL string
	if c.sim, simURL, err = e.startSim(ctx, "sim-"+label); err != nil {
		return nil, stop, err
	}
	for i := range n {
		g, err := e.startGateway(ctx, name+string(rune('a'+i)), simURL, o)
		if err != nil {
			return nil, stop, err
		}
		c.replicas = append(c.replicas, g)
	}
	if c.path, err = callbackPath(benchSecret, benchDep); err != nil {
		return nil, stop, err
	}
	return c, stop, nil
}
