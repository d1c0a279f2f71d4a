package redisstore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// QueueKey is the sorted set of work queue name under prefix: request ids
// scored by when they are due (ms).
func QueueKey(prefix, name string) string { return prefix + "{queue:" + name + "}" }

// QueueLeaseKey is the lease of a request in work queue name under prefix.
func QueueLeaseKey(prefix, name, requestID string) string {
	return prefix + "qlease:" + name + ":{" + requestID + "}"
}

// Queue implements state.Queues.
func (b *Backend) Queue(name string) state.WorkQueue {
	return &queue{b: b, name: name, key: QueueKey(b.prefix, name)}
}

type queue struct {
	b    *Backend
	name string
	key  string
}

func (q *queue) Add(ctx context.Context, requestID string, at time.Time) error {
	// LT adds a new member, and lowers an existing one only.
	err := q.b.rdb.ZAddArgs(ctx, q.key, redis.ZAddArgs{LT: true, Members: []redis.Z{{Score: float64(at.UnixMilli()), Member: requestID}}}).Err()
	if err != nil {
		return unavailable(ctx, "queue add", err)
	}
	return nil
}

func (q *queue) RetryAt(ctx context.Context, requestID string, at time.Time) error {
	if err := q.b.rdb.ZAdd(ctx, q.key, redis.Z{Score: float64(at.UnixMilli()), Member: requestID}).Err(); err != nil {
		return unavailable(ctx, "queue retry", err)
	}
	return nil
}

func (q *queue) Due(ctx context.Context, now time.Time, n int) ([]string, error) {
	ids, err := q.b.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: q.key, Start: "-inf", Stop: now.UnixMilli(), ByScore: true, Count: int64(n),
	}).Result()
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
	if err := q.b.rdb.ZRem(ctx, q.key, requestID).Err(); err != nil {
		return unavailable(ctx, "queue done", err)
	}
	return nil
}

func (q *queue) Len(ctx context.Context) (int64, error) {
	n, err := q.b.rdb.ZCard(ctx, q.key).Result()
	if err != nil {
		return 0, unavailable(ctx, "queue length", err)
	}
	return n, nil
}
