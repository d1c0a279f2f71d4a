package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// deliverersGroup is the consumer group every replica reads delivery jobs in.
const deliverersGroup = "deliverers"

// outboxLeaseScript takes or extends a delivery lease: KEYS[1] the lease;
// ARGV 1 owner, 2 ttl in ms. 1 when owner holds it afterwards.
const outboxLeaseScript = `
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`

// wakeDueScript moves the requests due for a retry into the jobs stream:
// KEYS[1] the retry schedule, KEYS[2] the jobs stream (one slot: {hooks});
// ARGV 1 now in ms, 2 most to move. Returns how many.
const wakeDueScript = `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'r', id)
end
return #ids
`

// ensureGroup creates the deliverers group (and the stream) if missing:
// from the stream's start, so jobs queued before it existed are read.
func (b *Backend) ensureGroup(ctx context.Context) error {
	err := b.rdb.XGroupCreateMkStream(ctx, b.jobsKey(), deliverersGroup, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return unavailable(ctx, "create consumer group", err)
	}
	return nil
}

// Take implements state.Outbox with XREADGROUP. A Redis that lost the group
// (restarted empty) gets it again.
func (b *Backend) Take(ctx context.Context, consumer string, n int, block time.Duration) ([]state.Job, error) {
	if b.callTimeout > 0 {
		// Every call is bounded by the call timeout: block within it.
		block = min(block, b.callTimeout/2)
	}
	for attempt := 0; ; attempt++ {
		res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: deliverersGroup, Consumer: consumer, Streams: []string{b.jobsKey(), ">"},
			Count: int64(n), Block: block,
		}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return nil, nil
		case err != nil && redis.HasErrorPrefix(err, "NOGROUP") && attempt == 0:
			if err := b.ensureGroup(ctx); err != nil {
				return nil, err
			}
			continue
		case err != nil:
			return nil, unavailable(ctx, "read delivery jobs", err)
		}
		var jobs []state.Job
		for _, s := range res {
			jobs = append(jobs, toJobs(s.Messages)...)
		}
		return jobs, nil
	}
}

func toJobs(msgs []redis.XMessage) []state.Job {
	jobs := make([]state.Job, 0, len(msgs))
	for _, m := range msgs {
		id, _ := m.Values["r"].(string)
		jobs = append(jobs, state.Job{ID: m.ID, RequestID: id})
	}
	return jobs
}

// Reclaim implements state.Outbox with XAUTOCLAIM.
func (b *Backend) Reclaim(ctx context.Context, consumer string, minIdle time.Duration, n int) ([]state.Job, error) {
	msgs, _, err := b.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: b.jobsKey(), Group: deliverersGroup, Consumer: consumer,
		MinIdle: minIdle, Start: "0-0", Count: int64(n),
	}).Result()
	switch {
	case err != nil && redis.HasErrorPrefix(err, "NOGROUP"):
		return nil, b.ensureGroup(ctx)
	case err != nil:
		return nil, unavailable(ctx, "claim delivery jobs", err)
	}
	var jobs []state.Job
	for _, j := range toJobs(msgs) {
		if j.RequestID != "" { // an entry deleted meanwhile comes back empty
			jobs = append(jobs, j)
		}
	}
	return jobs, nil
}

// Done implements state.Outbox: XACK and XDEL, so the stream holds only
// jobs not done.
func (b *Backend) Done(ctx context.Context, jobs ...state.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	pipe := b.rdb.Pipeline()
	pipe.XAck(ctx, b.jobsKey(), deliverersGroup, ids...)
	pipe.XDel(ctx, b.jobsKey(), ids...)
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable(ctx, "finish delivery jobs", err)
	}
	return nil
}

// Wake implements state.Outbox.
func (b *Backend) Wake(ctx context.Context, requestID string) error {
	if err := b.rdb.XAdd(ctx, &redis.XAddArgs{Stream: b.jobsKey(), Values: []string{"r", requestID}}).Err(); err != nil {
		return unavailable(ctx, "queue delivery job", err)
	}
	return nil
}

// Events implements state.Outbox.
func (b *Backend) Events(ctx context.Context, requestID string) ([]*state.Event, error) {
	msgs, err := b.rdb.XRange(ctx, b.outboxKey(requestID), "-", "+").Result()
	if err != nil {
		return nil, unavailable(ctx, "read events", err)
	}
	out := make([]*state.Event, 0, len(msgs))
	for _, m := range msgs {
		data, _ := m.Values["e"].(string)
		ev := &state.Event{}
		if err := json.Unmarshal([]byte(data), ev); err != nil {
			return nil, fmt.Errorf("decode event %s of %s: %w", m.ID, requestID, err)
		}
		out = append(out, ev)
	}
	return out, nil
}

// Deliveries implements state.Outbox.
func (b *Backend) Deliveries(ctx context.Context, requestID string) ([]*state.Delivery, error) {
	m, err := b.rdb.HGetAll(ctx, b.deliveriesKey(requestID)).Result()
	if err != nil {
		return nil, unavailable(ctx, "read deliveries", err)
	}
	out := make([]*state.Delivery, 0, len(m))
	for k, v := range m {
		d := &state.Delivery{}
		if err := json.Unmarshal([]byte(v), d); err != nil {
			return nil, fmt.Errorf("decode delivery %q of %s: %w", k, requestID, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// PutDelivery implements state.Outbox.
func (b *Backend) PutDelivery(ctx context.Context, requestID string, d *state.Delivery, ttl time.Duration) error {
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encode delivery of %s: %w", requestID, err)
	}
	pipe := b.rdb.TxPipeline()
	pipe.HSet(ctx, b.deliveriesKey(requestID), d.Key(), data)
	pipe.PExpire(ctx, b.deliveriesKey(requestID), max(ttl, time.Millisecond))
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable(ctx, "save delivery", err)
	}
	return nil
}

// LeaseOutbox implements state.Outbox.
func (b *Backend) LeaseOutbox(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error) {
	n, err := b.outboxLease.Run(ctx, b.rdb, []string{b.outboxLeaseKey(requestID)}, owner, max(ttl.Milliseconds(), 1)).Int()
	if err != nil {
		return false, unavailable(ctx, "lease outbox", err)
	}
	return n == 1, nil
}

// ReleaseOutbox implements state.Outbox.
func (b *Backend) ReleaseOutbox(ctx context.Context, requestID, owner string) error {
	if err := b.release.Run(ctx, b.rdb, []string{b.outboxLeaseKey(requestID)}, owner).Err(); err != nil {
		return unavailable(ctx, "release outbox", err)
	}
	return nil
}

// RetryAt implements state.Outbox (ZADD LT: an earlier time wins).
func (b *Backend) RetryAt(ctx context.Context, requestID string, at time.Time) error {
	if err := b.rdb.ZAddLT(ctx, b.retriesKey(), redis.Z{Score: float64(at.UnixMilli()), Member: requestID}).Err(); err != nil {
		return unavailable(ctx, "schedule delivery retry", err)
	}
	return nil
}

// WakeDue implements state.Outbox.
func (b *Backend) WakeDue(ctx context.Context, now time.Time, n int) (int, error) {
	moved, err := b.wakeDue.Run(ctx, b.rdb, []string{b.retriesKey(), b.jobsKey()}, strconv.FormatInt(now.UnixMilli(), 10), n).Int()
	if err != nil {
		return 0, unavailable(ctx, "wake due deliveries", err)
	}
	return moved, nil
}

// Depth implements state.Outbox.
func (b *Backend) Depth(ctx context.Context) (jobs, retries int64, err error) {
	pipe := b.rdb.Pipeline()
	xl := pipe.XLen(ctx, b.jobsKey())
	zc := pipe.ZCard(ctx, b.retriesKey())
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, 0, unavailable(ctx, "outbox depth", err)
	}
	return xl.Val(), zc.Val(), nil
}

var _ state.Outbox = (*Backend)(nil)
