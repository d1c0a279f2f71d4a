package redisstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// releaseScript deletes a lease only if its owner still holds it, so a replica
// whose lease expired cannot release the one its successor took.
const releaseScript = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`

// pauseScript sets the pause end only if it is later than the one in force;
// the key expires when the pause does. ARGV: 1 end (ms), 2 ms from now.
const pauseScript = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 0
`

// SetDue implements state.Schedule.
func (b *Backend) SetDue(ctx context.Context, requestID string, at time.Time) error {
	if err := b.rdb.ZAdd(ctx, b.pendingKey(requestID), redis.Z{Score: float64(at.UnixMilli()), Member: requestID}).Err(); err != nil {
		return unavailable(ctx, "schedule", err)
	}
	return nil
}

// Expedite implements state.Schedule: ZADD XX LT only lowers an existing score.
func (b *Backend) Expedite(ctx context.Context, requestID string, at time.Time) error {
	err := b.rdb.ZAddArgs(ctx, b.pendingKey(requestID), redis.ZAddArgs{
		XX: true, LT: true,
		Members: []redis.Z{{Score: float64(at.UnixMilli()), Member: requestID}},
	}).Err()
	if err != nil {
		return unavailable(ctx, "expedite", err)
	}
	return nil
}

// Due implements state.Schedule: the earliest due of every bucket, read in
// one pipeline, the earliest n of them all.
func (b *Backend) Due(ctx context.Context, now time.Time, n int) ([]string, error) {
	ids, err := b.dueIn(ctx, b.keys.Pending, now, n)
	if err != nil {
		return nil, unavailable(ctx, "due", err)
	}
	return ids, nil
}

// dueIn reads the members due by now of the sorted set key names in every
// bucket and returns the earliest n of them all, in time order; the
// buckets are read from a rotating first one, so that ties do not always
// favour the same bucket.
func (b *Backend) dueIn(ctx context.Context, key func(bucket int) string, now time.Time, n int) ([]string, error) {
	nb := b.keys.Buckets()
	first := int(b.rotate.Add(1) % uint64(nb))
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.ZSliceCmd, nb)
	for i := range nb {
		cmds[i] = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
			Key: key((first + i) % nb), Start: "-inf", Stop: now.UnixMilli(), ByScore: true, Count: int64(n),
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	var due []redis.Z
	for _, c := range cmds {
		due = append(due, c.Val()...)
	}
	if nb > 1 {
		slices.SortStableFunc(due, func(a, c redis.Z) int { return cmp.Compare(a.Score, c.Score) })
	}
	ids := make([]string, 0, min(n, len(due)))
	for _, z := range due[:min(n, len(due))] {
		id, _ := z.Member.(string)
		ids = append(ids, id)
	}
	return ids, nil
}

// Forget implements state.Schedule.
func (b *Backend) Forget(ctx context.Context, requestID string) error {
	pipe := b.rdb.Pipeline()
	pipe.ZRem(ctx, b.pendingKey(requestID), requestID)
	pipe.Del(ctx, b.aboutKey(requestID))
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable(ctx, "forget", err)
	}
	return nil
}

// Scheduled implements state.ScheduleDescriber: the description the last
// save that scheduled the request wrote beside its record.
func (b *Backend) Scheduled(ctx context.Context, requestID string) (state.ScheduledRequest, bool, error) {
	data, err := b.rdb.Get(ctx, b.aboutKey(requestID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return state.ScheduledRequest{}, false, nil
	}
	if err != nil {
		return state.ScheduledRequest{}, false, unavailable(ctx, "scheduled", err)
	}
	var sr state.ScheduledRequest
	if err := json.Unmarshal(data, &sr); err != nil {
		return state.ScheduledRequest{}, false, fmt.Errorf("redis scheduled %s: stored description is not valid: %w", requestID, err)
	}
	return sr, true, nil
}

// Lease implements state.Schedule with SET NX PX.
func (b *Backend) Lease(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error) {
	err := b.rdb.SetArgs(ctx, b.leaseKey(requestID), owner, redis.SetArgs{Mode: "NX", TTL: ttl}).Err()
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, redis.Nil):
		return false, nil
	default:
		return false, unavailable(ctx, "lease", err)
	}
}

// Release implements state.Schedule.
func (b *Backend) Release(ctx context.Context, requestID, owner string) error {
	if err := b.release.Run(ctx, b.rdb, []string{b.leaseKey(requestID)}, owner).Err(); err != nil {
		return unavailable(ctx, "release", err)
	}
	return nil
}

// Pause implements state.Schedule: every bucket holds a copy of the pause,
// so that the replicas' reads of it are spread over the cluster.
func (b *Backend) Pause(ctx context.Context, until time.Time) error {
	d := time.Until(until).Milliseconds()
	if d <= 0 {
		return nil
	}
	calls := make([]scriptCall, b.keys.Buckets())
	for i := range calls {
		calls[i] = scriptCall{keys: []string{b.keys.Pause(i)}, args: []any{until.UnixMilli(), d}}
	}
	for _, cmd := range b.runAll(ctx, b.pause, calls) {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return unavailable(ctx, "pause", err)
		}
	}
	return nil
}

// PausedUntil implements state.Schedule from one bucket's copy of the
// pause, a different one each time.
func (b *Backend) PausedUntil(ctx context.Context) (time.Time, error) {
	bucket := int(b.rotate.Add(1) % uint64(b.keys.Buckets()))
	ms, err := b.rdb.Get(ctx, b.keys.Pause(bucket)).Int64()
	switch {
	case errors.Is(err, redis.Nil):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, unavailable(ctx, "paused until", err)
	}
	return time.UnixMilli(ms), nil
}
