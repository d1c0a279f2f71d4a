package redisstore

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// maxBatch bounds the saves sent in one pipeline.
const maxBatch = 128

// maxSending bounds the pipelines of saves on their way at once. One at a
// time left the replica idle while Redis ran a batch, and Redis idle while
// the replica answered the callers of the last one; a few at once keep both
// busy. The saves are correct in any order (the save script refuses a write
// whose seq moved, as it does between replicas), so the batches need not
// wait for each other.
const maxSending = 4

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

	cmd *redis.Cmd // the save script's, with its outcome
	// batch is set, before wake, when the op's caller is to send it (the op
	// first).
	batch []*saveOp
	// wake signals that the result is in, or that batch is set (a sender's
	// own result then comes as a second signal, which no one reads).
	wake chan struct{}
}

// saveQueue sends concurrent saves together: while maxSending pipelines are
// on their way to Redis, the saves that arrive queue up, and the caller of
// one of them sends them all in the next pipeline when one comes back. Under
// light load each save goes at once (no timer, no added wait); under heavy
// load one round trip and one pair of system calls serve many saves. No
// goroutine is involved: each caller sends at most one batch, then hands
// the next to a waiting caller.
type saveQueue struct {
	mu      sync.Mutex
	pending []*saveOp
	// sending counts the callers sending a batch. Saves wait in pending
	// only while it is maxSending: a caller that finds it lower sends.
	sending int
}

// do sends op, in a batch with whatever else is pending, and returns when its
// result is in. send must set every op's cmd and wake every op.
func (q *saveQueue) do(ctx context.Context, op *saveOp, send func(context.Context, []*saveOp)) {
	q.mu.Lock()
	q.pending = append(q.pending, op)
	var batch []*saveOp
	if q.sending < maxSending {
		q.sending++
		batch = q.take()
		q.mu.Unlock()
	} else {
		q.mu.Unlock()
		// No ctx case: a queued save is sent whatever its caller does, and
		// a caller named to send the next batch must be there to do it. The
		// wait is bounded by the client's socket timeouts.
		<-op.wake
		if batch = op.batch; batch == nil {
			return
		}
	}
	// The batch carries other callers' saves: the sender's cancellation
	// must not fail theirs.
	send(context.WithoutCancel(ctx), batch)

	// The next batch goes to its first caller, this caller's sending slot
	// with it: taken out of pending here, no other sender can take it too.
	q.mu.Lock()
	if len(q.pending) == 0 {
		q.sending--
		q.pending = nil
		q.mu.Unlock()
		return
	}
	next := q.take()
	q.mu.Unlock()
	next[0].batch = next
	next[0].wake <- struct{}{}
}

// take removes the next batch from pending; q.mu is held.
func (q *saveQueue) take() []*saveOp {
	n := min(len(q.pending), maxBatch)
	batch := q.pending[:n:n]
	q.pending = q.pending[n:]
	return batch
}
