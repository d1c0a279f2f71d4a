package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// fanOut measures events delivered per second to many watchers of one request
// spread over two replicas, at rising event rates, and checks that watchers
// that keep up see every seq. The reference is the in-process hub alone (no
// gRPC, no Redis) at full speed.
func fanOut(ctx context.Context, e *env) (result, error) {
	perReplica, conns := 500, 4
	rates, step := []int{100, 200, 400}, 5*time.Second
	if e.smoke {
		perReplica, conns, rates, step = 10, 1, []int{50}, 400*time.Millisecond
	}
	watchers := 2 * perReplica
	res := result{Setup: fmt.Sprintf("Two replicas sharing Redis. %s gRPC WatchRequest streams follow one request, %d on each replica over %d connections per replica; "+
		"one sender POSTs its callbacks to replica A at a steady rate for %s per step, each a new queue position (a new seq). "+
		"A step's deliveries/s counts the events every watcher received, from the step's first send until every watcher has the step's last event. "+
		"A gap is a watcher seeing a seq jump (it fell behind and the hub coalesced). The reference is the in-process hub (memory backend, one Apply loop as fast as it goes, the same number of watchers reading in goroutines) with no gRPC and no Redis.",
		fmtInt(int64(watchers)), perReplica, conns, step)}

	c, stop, err := e.startCluster(ctx, "fanout", 2)
	defer stop()
	if err != nil {
		return res, err
	}
	a, b, path := c.replicas[0], c.replicas[1], c.path
	const id = "fan-0"
	sender, err := dialHTTP(a.httpAddr)
	if err != nil {
		return res, err
	}
	defer sender.close()
	buf := make([]byte, 0, 2048)
	post := func(n int) error {
		code, err := sender.post(path, callbackBody(buf, benchDep, id, phaseQueued, int64(basePosition-n)))
		if err == nil && code != 200 {
			err = fmt.Errorf("callback answered %d", code)
		}
		return err
	}
	if err := post(0); err != nil {
		return res, err
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws := make([]fanWatcher, watchers)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for r, g := range []*gateway{a, b} {
		var clients []comfygatev1.GatewayServiceClient
		for range conns {
			cc, client, err := g.dial()
			if err != nil {
				return res, err
			}
			defer cc.Close()
			clients = append(clients, client)
		}
		for i := range perReplica {
			w := &ws[r*perReplica+i]
			stream, err := clients[i%conns].WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: id})
			if err != nil {
				return res, err
			}
			first, err := stream.Recv()
			if err != nil {
				return res, fmt.Errorf("watch on %s: %w", g.name, err)
			}
			w.seq = first.GetRequest().GetSeq()
			wg.Go(func() { w.follow(stream) })
		}
	}

	m := meterOf(a.named(), b.named(), e.redis.named())
	sent := 0
	var best float64
	for _, rate := range rates {
		n := int(step.Seconds() * float64(rate))
		d0, g0 := deliveredAndGaps(ws)
		label := fmt.Sprintf("fanout-%d", rate)
		waitA, waitB := e.profileCPU(ctx, a, label, int(step.Seconds())), e.profileCPU(ctx, b, label, int(step.Seconds()))
		m.begin()
		t0 := time.Now()
		for j := 1; j <= n; j++ {
			if d := time.Until(t0.Add(time.Duration(j-1) * time.Second / time.Duration(rate))); d > 0 {
				time.Sleep(d)
			}
			if err := post(sent + j); err != nil {
				return res, err
			}
		}
		sent += n
		complete := waitAll(ctx, ws, sent, 5*time.Second)
		took := time.Since(t0)
		d1, g1 := deliveredAndGaps(ws)
		delivered := d1 - d0
		cpu := m.end(int(delivered))
		waitA()
		waitB()
		gapped := 0
		for i := range ws {
			if g1[i] > g0[i] {
				gapped++
			}
		}
		perSec := float64(delivered) / took.Seconds()
		x := row{Figure: fmt.Sprintf("deliveries/s at %d events/s (%s offered)", rate, fmtRate(float64(rate*watchers))), Value: fmtRate(perSec)}
		x.Reference = fmt.Sprintf("watchers with gaps: %d of %d", gapped, watchers)
		if !complete {
			x.Reference += "; not every watcher got the last event within 5s"
		}
		res.Rows = append(res.Rows, x)
		res.CPU = append(res.CPU, cpuTable{Window: fmt.Sprintf("%d events/s", rate), Op: "delivery", Ops: int(delivered), Rows: cpu})
		if gapped == 0 && complete && perSec > best {
			best = perSec
		}
	}

	hub, hubGaps, err := hubFanOut(ctx, watchers, step)
	if err != nil {
		return res, err
	}
	res.Rows = append(res.Rows, row{"best deliveries/s with no gaps", fmtRate(best), fmtRate(hub) + " (in-process hub, " + fmt.Sprint(hubGaps) + " watchers with gaps)",
		pct(best, hub), "≥ 150,000/s", met(best >= 150000)})
	return res, nil
}

// fanWatcher follows one stream: what it received, and its seq jumps.
type fanWatcher struct {
	seq       int64 // last seq received; written by follow only
	delivered atomic.Int64
	gaps      atomic.Int64
	last      atomic.Int64 // the update number (from the queue position) last received
}

func (w *fanWatcher) follow(stream grpc.ServerStreamingClient[comfygatev1.WatchRequestResponse]) {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return
		}
		r := msg.GetRequest()
		if r.GetSeq() != w.seq+1 {
			w.gaps.Add(1)
		}
		w.seq = r.GetSeq()
		w.delivered.Add(1)
		w.last.Store(int64(basePosition - int(r.GetQueuePosition())))
	}
}

func deliveredAndGaps(ws []fanWatcher) (int64, []int64) {
	var d int64
	gaps := make([]int64, len(ws))
	for i := range ws {
		d += ws[i].delivered.Load()
		gaps[i] = ws[i].gaps.Load()
	}
	return d, gaps
}

// waitAll waits until every watcher has update n, at most grace.
func waitAll(ctx context.Context, ws []fanWatcher, n int, grace time.Duration) bool {
	deadline := time.Now().Add(grace)
	for i := range ws {
		for ws[i].last.Load() < int64(n) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return false
			}
			time.Sleep(time.Millisecond)
		}
	}
	return true
}

// hubFanOut is the reference: the tracker and hub on the memory backend, one
// goroutine applying updates as fast as it can for d, watchers reading in
// goroutines. It returns deliveries per second and how many watchers fell
// behind (coalesced).
func hubFanOut(ctx context.Context, watchers int, d time.Duration) (float64, int, error) {
	backend := memory.New(time.Now)
	tr, err := state.NewTracker(state.TrackerConfig{Store: backend, Results: noResults{}})
	if err != nil {
		return 0, 0, err
	}
	hub, err := state.NewHub(backend, 0)
	if err != nil {
		return 0, 0, err
	}
	const id = "hub-0"
	update := func(n int) state.Update {
		pos := int64(basePosition - n)
		return state.Update{RequestID: id, DeploymentID: benchDep, Source: "callback", State: runcomfy.StateQueued, UpstreamStatus: "in_queue", QueuePosition: &pos}
	}
	if _, _, err := tr.Apply(ctx, update(0)); err != nil {
		return 0, 0, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var delivered atomic.Int64
	lasts := make([]atomic.Int64, watchers)
	ws := make([]*state.Watcher, watchers)
	for i := range ws {
		if ws[i], err = hub.Watch(wctx, id); err != nil {
			return 0, 0, err
		}
		defer ws[i].Close()
	}
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			for {
				recs, err := w.Next(wctx)
				if err != nil {
					return
				}
				delivered.Add(int64(len(recs)))
				lasts[i].Store(int64(basePosition - *recs[len(recs)-1].QueuePosition))
			}
		})
	}
	start := time.Now()
	n := 0
	for time.Since(start) < d {
		n++
		if _, _, err := tr.Apply(ctx, update(n)); err != nil {
			cancel()
			wg.Wait()
			return 0, 0, err
		}
	}
	for i := range lasts {
		for lasts[i].Load() < int64(n) && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
	}
	took := time.Since(start)
	cancel()
	wg.Wait()
	gapped := 0
	for _, w := range ws {
		if w.Coalesced() > 0 {
			gapped++
		}
	}
	return float64(delivered.Load()) / took.Seconds(), gapped, ctx.Err()
}

// noResults stands for RunComfy's result endpoint, which queued updates never
// reach.
type noResults struct{}

func (noResults) Result(context.Context, string, string) (*runcomfy.ResultResponse, error) {
	return nil, errors.New("no results in the benchmark")
}
