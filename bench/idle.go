package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// idleWatchers holds many open WatchRequest streams on one replica and
// measures its memory per stream, against a bare grpc-go server whose handler
// only waits, held open by the same client code.
func idleWatchers(ctx context.Context, e *env) (result, error) {
	n, conns := e.idleStreams, 100
	if e.smoke {
		n, conns = 200, 2
	}
	res := result{Setup: fmt.Sprintf("One replica with Redis holds %s WatchRequest streams, one per request, opened by the harness over %d HTTP/2 connections (%s streams each). "+
		"The requests were created beforehand through callbacks on another replica that was then stopped, so the measured process did nothing but start and take the streams. "+
		"Memory per stream is the growth of the replica's resident set (VmRSS) from before the first stream to %s after the last, divided by the number of streams. "+
		"The reference is a bare grpc-go server (its own process) whose WatchRequest sends one state and waits, opened by the same client code with the same N.",
		fmtInt(int64(n)), conns, fmtInt(int64(n/conns)), settle)}

	sim, simURL, err := e.startSim(ctx, "sim-idle")
	if err != nil {
		return res, err
	}
	defer sim.stop()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("idle-%d", i)
	}
	seeder, err := e.startGateway(ctx, "seeder", simURL, gwOpts{redisPrefix: "idle", callbacks: true})
	if err != nil {
		return res, err
	}
	path, err := callbackPath(benchSecret, benchDep)
	if err != nil {
		return res, err
	}
	var next atomic.Int64
	seed, err := closedLoop(ctx, seeder.httpAddr, 64, 0, n, func(_, _ int, buf []byte) (string, []byte) {
		return path, callbackBody(buf, benchDep, ids[next.Add(1)-1], phaseQueued, 3)
	})
	seeder.stop()
	if err != nil {
		return res, err
	}
	if seed.failures > 0 {
		return res, fmt.Errorf("seeding: %d callbacks refused", seed.failures)
	}

	g, err := e.startGateway(ctx, "replica-a", simURL, gwOpts{redisPrefix: "idle", callbacks: true})
	if err != nil {
		return res, err
	}
	defer g.stop()
	memstats := func() (heap, stack float64, err error) {
		if heap, err = scrape(ctx, g, "go_memstats_heap_inuse_bytes"); err == nil {
			stack, err = scrape(ctx, g, "go_memstats_stack_inuse_bytes")
		}
		return heap, stack, err
	}
	heap0, stack0, err := memstats()
	if err != nil {
		return res, err
	}
	// The gauge, the memory statistics and the heap profile are read while
	// the streams are held: they end when holdStreams returns.
	var open, heap1, stack1 float64
	gw, err := holdStreams(ctx, g.proc, g.grpcAddr, ids, conns, func() error {
		var err error
		if open, err = scrape(ctx, g, "comfygate_watchers_open"); err != nil {
			return err
		}
		if heap1, stack1, err = memstats(); err != nil {
			return err
		}
		if !e.profile {
			return nil
		}
		// The goroutines, grouped by stack, tell what each stream keeps
		// running and where it waits.
		if err := fetch(ctx, "http://"+g.debugAddr+"/debug/pprof/goroutine?debug=1", filepath.Join(e.dir, "idle-goroutines.txt")); err != nil {
			return err
		}
		return fetch(ctx, "http://"+g.debugAddr+"/debug/pprof/heap", filepath.Join(e.dir, "idle-heap.pprof"))
	})
	if err != nil {
		return res, err
	}
	g.stop()

	bare, bareAddr, err := e.startRole(ctx, "bare-grpc")
	if err != nil {
		return res, err
	}
	defer bare.stop()
	ref, err := holdStreams(ctx, bare, bareAddr, ids, conns, func() error { return nil })
	if err != nil {
		return res, err
	}
	bare.stop()

	per, refPer := gw.perStream(), ref.perStream()
	res.Rows = []row{
		{"streams held", fmtInt(int64(gw.held)), fmtInt(int64(ref.held)), "", "100,000 streams", met(gw.held >= 100_000)},
		{"memory per stream (RSS growth / N)", fmtBytes(per), fmtBytes(refPer), ratio(per, refPer), "≤ 12 KiB, ≤ 1.1× bare", met(per <= 12<<10 && per <= 1.1*refPer)},
		{"RSS before → with the streams", fmtBytes(float64(gw.rss0)) + " → " + fmtBytes(float64(gw.rss1)), fmtBytes(float64(ref.rss0)) + " → " + fmtBytes(float64(ref.rss1)), "", "", ""},
		{"streams opened per second", fmtRate(gw.openRate()), fmtRate(ref.openRate()), ratio(gw.openRate(), ref.openRate()), "", ""},
	}
	res.CPU = []cpuTable{
		{Window: "opening the streams on the gateway", Op: "stream", Ops: gw.held, Rows: gw.cpu},
		{Window: "opening the streams on the bare server", Op: "stream", Ops: ref.held, Rows: ref.cpu},
	}
	res.Notes = append(res.Notes,
		fmt.Sprintf("The replica's comfygate_watchers_open gauge read %s with the streams held.", fmtInt(int64(open))),
		fmt.Sprintf("Of the replica's growth, per stream: Go heap in use %s, goroutine stacks %s (go_memstats_heap_inuse_bytes and go_memstats_stack_inuse_bytes); the rest is the runtime's and the allocator's.",
			fmtBytes((heap1-heap0)/float64(gw.held)), fmtBytes((stack1-stack0)/float64(gw.held))))
	return res, nil
}

// settle is how long the harness waits after the last stream opens before it
// reads the resident set, so the server's allocations have landed.
const settle = 3 * time.Second

type held struct {
	held       int
	rss0, rss1 int64
	took       time.Duration
	cpu        []cpuRow
}

func (h held) perStream() float64 {
	if h.held == 0 {
		return 0
	}
	return float64(h.rss1-h.rss0) / float64(h.held)
}

func (h held) openRate() float64 { return float64(h.held) / h.took.Seconds() }

// holdStreams opens one WatchRequest stream per id on the server at addr,
// spread evenly over conns connections, reads each one's first state, and
// measures p's resident set before and with all of them open, then calls
// whileHeld. The streams end when it returns.
func holdStreams(ctx context.Context, p *proc, addr string, ids []string, conns int, whileHeld func() error) (held, error) {
	var h held
	clients := make([]comfygatev1.GatewayServiceClient, conns)
	for i := range clients {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return h, err
		}
		defer cc.Close()
		cc.Connect()
		clients[i] = comfygatev1.NewGatewayServiceClient(cc)
	}
	// Every connection is up (a health-less call answers) before the
	// baseline is read.
	for _, c := range clients {
		if _, err := c.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: benchDep, RequestId: ids[0]}); err != nil && !isUnimplemented(err) {
			return h, fmt.Errorf("first call: %w", err)
		}
	}
	time.Sleep(time.Second)
	var err error
	if h.rss0, err = rss(p.pid()); err != nil {
		return h, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := meterOf(p.named())
	m.begin()
	start := time.Now()
	const openers = 64
	var (
		wg     sync.WaitGroup
		next   atomic.Int64
		opened atomic.Int64
		errMu  sync.Mutex
		first  error
	)
	streams := make([]grpc.ServerStreamingClient[comfygatev1.WatchRequestResponse], len(ids))
	for range openers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(ids) || sctx.Err() != nil {
					return
				}
				s, err := clients[i%conns].WatchRequest(sctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: ids[i]})
				if err == nil {
					_, err = s.Recv()
				}
				if err != nil {
					errMu.Lock()
					if first == nil {
						first = fmt.Errorf("stream %d (%s): %w", i, ids[i], err)
					}
					errMu.Unlock()
					cancel()
					return
				}
				streams[i] = s
				opened.Add(1)
			}
		})
	}
	wg.Wait()
	h.took = time.Since(start)
	h.held = int(opened.Load())
	h.cpu = m.end(h.held)
	if first != nil {
		return h, first
	}
	time.Sleep(settle)
	if err := p.exited(); err != nil {
		return h, err
	}
	if h.rss1, err = rss(p.pid()); err != nil {
		return h, err
	}
	return h, whileHeld()
}

func isUnimplemented(err error) bool { return status.Code(err) == codes.Unimplemented }
