package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// basePosition is the queue position of a request's first update; each later
// update lowers it by one, so every update is new and its position tells the
// receiver which update it is.
const basePosition = 1_000_000_000

// latency measures the time from a callback POST on replica A to the event's
// arrival at a gRPC watcher on replica B, at a steady rate, against a bare
// go-redis PUBLISH → SUBSCRIBE hop paced and timed the same way.
func latency(ctx context.Context, e *env) (result, error) {
	const watchers, rate = 10, 1000 // events/s in all, spread over the watched requests
	dur := 15 * time.Second
	if e.smoke {
		dur = 500 * time.Millisecond
	}
	perRequest := int(dur.Seconds() * rate / watchers)
	res := result{Setup: fmt.Sprintf("Two replicas sharing Redis. %d requests, each followed by one gRPC WatchRequest stream on replica B; "+
		"callbacks for them are POSTed to replica A at %d/s in all for %s (each request's own sender paces it, one update every %s, the senders offset from one another). "+
		"The latency runs from just before the POST is written to the event's arrival in the watcher's Recv. "+
		"The reference publishes a message of the same size with go-redis on one connection and receives it on a go-redis subscription, on the same schedule.",
		watchers, rate, dur, time.Second*watchers/rate)}

	c, stop, err := e.startCluster(ctx, "latency", 2)
	defer stop()
	if err != nil {
		return res, err
	}
	a, b, path := c.replicas[0], c.replicas[1], c.path
	ids := make([]string, watchers)
	for k := range ids {
		ids[k] = fmt.Sprintf("lat-%d", k)
	}
	// Each request exists (first callback) before it is watched.
	if _, err := closedLoop(ctx, a.httpAddr, 1, 0, watchers, func(_, i int, buf []byte) (string, []byte) {
		return path, callbackBody(buf, benchDep, ids[i], phaseQueued, basePosition)
	}); err != nil {
		return res, err
	}

	cc, client, err := b.dial()
	if err != nil {
		return res, err
	}
	defer cc.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := newTimings(watchers, perRequest)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for k, id := range ids {
		stream, err := client.WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: id})
		if err != nil {
			return res, err
		}
		if _, err := stream.Recv(); err != nil { // the current state
			return res, fmt.Errorf("watch %s: %w", id, err)
		}
		wg.Go(func() {
			for {
				msg, err := stream.Recv()
				if err != nil {
					return
				}
				t.received(k, basePosition-int(msg.GetRequest().GetQueuePosition()))
			}
		})
	}

	m := meterOf(a.named(), b.named(), e.redis.named())
	waitA, waitB := e.profileCPU(ctx, a, "latency", int(dur.Seconds())), e.profileCPU(ctx, b, "latency", int(dur.Seconds()))
	m.begin()
	late, err := paced(ctx, watchers, perRequest, time.Second*watchers/rate, func(k int) (func(n int) error, func(), error) {
		c, err := dialHTTP(a.httpAddr)
		if err != nil {
			return nil, nil, err
		}
		buf := make([]byte, 0, 2048)
		return func(n int) error {
			body := callbackBody(buf, benchDep, ids[k], phaseQueued, int64(basePosition-n))
			t.sent(k, n)
			code, err := c.post(path, body)
			if err == nil && code != 200 {
				err = fmt.Errorf("callback answered %d", code)
			}
			return err
		}, c.close, nil
	})
	if err != nil {
		return res, err
	}
	t.wait(ctx, 5*time.Second)
	cpu := m.end(watchers * perRequest)
	waitA()
	waitB()
	got, missing := t.latencies()

	ref, refMissing, refLate, err := redisHop(ctx, e, watchers, perRequest, time.Second*watchers/rate)
	if err != nil {
		return res, err
	}
	row3 := func(name string, q float64, target time.Duration) row {
		v, r := got.quantile(q), ref.quantile(q)
		x := row{name, fmtDur(v), fmtDur(r), ratio(float64(v), float64(r)), "", ""}
		if target > 0 {
			x.Target, x.Met = "≤ "+fmtDur(target), met(v <= target)
		}
		return x
	}
	res.Rows = []row{
		row3("A → B latency p50", 0.50, time.Millisecond),
		row3("A → B latency p99", 0.99, 5*time.Millisecond),
		row3("A → B latency p99.9", 0.999, 0),
		{"events delivered", fmt.Sprintf("%s of %s", fmtInt(int64(len(got))), fmtInt(int64(len(got)+missing))),
			fmt.Sprintf("%s of %s", fmtInt(int64(len(ref))), fmtInt(int64(len(ref)+refMissing))), "", "", ""},
	}
	res.CPU = []cpuTable{{Window: "gateway run", Op: "event", Ops: watchers * perRequest, Rows: cpu}}
	res.Notes = append(res.Notes, fmt.Sprintf("Sends more than 1 ms behind their schedule: %d of %d through the gateway, %d of %d in the reference.",
		late, watchers*perRequest, refLate, watchers*perRequest))
	return res, nil
}

// timings pairs each update's send time with its arrival.
type timings struct {
	start time.Time
	sends [][]atomic.Int64 // ns since start, by request and update
	recvs [][]atomic.Int64
	left  atomic.Int64
	done  chan struct{}
}

func newTimings(requests, perRequest int) *timings {
	t := &timings{start: time.Now(), done: make(chan struct{})}
	t.sends = make([][]atomic.Int64, requests)
	t.recvs = make([][]atomic.Int64, requests)
	for k := range requests {
		t.sends[k] = make([]atomic.Int64, perRequest+1)
		t.recvs[k] = make([]atomic.Int64, perRequest+1)
	}
	t.left.Store(int64(requests * perRequest))
	return t
}

func (t *timings) sent(k, n int) { t.sends[k][n].Store(int64(time.Since(t.start))) }

func (t *timings) received(k, n int) {
	if n < 1 || n >= len(t.recvs[k]) || !t.recvs[k][n].CompareAndSwap(0, int64(time.Since(t.start))) {
		return
	}
	if t.left.Add(-1) == 0 {
		close(t.done)
	}
}

// wait waits for every update to arrive, or for grace after the last send.
func (t *timings) wait(ctx context.Context, grace time.Duration) {
	select {
	case <-t.done:
	case <-ctx.Done():
	case <-time.After(grace):
	}
}

// latencies returns the sorted latencies and how many updates never arrived.
func (t *timings) latencies() (samples, int) {
	var s samples
	missing := 0
	for k := range t.sends {
		for n := 1; n < len(t.sends[k]); n++ {
			r := t.recvs[k][n].Load()
			if r == 0 {
				missing++
				continue
			}
			s = append(s, time.Duration(r-t.sends[k][n].Load()))
		}
	}
	return s.sorted(), missing
}

// paced runs one sender per stream k, each sending updates 1..n at its own
// schedule: update j of stream k is due at start + ((j-1)·streams + k)·(every/streams).
// It returns how many sends started more than 1 ms late.
func paced(ctx context.Context, streams, n int, every time.Duration, sender func(k int) (send func(j int) error, done func(), err error)) (int, error) {
	sends := make([]func(int) error, streams)
	for k := range streams {
		send, done, err := sender(k)
		if err != nil {
			return 0, err
		}
		defer done()
		sends[k] = send
	}
	start := time.Now().Add(10 * time.Millisecond)
	step := every / time.Duration(streams)
	var late atomic.Int64
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for k := range streams {
		wg.Go(func() {
			for j := 1; j <= n && ctx.Err() == nil; j++ {
				due := start.Add(time.Duration((j-1)*streams+k) * step)
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				} else if d < -time.Millisecond {
					late.Add(1)
				}
				if err := sends[k](j); err != nil {
					errs[k] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return int(late.Load()), errors.Join(append(errs, ctx.Err())...)
}

// redisHop is the reference: the same schedule through a bare go-redis
// PUBLISH and a go-redis subscription, timed by the same code.
func redisHop(ctx context.Context, e *env, streams, n int, every time.Duration) (samples, int, int, error) {
	pub := redis.NewClient(&redis.Options{Addr: e.redis.addr, PoolSize: streams})
	defer pub.Close()
	sub := redis.NewClient(&redis.Options{Addr: e.redis.addr})
	defer sub.Close()
	channels := make([]string, streams)
	for k := range channels {
		channels[k] = fmt.Sprintf("bench:hop:%d", k)
	}
	ps := sub.Subscribe(ctx, channels...)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return nil, 0, 0, err
	}
	t := newTimings(streams, n)
	index := make(map[string]int, streams)
	for k, c := range channels {
		index[c] = k
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for msg := range ps.Channel(redis.WithChannelSize(10000)) {
			j := 0
			fmt.Sscanf(msg.Payload, "%d ", &j)
			t.received(index[msg.Channel], j)
		}
	})
	pad := strings.Repeat(" ", bodySize)
	late, err := paced(ctx, streams, n, every, func(k int) (func(int) error, func(), error) {
		return func(j int) error {
			payload := fmt.Sprintf("%d %s", j, pad)
			t.sent(k, j)
			return pub.Publish(ctx, channels[k], payload[:bodySize]).Err()
		}, func() {}, nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	t.wait(ctx, 5*time.Second)
	ps.Close()
	wg.Wait()
	s, missing := t.latencies()
	return s, missing, late, nil
}
