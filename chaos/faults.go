package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// The faults, by the name the report gives them.
const (
	faultKill         = "replica killed (SIGKILL) and restarted"
	faultDrain        = "replica drained (SIGTERM) and restarted"
	faultPubSub       = "Redis pub/sub connections killed"
	faultRedisAOF     = "Redis restarted with its data (AOF)"
	faultRedisEmpty   = "Redis restarted empty"
	faultStall        = "network to Redis stalled"
	faultMaster       = "Redis Cluster master killed (replica promoted)"
	faultCbDrop       = "callbacks dropped"
	faultCbDup        = "callbacks duplicated"
	faultCbReorder    = "callbacks reordered"
	faultCbDelay      = "callbacks delayed"
	faultUpstream5xx  = "RunComfy answering 503"
	faultUpstream429  = "RunComfy answering 429"
	faultLeadIn       = 3 * time.Second // load alone before the first fault
	faultMinSpacing   = 3 * time.Second
	faultRoundsWanted = 3 // each fault this many times when the run is long enough
)

// faultKinds are the faults a mode injects.
func faultKinds(mode string) []string {
	common := []string{faultKill, faultDrain, faultPubSub, faultCbDrop, faultCbDup, faultCbReorder, faultCbDelay, faultUpstream5xx, faultUpstream429}
	if mode == modeCluster {
		return append(common, faultMaster)
	}
	return append(common, faultRedisAOF, faultRedisEmpty, faultStall)
}

// fault is one entry of the schedule: what, when (from the load's start),
// for how long (periods and outages), and on which replica.
type fault struct {
	kind    string
	at      time.Duration
	lasts   time.Duration
	replica int
	// filled in as it runs
	err error
}

// schedule draws a run's faults from seed: rounds in which every kind comes
// once, in a shuffled order, spread over the run with jitter. The same seed,
// mode and duration give the same schedule.
func schedule(seed int64, mode string, d time.Duration) []*fault {
	rng := rand.New(rand.NewPCG(uint64(seed), 0xfa17))
	kinds := faultKinds(mode)
	active := d - faultLeadIn - 5*time.Second
	slots := max(len(kinds), int(active/faultMinSpacing))
	slots = min(slots, len(kinds)*faultRoundsWanted)
	spacing := active / time.Duration(slots)
	var out []*fault
	var round []string
	for i := range slots {
		if len(round) == 0 {
			round = slices.Clone(kinds)
			rng.Shuffle(len(round), func(a, b int) { round[a], round[b] = round[b], round[a] })
		}
		f := &fault{kind: round[0], replica: rng.IntN(3)}
		round = round[1:]
		f.at = faultLeadIn + time.Duration(i)*spacing + time.Duration(rng.Int64N(int64(spacing/2)))
		f.lasts = time.Duration(1500+rng.IntN(2500)) * time.Millisecond
		out = append(out, f)
	}
	return out
}

// injector runs a schedule against a system. Faults on one resource (a
// replica, Redis) wait for each other; periods of upstream misbehaviour
// overlap freely and are merged into the simulator's one set of faults.
type injector struct {
	sys      *system
	log      func(format string, args ...any)
	replicas []sync.Mutex
	redisMu  sync.Mutex
	wg       sync.WaitGroup

	mu     sync.Mutex
	active map[string]int // upstream fault kinds in effect, counted
	wipes  []time.Time    // when Redis lost its data (restarted empty)
}

// wipedAfter reports whether Redis lost its data after t and within d of it.
func (in *injector) wipedAfter(t time.Time, d time.Duration) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, w := range in.wipes {
		if w.After(t) && w.Sub(t) <= d {
			return true
		}
	}
	return false
}

func newInjector(sys *system, log func(string, ...any)) *injector {
	return &injector{sys: sys, log: log, replicas: make([]sync.Mutex, len(sys.replicas)), active: map[string]int{}}
}

// run injects each fault at its time until ctx ends; faults under way are
// then brought to their end early. wait returns once all are healed.
func (in *injector) run(ctx context.Context, faults []*fault) {
	start := time.Now()
	for _, f := range faults {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(start.Add(f.at))):
		}
		in.wg.Go(func() {
			in.log("fault: %s (replica %d, %v)", f.kind, f.replica, f.lasts)
			f.err = in.inject(ctx, f)
			in.log("fault healed: %s", f.kind)
			if f.err != nil {
				in.log("fault %q: %v", f.kind, f.err)
			}
		})
	}
}

func (in *injector) wait() { in.wg.Wait() }

// hold waits for d or ctx's end.
func hold(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (in *injector) inject(ctx context.Context, f *fault) error {
	// Restarts and heals run to their end whatever ctx says.
	heal := context.WithoutCancel(ctx)
	switch f.kind {
	case faultKill, faultDrain:
		in.replicas[f.replica].Lock()
		defer in.replicas[f.replica].Unlock()
		r := in.sys.replicas[f.replica]
		sig := syscall.SIGKILL
		if f.kind == faultDrain {
			sig = syscall.SIGTERM
		}
		r.kill(sig)
		hold(ctx, f.lasts/2)
		return r.start(heal)
	case faultPubSub:
		return in.killPubSub(heal)
	case faultRedisAOF, faultRedisEmpty:
		in.redisMu.Lock()
		defer in.redisMu.Unlock()
		if f.kind == faultRedisEmpty {
			in.mu.Lock()
			in.wipes = append(in.wipes, time.Now())
			in.mu.Unlock()
			return in.sys.redis.RestartEmpty(f.lasts / 3)
		}
		return in.sys.redis.Restart(f.lasts / 3)
	case faultStall:
		in.redisMu.Lock()
		defer in.redisMu.Unlock()
		in.sys.proxy.stall()
		hold(ctx, f.lasts)
		in.sys.proxy.resume()
		return nil
	case faultMaster:
		in.redisMu.Lock()
		defer in.redisMu.Unlock()
		return in.killMaster(heal, f)
	default:
		in.upstream(f.kind, 1)
		hold(ctx, f.lasts)
		in.upstream(f.kind, -1)
		return nil
	}
}

// upstream turns a kind of upstream misbehaviour on (+1) or off (-1), and
// gives the simulator the sum of those in effect.
func (in *injector) upstream(kind string, delta int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.active[kind] += delta
	on := func(k string) bool { return in.active[k] > 0 }
	f := runcomfysim.Faults{
		DropCallbacks:    on(faultCbDrop),
		ReorderCallbacks: on(faultCbReorder),
	}
	if on(faultCbDup) {
		f.DuplicateCallbacks = 2
	}
	if on(faultCbDelay) {
		f.CallbackDelay = 1500 * time.Millisecond
	}
	var e *runcomfysim.FaultError
	switch {
	case on(faultUpstream5xx):
		e = &runcomfysim.FaultError{HTTPStatus: http.StatusServiceUnavailable}
	case on(faultUpstream429):
		e = &runcomfysim.FaultError{HTTPStatus: http.StatusTooManyRequests, RetryAfter: "1"}
	}
	if e != nil {
		f.Errors = map[string]runcomfysim.FaultError{}
		for _, ep := range []string{runcomfysim.EndpointSubmit, runcomfysim.EndpointStatus, runcomfysim.EndpointResult} {
			f.Errors[ep] = *e
		}
	}
	in.sys.sim.SetFaults(f)
}

// killPubSub closes every pub/sub connection on the Redis side.
func (in *injector) killPubSub(ctx context.Context) error {
	if in.sys.mode == modeRedis {
		return in.sys.kv.ClientKillByFilter(ctx, "TYPE", "pubsub").Err()
	}
	cc := in.sys.kv.(*redis.ClusterClient)
	return cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
		return c.ClientKillByFilter(ctx, "TYPE", "pubsub").Err()
	})
}

// killMaster kills one master of the cluster, waits for its replica to take
// over, and brings it back (as a replica of its successor).
func (in *injector) killMaster(ctx context.Context, f *fault) error {
	var masters []*redistest.Server
	for _, n := range in.sys.cluster.Nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr, DialTimeout: time.Second, ReadTimeout: time.Second})
		role, err := c.Do(ctx, "ROLE").Slice()
		c.Close()
		if err == nil && len(role) > 0 && role[0] == "master" {
			masters = append(masters, n)
		}
	}
	if len(masters) == 0 {
		return fmt.Errorf("no master answers ROLE")
	}
	victim := masters[f.replica%len(masters)]
	in.sys.cluster.Kill(victim)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := in.sys.cluster.WaitHealthy(wctx)
	if rerr := in.sys.cluster.Revive(victim); rerr != nil {
		return rerr
	}
	if err != nil {
		return fmt.Errorf("the cluster did not recover from the loss of %s: %w", victim.Addr, err)
	}
	// Back as a replica, in sync, before the next master may go.
	return in.sys.cluster.WaitHealthy(wctx)
}
