package redisstore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// QueueKey is the sorted set of work queue name under prefix, in the
// classic layout: request ids scored by when they are due (ms).
func QueueKey(prefix, name string) string { return NewKeys(prefix, 0).Queue(0, name) }

// QueueLeaseKey is the lease of a request in work queue name under prefix.
func QueueLeaseKey(prefix, name, requestID string) string {
	return prefix + "qlease:" + name + ":{" + requestID + "}"
}

// Queue implements state.Queues: a sorted set per bucket, each request in
// its own bucket's.
func (b *Backend) Queue(name string) state.WorkQueue {
	return &queue{b: b, name: name}
}

type queue struct {
	b    *Backend
	name string
}

// key is the queue's sorted set in requestID's bucket.
func (q *queue) key(requestID string) string {
	return q.b.keys.Queue(q.b.keys.Bucket(requestID), q.name)
}

// bucketKey is the queue's sorted set in bucket.
func (q *queue) bucketKey(bucket int) string { return q.b.keys.Queue(bucket, q.name) }

func (q *queue) Add(ctx context.Context, requestID string, at time.Time) error {
	// LT adds a new member, and lowers an existing one only.
	err := q.b.rdb.ZAddArgs(ctx, q.key(requestID), redis.ZAddArgs{LT: true, Members: []redis.Z{{Score: float64(at.UnixMilli()), Member: requestID}}}).Err()
	if err != nil {
		return unavailable(ctx, "queue add", err)
	}
	return nil
}

func (q *queue) RetryAt(ctx context.Context, requestID string, at time.Time) error {
	if err := q.b.rdb.ZAdd(ctx, q.key(requestID), redis.Z{Score: float64(at.UnixMilli()), Member: requestID}).Err(); err != nil {
		return unavailable(ctx, "queue retry", err)
	}
	return nil
}

func (q *queue) Due(ctx context.Context, now time.Time, n int) ([]string, error) {
	ids, err := q.b.dueIn(ctx, q.bucketKey, now, n)
	if err != nil {
		return nil, unavailable(ctx, "queue due", err)
	}
	return ids, nil
}

func (q *queue) Lease(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error) {
	err := q.b.rdb.SetArgs(ctx, QueueLeaseKey(q.b.prefix, q.name, requestID), owner, redis.SetArgs{Mode: "NX", TTL: ttl}).Err()
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, redis.Nil):
		return false, nil
	default:
		return false, unavailable(ctx, "queue lease", err)
	}
}

func (q *queue) Release(ctx context.Context, requestID, owner string) error {
	if err := q.b.release.Run(ctx, q.b.rdb, []string{QueueLeaseKey(q.b.prefix, q.name, requestID)}, owner).Err(); err != nil {
		return unavailable(ctx, "queue release", err)
	}
	return nil
}

func (q *queue) Done(ctx context.Context, requestID string) error {
	if err := q.b.rdb.ZRem(ctx, q.key(requestID), requestID).Err(); err != nil {
		return unavailable(ctx, "queue done", err)
	}
	return nil
}

func (q *queue) Len(ctx context.Context) (int64, error) {
	pipe := q.b.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, q.b.keys.Buckets())
	for i := range cmds {
		cmds[i] = pipe.ZCard(ctx, q.bucketKey(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, unavailable(ctx, "queue length", err)
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}
