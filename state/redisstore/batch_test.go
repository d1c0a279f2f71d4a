package redisstore

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestSaveQueue drives the queue with many concurrent callers and a sender
// that takes its time, as a round trip does: every save must be sent exactly
// once and its caller woken with its own result, at most maxSending batches
// may be in flight at once (and under heavy load more than one is, so that
// Redis and the replica work at once), batches must stay within maxBatch,
// and saves that arrive while maxSending round trips are out must share the
// next one.
func TestSaveQueue(t *testing.T) {
	tests := []struct {
		name    string
		callers int
		delay   time.Duration // the round trip of one batch
	}{
		{"one caller", 1, 0},
		{"light load", 4, 0},
		{"heavy load", 500, 200 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				q        saveQueue
				inFlight atomic.Int32
				most     atomic.Int32 // the most batches in flight at once
				sent     sync.Map     // op id → times sent
				batches  atomic.Int64
				largest  atomic.Int64
			)
			send := func(ctx context.Context, ops []*saveOp) {
				n := inFlight.Add(1)
				if n > maxSending {
					t.Errorf("%d batches in flight at once, over %d", n, maxSending)
				}
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				if ctx.Err() != nil {
					t.Errorf("a batch was sent with a canceled context")
				}
				batches.Add(1)
				if n := int64(len(ops)); n > largest.Load() {
					largest.Store(n)
				}
				if len(ops) > maxBatch {
					t.Errorf("batch of %d saves, over %d", len(ops), maxBatch)
				}
				time.Sleep(tt.delay)
				for _, op := range ops {
					c, _ := sent.LoadOrStore(op.id, new(atomic.Int32))
					c.(*atomic.Int32).Add(1)
					op.cmd = redis.NewCmd(ctx)
					op.cmd.SetVal(op.id)
				}
				inFlight.Add(-1)
				for _, op := range ops {
					op.wake <- struct{}{}
				}
			}
			var wg sync.WaitGroup
			for i := range tt.callers {
				wg.Go(func() {
					// Some callers give up at once: their saves still go, and
					// a caller named to send the next batch still sends it.
					ctx, cancel := context.WithCancel(context.Background())
					if i%3 == 0 {
						cancel()
					}
					defer cancel()
					op := &saveOp{id: string(rune('a'+i%26)) + time.Duration(i).String(), wake: make(chan struct{}, 1)}
					q.do(ctx, op, send)
					if op.cmd == nil || op.cmd.Val() != op.id {
						t.Errorf("caller %d woke without its own result", i)
					}
				})
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("callers still waiting after 30s: the queue stalled")
			}
			n := 0
			sent.Range(func(_, c any) bool {
				n++
				if got := c.(*atomic.Int32).Load(); got != 1 {
					t.Errorf("a save was sent %d times", got)
				}
				return true
			})
			if n != tt.callers {
				t.Errorf("%d saves sent, want %d", n, tt.callers)
			}
			if tt.callers >= 100 && largest.Load() < 2 {
				t.Errorf("%d concurrent callers went out in %d batches of at most %d: nothing was batched", tt.callers, batches.Load(), largest.Load())
			}
			if tt.callers >= 100 && most.Load() < 2 {
				t.Errorf("%d concurrent callers never had two batches in flight at once", tt.callers)
			}
			if q.sending != 0 || len(q.pending) != 0 {
				t.Errorf("queue left with %d sending, %d pending", q.sending, len(q.pending))
			}
		})
	}
}
