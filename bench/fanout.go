package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// fanOut measures events delivered per second to many watchers of one request
// spread over two replicas, at rising event rates, and checks that watchers
// that keep up see every seq. One reference is the in-process hub alone (no
// gRPC, no Redis) at full speed; the other, the peer, is Centrifugo in the
// same shape (two nodes sharing the Redis, as many subscribers, the same rates
// and message size), its steps taking turns with comfygate's, so that the
// server CPU each spends per delivery compares on the same machine in the same
// minutes. A last comfygate step gives every watcher a connection of its own,
// as every Centrifugo subscriber has. A smoke run leaves Centrifugo out:
// building it takes minutes.
func fanOut(ctx context.Context, e *env) (res result, err error) {
	perReplica, conns, rates, step := fanOutSize(e.smoke)
	watchers := 2 * perReplica
	solo := fanSoloRate(rates)
	res = result{Setup: fmt.Sprintf("Two replicas sharing Redis. %s gRPC WatchRequest streams follow one request, %d on each replica over %d connections per replica; "+
		"one sender POSTs its callbacks to replica A at a steady rate for %s per step, each a new queue position (a new seq). "+
		"The sender waits for each answer before the next send, so on a busy machine a step sends fewer events a second than it offers: each step gives the rate *sent*, its events over the time from the first send until the last was answered. "+
		"A step's deliveries/s counts the events every watcher received, from the step's first send until every watcher has the step's last event. "+
		"A gap is a watcher seeing a seq jump (it fell behind and the hub coalesced). "+
		"The watchers read only the request's seq and queue position from each message's bytes (a gRPC codec forced on their calls hands them the bytes; google.golang.org/protobuf/encoding/protowire), not to spend the harness's CPU, which the servers share, on decoding whole messages. "+
		"After the rate steps those watchers are closed and %s new ones follow another request, %d on each replica, **each over its own gRPC connection**, for one step at %d events/s. "+
		"The reference is the in-process hub (memory backend, one Apply loop as fast as it goes, the same number of watchers reading in goroutines) with no gRPC and no Redis.",
		fmtInt(int64(watchers)), perReplica, conns, step, fmtInt(int64(watchers)), perReplica, solo)}

	withPeer := e.centrifugo && !e.smoke
	var peerBin, peerGo string
	switch {
	case withPeer:
		if peerBin, peerGo, err = centrifugoBinary(ctx); err != nil {
			return res, err
		}
	case e.smoke:
		res.Notes = append(res.Notes, "Centrifugo left out: a smoke run never builds or runs it (building it takes minutes).")
	default:
		res.Notes = append(res.Notes, "Centrifugo left out (-centrifugo=false).")
	}

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
	var peer *centRun
	if withPeer {
		peer, err = e.openCentrifugo(ctx, peerBin, perReplica, f.msgSize)
		defer func() { err = errors.Join(err, peer.close(ctx)) }()
		if err != nil {
			return res, fmt.Errorf("centrifugo: %w", err)
		}
		res.Setup += " " + centrifugoSetup(perReplica, f.msgSize, peerGo)
	}

	var best, peerBest float64
	type judged struct {
		rate           int
		gw, peer       float64 // server CPU per delivery, µs
		gwSent, pcSent float64 // events/s actually sent
		available      bool
	}
	var at judged
	// The steps at the rate of the last step, beside which it is reported.
	var shared, peerShared fanStep
	for _, rate := range rates {
		s, err := f.step(ctx, e, rate, step, fmt.Sprintf("fanout-%d", rate))
		if err != nil {
			return res, err
		}
		res.CPU = append(res.CPU, cpuTable{Window: stepWindow("", rate, s), Op: "delivery", Ops: int(s.delivered), Rows: s.cpu})
		if s.clean() && s.perSec() > best {
			best = s.perSec()
		}
		if rate == solo {
			shared = s
		}
		offered := fmtInt(int64(rate * watchers))
		if peer == nil {
			x := row{Figure: fmt.Sprintf("deliveries/s at %d events/s offered (sent: %s; %s deliveries/s offered)", rate, fmtRate(s.sentPerSec()), offered), Value: fmtRate(s.perSec())}
			x.Reference = fmt.Sprintf("watchers with gaps: %d of %d", s.gapped, watchers)
			if !s.complete {
				x.Reference += "; not every watcher got the last event within 5s"
			}
			res.Rows = append(res.Rows, x)
			continue
		}
		ps, err := peer.step(ctx, rate, step)
		if err != nil {
			return res, fmt.Errorf("centrifugo: %w", err)
		}
		if rate == solo {
			peerShared = ps
		}
		res.CPU = append(res.CPU, cpuTable{Window: stepWindow("Centrifugo, ", rate, ps), Op: "delivery", Ops: int(ps.delivered), Rows: ps.cpu})
		gw, pc := serverCPU(s, f.a.name, f.b.name), serverCPU(ps, peer.a.name, peer.b.name)
		res.Rows = append(res.Rows,
			row{Figure: fmt.Sprintf("deliveries/s at %d events/s offered (sent: %s comfygate, %s Centrifugo; %s deliveries/s offered)", rate, fmtRate(s.sentPerSec()), fmtRate(ps.sentPerSec()), offered),
				Value: fanValue(s, watchers), Reference: fanValue(ps, watchers) + " (Centrifugo)", Ratio: pct(s.perSec(), ps.perSec())},
			row{Figure: fmt.Sprintf("server CPU per delivery, both nodes together, at %d events/s offered", rate), Value: fmtMicros(gw), Reference: fmtMicros(pc) + " (Centrifugo)", Ratio: ratio(gw, pc)})
		if ps.clean() && ps.perSec() > peerBest {
			peerBest = ps.perSec()
		}
		if s.clean() && ps.clean() && rate > at.rate {
			at = judged{rate, gw, pc, s.sentPerSec(), ps.sentPerSec(), true}
		}
	}

	// The last step: the watchers above closed first (they would cost the
	// replicas nothing per event of another request, but hold their
	// connections), then as many following another request, each over its
	// own connection.
	f.close()
	g, err := openFanOutOf(ctx, c, fanSoloRequest, perReplica, perReplica, e.redis.named())
	if err != nil {
		return res, fmt.Errorf("one connection per watcher: %w", err)
	}
	defer g.close()
	s, err := g.step(ctx, e, solo, step, fmt.Sprintf("fanout-solo-%d", solo))
	if err != nil {
		return res, fmt.Errorf("one connection per watcher: %w", err)
	}
	g.close()
	res.CPU = append(res.CPU, cpuTable{Window: stepWindow("comfygate with one connection per watcher, ", solo, s), Op: "delivery", Ops: int(s.delivered), Rows: s.cpu})
	gw, gwShared := serverCPU(s, g.a.name, g.b.name), serverCPU(shared, f.a.name, f.b.name)
	soloFigure := fmt.Sprintf("one connection per watcher (%s connections): deliveries/s at %d events/s offered (sent: %s", fmtInt(int64(watchers)), solo, fmtRate(s.sentPerSec()))
	cpuFigure := fmt.Sprintf("one connection per watcher: server CPU per delivery, both nodes together, at %d events/s offered", solo)
	perReplicaConns := fmt.Sprintf("%d connections per replica", conns)
	if conns == 1 {
		perReplicaConns = "1 connection per replica"
	}
	sharedNote := fmt.Sprintf("comfygate over %s: %s", perReplicaConns, fmtMicros(gwShared))
	if peer == nil {
		res.Rows = append(res.Rows,
			row{Figure: soloFigure + ")", Value: fanValue(s, watchers), Reference: fanValue(shared, watchers) + " (" + perReplicaConns + ")", Ratio: pct(s.perSec(), shared.perSec())},
			row{Figure: cpuFigure, Value: fmtMicros(gw), Reference: sharedNote, Ratio: ratio(gw, gwShared)})
	} else {
		pc := serverCPU(peerShared, peer.a.name, peer.b.name)
		res.Rows = append(res.Rows,
			row{Figure: soloFigure + fmt.Sprintf(" comfygate, %s Centrifugo in its step)", fmtRate(peerShared.sentPerSec())), Value: fanValue(s, watchers), Reference: fanValue(peerShared, watchers) + " (Centrifugo)", Ratio: pct(s.perSec(), peerShared.perSec())},
			row{Figure: cpuFigure, Value: fmtMicros(gw), Reference: fmtMicros(pc) + " (Centrifugo); " + sharedNote, Ratio: ratio(gw, pc)})
	}

	if peer != nil {
		// Stopped before the in-process reference, which then has the
		// machine to itself as before.
		if err := peer.close(ctx); err != nil {
			return res, err
		}
		res.Notes = append(res.Notes, fmt.Sprintf("Centrifugo's nodes left %d keys in Redis database %d; it was flushed after they stopped.", peer.leftKeys, centrifugoDB))
	}

	hub, hubGaps, err := hubFanOut(ctx, watchers, step)
	if err != nil {
		return res, err
	}
	res.Rows = append(res.Rows, row{"best deliveries/s with no gaps", fmtRate(best), fmtRate(hub) + " (in-process hub, " + fmt.Sprint(hubGaps) + " watchers with gaps)",
		pct(best, hub), "≥ 300,000/s", met(best >= 300000)})
	if peer != nil {
		res.Rows = append(res.Rows, row{Figure: "best deliveries/s with no gaps, beside Centrifugo", Value: fmtRate(best), Reference: fmtRate(peerBest) + " (Centrifugo)", Ratio: pct(best, peerBest)})
		x := row{Target: "≤ Centrifugo's"}
		if at.available {
			x.Figure = fmt.Sprintf("fan-out: server CPU per delivery, both nodes (at %d events/s offered, the highest rate with no gaps on either; sent: %s comfygate, %s Centrifugo)",
				at.rate, fmtRate(at.gwSent), fmtRate(at.pcSent))
			x.Value, x.Reference, x.Ratio, x.Met = fmtMicros(at.gw), fmtMicros(at.peer)+" (Centrifugo)", ratio(at.gw, at.peer), met(at.gw <= at.peer)
		} else {
			x.Figure = "fan-out: server CPU per delivery, both nodes (no rate without gaps on both)"
			x.Value, x.Reference, x.Met = "–", "–", "not judged"
		}
		res.Rows = append(res.Rows, x)
	}
	return res, nil
}

// fanSoloRate is the rate of the fan-out's step with one connection per
// watcher: 200 events/s, or in a run without that rate (a smoke run) the
// first.
func fanSoloRate(rates []int) int {
	if slices.Contains(rates, 200) {
		return 200
	}
	return rates[0]
}

// stepWindow names a step's CPU table: what it offered and what it sent.
func stepWindow(prefix string, rate int, s fanStep) string {
	return fmt.Sprintf("%s%d events/s offered, %s sent", prefix, rate, fmtRate(s.sentPerSec()))
}

// serverCPU is the CPU the named server processes spent together per
// delivery of step s, in µs: the cost of fan-out to the servers, whatever
// the split between their nodes.
func serverCPU(s fanStep, names ...string) float64 {
	var sum time.Duration
	for _, r := range s.cpu {
		if slices.Contains(names, r.Process) {
			sum += r.CPU
		}
	}
	if s.delivered == 0 {
		return 0
	}
	return float64(sum) / float64(time.Microsecond) / float64(s.delivered)
}

// fanOutSize is the fan-out's shape: watchers per replica, gRPC connections
// per replica, the event rates of the steps and each step's length. The
// cluster scenario takes the same, so that its figures compare with these.
func fanOutSize(smoke bool) (perReplica, conns int, rates []int, step time.Duration) {
	if smoke {
		return 10, 1, []int{50}, 400 * time.Millisecond
	}
	return 500, 4, []int{100, 200, 400, 800}, 5 * time.Second
}

// fanRun is the fan-out's load on two replicas of one cluster: a sender of
// callbacks to replica A, and the watchers of one request split over both.
// It stays open between steps, so that two runs (on different backends) can
// take turns and a slow spell of the shared machine falls on both alike.
type fanRun struct {
	a, b    *gateway
	path    string
	request string // the request every watcher follows
	sender  *httpConn
	buf     []byte
	ws      []fanWatcher
	sent    int // updates posted since the first state
	// msgSize is the encoded size of the WatchRequestResponse a watcher
	// receives (the first state's): Centrifugo's publications are as big.
	msgSize int
	meter   *cpuMeter
	ccs     []*grpc.ClientConn
	cancel  context.CancelFunc
	wg      sync.WaitGroup // the watchers' goroutines
	closed  bool
}

// fanStep is what one step of a fanRun measured.
type fanStep struct {
	delivered int64
	took      time.Duration
	// sent is the events sent, sending the time from the first send until
	// the last was answered: the sender waits for each answer, so on a busy
	// machine it sends fewer a second than the step's rate.
	sent     int
	sending  time.Duration
	gapped   int  // watchers that saw a seq jump in the step
	complete bool // every watcher got the step's last event within the grace
	lost     int  // watchers whose connection the server closed (Centrifugo's slow consumers)
	cpu      []cpuRow
}

func (s fanStep) perSec() float64 { return float64(s.delivered) / s.took.Seconds() }

// sentPerSec is the rate of events the step actually sent.
func (s fanStep) sentPerSec() float64 {
	if s.sending <= 0 {
		return 0
	}
	return float64(s.sent) / s.sending.Seconds()
}

// clean reports a step in which every watcher kept up.
func (s fanStep) clean() bool { return s.gapped == 0 && s.complete }

// fanRequest is the request every watcher of a fanRun follows;
// fanSoloRequest the one of the fan-out's last step, whose watchers each
// have a connection of their own.
const (
	fanRequest     = "fan-0"
	fanSoloRequest = "fan-1"
)

// openFanOut posts the first state of fanRequest to c's replica A, then
// opens perReplica watchers of it on each of the first two replicas, over
// conns connections per replica. The CPU of the replicas and of backend
// (the Redis processes) is metered per step. close ends it all; on error
// nothing is left open.
func openFanOut(ctx context.Context, c *cluster, perReplica, conns int, backend ...namedPID) (*fanRun, error) {
	return openFanOutOf(ctx, c, fanRequest, perReplica, conns, backend...)
}

// openFanOutOf is openFanOut with watchers of request.
//
// The watchers' streams are opened with rawWatchCall: the first message
// (the snapshot) is decoded as ever, the later ones are read by
// fanWatcher.follow without building the message.
func openFanOutOf(ctx context.Context, c *cluster, request string, perReplica, conns int, backend ...namedPID) (f *fanRun, err error) {
	f = &fanRun{a: c.replicas[0], b: c.replicas[1], path: c.path, request: request, buf: make([]byte, 0, 2048)}
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
			stream, err := clients[i%conns].WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: request}, rawWatchCall())
			if err != nil {
				return f, err
			}
			first, err := stream.Recv()
			if err != nil {
				return f, fmt.Errorf("watch on %s: %w", g.name, err)
			}
			w.seq = first.GetRequest().GetSeq()
			if f.msgSize == 0 {
				f.msgSize = proto.Size(first)
			}
			f.wg.Go(func() { w.follow(stream) })
		}
	}
	f.meter = meterOf(append([]namedPID{f.a.named(), f.b.named()}, backend...)...)
	return f, nil
}

// post sends update n of the request (queue position basePosition-n) to
// replica A.
func (f *fanRun) post(n int) error {
	code, err := f.sender.post(f.path, callbackBody(f.buf, benchDep, f.request, phaseQueued, int64(basePosition-n)))
	if err == nil && code != 200 {
		err = fmt.Errorf("callback answered %d", code)
	}
	return err
}

// step posts rate updates a second for d, then waits (at most 5s) until
// every watcher has the last one.
func (f *fanRun) step(ctx context.Context, e *env, rate int, d time.Duration, label string) (fanStep, error) {
	n := int(d.Seconds() * float64(rate))
	waitA, waitB := e.profileCPU(ctx, f.a, label, int(d.Seconds())), e.profileCPU(ctx, f.b, label, int(d.Seconds()))
	s, err := measureStep(ctx, f.ws, f.meter, rate, n, f.sent+n, func(j int) error { return f.post(f.sent + j) })
	if err != nil {
		return s, err
	}
	f.sent += n
	waitA()
	waitB()
	return s, nil
}

// measureStep is one step of a fan-out, whatever the server: send(1..n)
// paced at rate a second (each send waits for its scheduled time and for the
// answer to the one before, so when the machine cannot keep up the step
// stretches at a lower rate, which it records as the rate sent), then a
// wait of at most 5s until every watcher in ws has update last, with the
// CPU of meter's processes over the whole window. comfygate's and
// Centrifugo's steps share it, so that the two are measured alike.
func measureStep(ctx context.Context, ws []fanWatcher, meter *cpuMeter, rate, n, last int, send func(j int) error) (fanStep, error) {
	d0, g0 := deliveredAndGaps(ws)
	meter.begin()
	t0 := time.Now()
	for j := 1; j <= n; j++ {
		if d := time.Until(t0.Add(time.Duration(j-1) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		if err := send(j); err != nil {
			return fanStep{}, err
		}
	}
	s := fanStep{sent: n, sending: time.Since(t0)}
	s.complete = waitAll(ctx, ws, last, 5*time.Second)
	s.took = time.Since(t0)
	d1, g1 := deliveredAndGaps(ws)
	s.delivered = d1 - d0
	s.cpu = meter.end(int(s.delivered))
	for i := range ws {
		if g1[i] > g0[i] {
			s.gapped++
		}
	}
	return s, nil
}

// close ends the watchers (connections first, then their goroutines) and the
// sender, once however often it is called.
func (f *fanRun) close() {
	if f.closed {
		return
	}
	f.closed = true
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

// follow reads the stream, opened with rawWatchCall, until it ends. It
// takes each message's bytes and reads only the request's seq and queue
// position (watchFields), not to spend the CPU of decoding the whole
// message, which the servers measured on the same cores would miss. A
// message that does not parse ends it: the watcher then lacks the step's
// last event, and the step shows late.
func (w *fanWatcher) follow(stream grpc.ServerStreamingClient[comfygatev1.WatchRequestResponse]) {
	var msg rawWatch
	for {
		if err := stream.RecvMsg(&msg); err != nil {
			return
		}
		seq, pos, _, err := msg.parse()
		if err != nil {
			return
		}
		if seq != w.seq+1 {
			w.gaps.Add(1)
		}
		w.seq = seq
		w.delivered.Add(1)
		w.last.Store(int64(basePosition - int(pos)))
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
