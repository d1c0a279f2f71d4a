package redisstore

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// maxBatch bounds the saves sent in one pipeline.
const maxBatch = 128

// saveOp is one save waiting for its turn in a pipeline.
type saveOp struct {
	keys   []string
	args   []any
	id     string
	due    float64 // poll due time in Unix ms; 0 leaves the schedule alone
	forget bool
	// final and ttl are the record's, for the second step of a record that
	// holds a concurrency slot (followSlots).
	final bool
	ttl   int64 // ms

	cmd  *redis.Cmd    // the save script's, with its outcome
	lead bool          // set, before wake, when the op's caller must send the next batch
	wake chan struct{} // one signal: the result is in, or lead is set
}

// saveQueue sends concurrent saves together: while one pipeline is on its
// way to Redis, the saves that arrive queue up, and the caller of one of them
// sends them all in the next pipeline. Under light load each save goes alone
// at once (no timer, no added wait); under heavy load one round trip and one
// pair of system calls serve many saves. No goroutine is involved: each
// caller sends at most one batch, then hands the queue to a waiting caller.
type saveQueue struct {
	mu      sync.Mutex
	pending []*saveOp
	busy    bool // a caller is sending a batch
}

// do sends op, in a batch with whatever else is pending, and returns when its
// result is in. send must set every op's cmd and wake every op.
func (q *saveQueue) do(ctx context.Context, op *saveOp, send func(context.Context, []*saveOp)) {
	q.mu.Lock()
	q.pending = append(q.pending, op)
	if q.busy {
		q.mu.Unlock()
		// No ctx case: a queued save is sent whatever its caller does, and
		// a caller named to send the next batch must be there to do it. The
		// wait is bounded by the client's socket timeouts.
		<-op.wake
		if !op.lead {
			return
		}
		q.mu.Lock()
	}
	q.busy = true
	n := min(len(q.pending), maxBatch)
	batch := q.pending[:n:n]
	q.pending = q.pending[n:]
	q.mu.Unlock()

	// The batch carries other callers' saves: the sender's cancellation must
	// not fail theirs.
	send(context.WithoutCancel(ctx), batch)

	q.mu.Lock()
	if len(q.pending) == 0 {
		q.busy = false
		q.pending = nil
		q.mu.Unlock()
		return
	}
	next := q.pending[0]
	next.lead = true
	q.mu.Unlock()
	next.wake <- struct{}{}
}
