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
	perReplica, conns, rates, step := fanOutSize(e.smoke)
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
	f, err := openFanOut(ctx, c, perReplica, conns, e.redis.named())
	if err != nil {
		return res, err
	}
	defer f.close()

	var best float64
	for _, rate := range rates {
		s, err := f.step(ctx, e, rate, step, fmt.Sprintf("fanout-%d", rate))
		if err != nil {
			return res, err
		}
		x := row{Figure: fmt.Sprintf("deliveries/s at %d events/s (%s offered)", rate, fmtRate(float64(rate*watchers))), Value: fmtRate(s.perSec())}
		x.Reference = fmt.Sprintf("watchers with gaps: %d of %d", s.gapped, watchers)
		if !s.complete {
			x.Reference += "; not every watcher got the last event within 5s"
		}
		res.Rows = append(res.Rows, x)
		res.CPU = append(res.CPU, cpuTable{Window: fmt.Sprintf("%d events/s", rate), Op: "delivery", Ops: int(s.delivered), Rows: s.cpu})
		if s.clean() && s.perSec() > best {
			best = s.perSec()
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

// fanOutSize is the fan-out's shape: watchers per replica, gRPC connections
// per replica, the event rates of the steps and each step's length. The
// cluster scenario takes the same, so that its figures compare with these.
func fanOutSize(smoke bool) (perReplica, conns int, rates []int, step time.Duration) {
	if smoke {
		return 10, 1, []int{50}, 400 * time.Millisecond
	}
	return 500, 4, []int{100, 200, 400}, 5 * time.Second
}

// fanRun is the fan-out's load on two replicas of one cluster: a sender of
// callbacks to replica A, and the watchers of one request split over both.
// It stays open between steps, so that two runs (on different backends) can
// take turns and a slow spell of the shared machine falls on both alike.
type fanRun struct {
	a, b   *gateway
	path   string
	sender *httpConn
	buf    []byte
	ws     []fanWatcher
	sent   int // updates posted since the first state
	meter  *cpuMeter
	ccs    []*grpc.ClientConn
	cancel context.CancelFunc
	wg     sync.WaitGroup // the watchers' goroutines
}

// fanStep is what one step of a fanRun measured.
type fanStep struct {
	delivered int64
	took      time.Duration
	gapped    int  // watchers that saw a seq jump in the step
	complete  bool // every watcher got the step's last event within the grace
	cpu       []cpuRow
}

func (s fanStep) perSec() float64 { return float64(s.delivered) / s.took.Seconds() }

// clean reports a step in which every watcher kept up.
func (s fanStep) clean() bool { return s.gapped == 0 && s.complete }

// fanRequest is the request every watcher of a fanRun follows.
const fanRequest = "fan-0"

// openFanOut posts the first state of the request to c's replica A, then
// opens perReplica watchers of it on each of the first two replicas, over
// conns connections per replica. The CPU of the replicas and of backend
// (the Redis processes) is metered per step. close ends it all; on error
// nothing is left open.
func openFanOut(ctx context.Context, c *cluster, perReplica, conns int, backend ...namedPID) (f *fanRun, err error) {
	f = &fanRun{a: c.replicas[0], b: c.replicas[1], path: c.path, buf: make([]byte, 0, 2048)}
	wctx, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if f.sender, err = dialHTTP(f.a.httpAddr); err != nil {
		return f, err
	}
	if err := f.post(0); err != nil {
		return f, err
	}
	f.ws = make([]fanWatcher, 2*perReplica)
	for r, g := range []*gateway{f.a, f.b} {
		var clients []comfygatev1.GatewayServiceClient
		for range conns {
			cc, client, err := g.dial()
			if err != nil {
				return f, err
			}
			f.ccs = append(f.ccs, cc)
			clients = append(clients, client)
		}
		for i := range perReplica {
			w := &f.ws[r*perReplica+i]
			stream, err := clients[i%conns].WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: fanRequest})
			if err != nil {
				return f, err
			}
			first, err := stream.Recv()
			if err != nil {
				return f, fmt.Errorf("watch on %s: %w", g.name, err)
			}
			w.seq = first.GetRequest().GetSeq()
			f.wg.Go(func() { w.follow(stream) })
		}
	}
	f.meter = meterOf(append([]namedPID{f.a.named(), f.b.named()}, backend...)...)
	return f, nil
}

// post sends update n of the request (queue position basePosition-n) to
// replica A.
func (f *fanRun) post(n int) error {
	code, err := f.sender.post(f.path, callbackBody(f.buf, benchDep, fanRequest, phaseQueued, int64(basePosition-n)))
	if err == nil && code != 200 {
		err = fmt.Errorf("callback answered %d", code)
	}
	return err
}

// step posts rate updates a second for d, then waits (at most 5s) until
// every watcher has the last one.
func (f *fanRun) step(ctx context.Context, e *env, rate int, d time.Duration, label string) (fanStep, error) {
	n := int(d.Seconds() * float64(rate))
	d0, g0 := deliveredAndGaps(f.ws)
	waitA, waitB := e.profileCPU(ctx, f.a, label, int(d.Seconds())), e.profileCPU(ctx, f.b, label, int(d.Seconds()))
	f.meter.begin()
	t0 := time.Now()
	for j := 1; j <= n; j++ {
		if d := time.Until(t0.Add(time.Duration(j-1) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		if err := f.post(f.sent + j); err != nil {
			return fanStep{}, err
		}
	}
	f.sent += n
	var s fanStep
	s.complete = waitAll(ctx, f.ws, f.sent, 5*time.Second)
	s.took = time.Since(t0)
	d1, g1 := deliveredAndGaps(f.ws)
	s.delivered = d1 - d0
	s.cpu = f.meter.end(int(s.delivered))
	waitA()
	waitB()
	for i := range f.ws {
		if g1[i] > g0[i] {
			s.gapped++
		}
	}
	return s, nil
}

// close ends the watchers (connections first, then their goroutines) and the
// sender.
func (f *fanRun) close() {
	for _, cc := range f.ccs {
		cc.Close()
	}
	f.cancel()
	f.wg.Wait()
	if f.sender != nil {
		f.sender.close()
	}
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
