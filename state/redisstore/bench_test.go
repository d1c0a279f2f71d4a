package redisstore_test

// Benchmarks of fan-out through Redis: how many records per second reach N
// watchers spread over two replicas, and how long one takes from Save to a
// watcher's Next, beside the bare go-redis PUBLISH -> subscriber hop measured by
// the same harness (the floor the store+bus+hub path is built on).
//
// Each iteration is one applied update of one request: Save of the next seq
// through replica A's backend, with a pre-built record (no Tracker, no merge).
// Replicas A and B each have their own client, pub/sub connection and Hub on one
// prefix, as two gateway processes would. The publisher keeps at most
// `inflight` updates not yet delivered to every watcher: inflight=1 is
// ping-pong, the unloaded latency; a larger window measures throughput, and its
// latency includes the queueing that throughput costs. The window is below the
// watchers' buffer, so no record is ever coalesced and every watcher must see
// every seq in order, which the benchmark checks (correctness, not timing).
//
// Latency is stamped in the record itself: UpdatedAt is set to time.Now() just
// before Save and read back by the watcher after the JSON round trip (both
// replicas live in this process, so one clock). The figures are reported, never
// asserted.
//
//	go test ./state/redisstore -run '^$' -bench . -benchtime 2000x

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// benchWatcherBuffer is every watcher's buffer; each in-flight window below is
// smaller, so watchers that are kept within the window never coalesce.
const benchWatcherBuffer = 1024

// benchWindows are the in-flight limits each benchmark runs with.
var benchWindows = []int{1, 64}

// benchWaitTimeout bounds every wait for deliveries: a safety net against a hang
// (a lost message), not a latency assertion.
const benchWaitTimeout = 30 * time.Second

func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		for _, w := range benchWindows {
			b.Run(fmt.Sprintf("watchers=%d/inflight=%d", n, w), func(b *testing.B) {
				benchFanOut(b, n, w)
			})
		}
	}
}

func BenchmarkBareRedisHop(b *testing.B) {
	for _, w := range benchWindows {
		b.Run(fmt.Sprintf("subscribers=1/inflight=%d", w), func(b *testing.B) {
			benchBareHop(b, w)
		})
	}
}

// replica is one gateway's share of the state path: a client, its backend (store
// and pub/sub connection) with Run going, and a hub on it.
type replica struct {
	rdb     *redis.Client
	backend *redisstore.Backend
	hub     *state.Hub
	stop    func()
}

func newReplica(b *testing.B, prefix string) *replica {
	b.Helper()
	rdb := newBenchClient(b)
	be, err := redisstore.New(rdb, redisstore.Options{
		Prefix: prefix,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		rdb.Close()
		b.Fatal(err)
	}
	hub, err := state.NewHub(be, benchWatcherBuffer)
	if err != nil {
		rdb.Close()
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = be.Run(ctx, func(ctx context.Context, only []string) error { return hub.Resync(ctx, be, only...) })
	}()
	return &replica{rdb: rdb, backend: be, hub: hub, stop: func() {
		cancel()
		<-done
		rdb.Close()
	}}
}

func newBenchClient(b *testing.B) *redis.Client {
	b.Helper()
	opts, err := redis.ParseURL(server.URL)
	if err != nil {
		b.Fatal(err)
	}
	return redis.NewClient(opts)
}

func benchFanOut(b *testing.B, n, window int) {
	prefix := redistest.Prefix(b)
	a, other := newReplica(b, prefix), newReplica(b, prefix)
	defer other.stop()
	defer a.stop()
	defer deletePrefix(a.rdb, prefix)

	const requestID = "5f0c1e52-8a3b-4d7e-9b61-2f4c8d0a7e13"
	fl := newFlight(n, window)
	ctx, cancel := context.WithCancel(context.Background())
	sinks := make([]*sink, n)
	watchers := make([]*state.Watcher, n)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		for _, w := range watchers {
			if w != nil {
				w.Close()
			}
		}
	}()
	for i := range n {
		// Watcher 0 goes to replica B, so that a single watcher is a remote one;
		// from then on they alternate.
		hub := other.hub
		if i%2 == 1 {
			hub = a.hub
		}
		w, err := hub.Watch(ctx, requestID)
		if err != nil {
			b.Fatal(err)
		}
		watchers[i] = w
		s := newSink(fl)
		sinks[i] = s
		wg.Go(func() {
			for {
				recs, err := w.Next(ctx)
				if err != nil {
					return
				}
				now := time.Now()
				for _, rec := range recs {
					s.receive(b, rec.Seq, now.Sub(rec.UpdatedAt))
				}
			}
		})
	}

	rec := benchRecord(requestID)
	var seq int64
	start := time.Now()
	for b.Loop() {
		seq++
		if err := fl.admit(seq); err != nil {
			b.Fatal(err)
		}
		r := *rec // shallow copy: only Seq and UpdatedAt change, and Save only reads
		r.Seq = seq
		r.UpdatedAt = time.Now()
		if err := a.backend.Save(ctx, &r, 10*time.Minute); err != nil {
			b.Fatalf("save seq %d: %v", seq, err)
		}
	}
	if err := fl.waitDelivered(seq); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	wg.Wait()

	var lat []time.Duration
	for _, s := range sinks {
		lat = s.lat.appendTo(lat)
	}
	b.ReportMetric(float64(seq)/elapsed.Seconds(), "events/s")
	reportFlight(b, seq, int64(n), elapsed, lat, "deliveries/s")
}

// benchRecord is a typical record of a running request, the size of what a
// callback publishes.
func benchRecord(requestID string) *state.Record {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	return &state.Record{
		RequestID:      requestID,
		DeploymentID:   "0d6a2f64-5c1b-4e3a-a1f7-8e2b9c4d6f01",
		Owner:          "tenant-benchmark",
		State:          runcomfy.StateRunning,
		UpstreamStatus: "in_progress",
		InstanceID:     "inst-7f3a9c2e",
		CreatedAt:      t0,
		StartedAt:      t0.Add(3 * time.Second),
	}
}

func benchBareHop(b *testing.B, window int) {
	pub, subc := newBenchClient(b), newBenchClient(b)
	defer pub.Close()
	defer subc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	channel := redistest.Prefix(b) + "bare"

	ps := subc.Subscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		ps.Close()
		b.Fatal(err)
	}
	fl := newFlight(1, window)
	s := newSink(fl)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			msg, err := ps.ReceiveMessage(ctx)
			if err != nil {
				return // ps closed
			}
			now := time.Now()
			seq, sent, err := parseBarePayload(msg.Payload)
			if err != nil {
				b.Error(err)
				return
			}
			s.receive(b, seq, now.Sub(time.Unix(0, sent)))
		}
	})
	defer func() {
		ps.Close()
		wg.Wait()
	}()

	// The payload is as long as an encoded record, so both paths move the same
	// bytes; it starts with the seq and the send time.
	rec := benchRecord("5f0c1e52-8a3b-4d7e-9b61-2f4c8d0a7e13")
	rec.Seq, rec.UpdatedAt = 1, time.Now()
	encoded, err := json.Marshal(rec)
	if err != nil {
		b.Fatal(err)
	}
	size := len(encoded)

	var seq int64
	start := time.Now()
	for b.Loop() {
		seq++
		if err := fl.admit(seq); err != nil {
			b.Fatal(err)
		}
		if err := pub.Publish(ctx, channel, barePayload(seq, time.Now(), size)).Err(); err != nil {
			b.Fatalf("publish seq %d: %v", seq, err)
		}
	}
	if err := fl.waitDelivered(seq); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportFlight(b, seq, 1, elapsed, s.lat.appendTo(nil), "msgs/s")
}

func barePayload(seq int64, sent time.Time, size int) string {
	p := strconv.FormatInt(seq, 10) + " " + strconv.FormatInt(sent.UnixNano(), 10) + " "
	if len(p) < size {
		p += strings.Repeat("x", size-len(p))
	}
	return p
}

func parseBarePayload(p string) (seq, sentNanos int64, err error) {
	f := strings.SplitN(p, " ", 3)
	if len(f) < 3 {
		return 0, 0, fmt.Errorf("bad payload %.40q", p)
	}
	if seq, err = strconv.ParseInt(f[0], 10, 64); err != nil {
		return 0, 0, err
	}
	if sentNanos, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return 0, 0, err
	}
	return seq, sentNanos, nil
}

// flight keeps the publisher at most window updates ahead of the slowest
// receiver. pending counts, per seq (in a ring larger than the window), the
// receivers that have not had it yet; the receiver that takes a seq's count to
// zero advances delivered and wakes the publisher.
type flight struct {
	receivers int64
	window    int64
	mask      int64
	pending   []atomic.Int64
	delivered atomic.Int64 // every seq up to this one reached every receiver
	wake      chan struct{}
}

func newFlight(receivers, window int) *flight {
	size := 1
	for size <= window {
		size *= 2
	}
	return &flight{
		receivers: int64(receivers),
		window:    int64(window),
		mask:      int64(size - 1),
		pending:   make([]atomic.Int64, size),
		wake:      make(chan struct{}, 1),
	}
}

// admit waits until seq may be published, then arms its counter. seq-size has
// been delivered by then (size > window), so its slot is free.
func (f *flight) admit(seq int64) error {
	if err := f.waitDelivered(seq - f.window); err != nil {
		return err
	}
	f.pending[seq&f.mask].Store(f.receivers)
	return nil
}

func (f *flight) waitDelivered(seq int64) error {
	if f.delivered.Load() >= seq {
		return nil
	}
	t := time.NewTimer(benchWaitTimeout)
	defer t.Stop()
	for f.delivered.Load() < seq {
		select {
		case <-f.wake:
		case <-t.C:
			return fmt.Errorf("seq %d not delivered to every receiver within %v (all up to %d were)",
				seq, benchWaitTimeout, f.delivered.Load())
		}
	}
	return nil
}

// done records that one receiver got seq. Every receiver takes seqs in order,
// so seqs complete in order; the max guards against a receiver that completes
// seq and is descheduled while the next one completes seq+1.
func (f *flight) done(seq int64) {
	if f.pending[seq&f.mask].Add(-1) != 0 {
		return
	}
	for {
		cur := f.delivered.Load()
		if cur >= seq || f.delivered.CompareAndSwap(cur, seq) {
			break
		}
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// sink is one receiver: it checks order and keeps the latencies it saw. Only its
// own goroutine touches it until that goroutine has ended.
type sink struct {
	fl   *flight
	last int64
	lat  latencies
}

// newSink returns a sink with room for its first latencyChunk samples, so the
// timed loop does not start with a burst of allocation.
func newSink(fl *flight) *sink {
	s := &sink{fl: fl}
	s.lat.chunks = [][]time.Duration{make([]time.Duration, 0, latencyChunk)}
	return s
}

// latencies grows in fixed chunks, so that recording a sample never copies the
// ones before it (1000 watchers record millions) inside the timed loop.
type latencies struct {
	chunks [][]time.Duration
}

const latencyChunk = 1024

func (l *latencies) add(d time.Duration) {
	if n := len(l.chunks); n == 0 || len(l.chunks[n-1]) == latencyChunk {
		l.chunks = append(l.chunks, make([]time.Duration, 0, latencyChunk))
	}
	last := &l.chunks[len(l.chunks)-1]
	*last = append(*last, d)
}

func (l *latencies) appendTo(all []time.Duration) []time.Duration {
	for _, c := range l.chunks {
		all = append(all, c...)
	}
	return all
}

func (s *sink) receive(b *testing.B, seq int64, latency time.Duration) {
	if seq != s.last+1 {
		// The window keeps every receiver within its buffer, so a jump or a
		// repeat is lost or duplicated delivery, not coalescing.
		b.Errorf("receiver got seq %d after %d", seq, s.last)
		if seq <= s.last {
			return
		}
		for missed := s.last + 1; missed < seq; missed++ {
			s.fl.done(missed) // keep the publisher going; the run has failed anyway
		}
	}
	s.last = seq
	s.lat.add(latency)
	s.fl.done(seq)
}

// reportFlight reports events*receivers/elapsed as rateUnit, and the
// percentiles of the latencies (which it sorts).
func reportFlight(b *testing.B, events, receivers int64, elapsed time.Duration, lat []time.Duration, rateUnit string) {
	b.Helper()
	if events == 0 || elapsed <= 0 {
		return
	}
	b.ReportMetric(float64(events*receivers)/elapsed.Seconds(), rateUnit)
	slices.Sort(lat)
	b.ReportMetric(micros(percentile(lat, 0.50)), "p50-µs")
	b.ReportMetric(micros(percentile(lat, 0.99)), "p99-µs")
}

// percentile returns the p-th quantile (nearest rank) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// deletePrefix removes the keys a benchmark left (they would expire anyway).
func deletePrefix(rdb *redis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 100).Iterator()
	for iter.Next(ctx) {
		rdb.Del(ctx, iter.Val())
	}
}
