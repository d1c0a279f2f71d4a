package redisstore

import (
	"cmp"
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

// handBackScript queues again, as new entries, the jobs of a bucket that a
// consumer took and has not done, removes the old entries, and forgets the
// consumer once it holds none: KEYS[1] the jobs stream; ARGV 1 group, 2
// consumer, 3 most to move. Returns how many were pending for the consumer
// (so many as ARGV 3: call again).
const handBackScript = `
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
for _, p in ipairs(pending) do
  local m = redis.call('XRANGE', KEYS[1], p[1], p[1])
  if #m > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(m[1][2]))
  end
  redis.call('XACK', KEYS[1], ARGV[1], p[1])
  redis.call('XDEL', KEYS[1], p[1])
end
if #pending < tonumber(ARGV[3]) then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #pending
`

// forgetIdleScript forgets the consumers of a bucket's jobs that hold no job
// and have not read for a while (those of replicas that died, or stopped
// while Redis did not answer): KEYS[1] the jobs stream; ARGV 1 group, 2 the
// consumer that asks (never forgotten), 3 the idle time in ms. In one script,
// so that no consumer takes a job between the look and the forgetting, which
// would drop the job from the pending list. Returns how many were forgotten.
const forgetIdleScript = `
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    n = n + 1
  end
end
return n
`

// forgetIdleAfter is how many times Reclaim's idle time a consumer that
// holds no job may go without reading before it is forgotten: a live
// replica reads every few seconds, or once its workers, busy for at most
// about a lease each, are free again.
const forgetIdleAfter = 20

// handBackBatch is the most jobs handBackScript moves in one call.
const handBackBatch = 100

// ensureGroup creates the deliverers group (and the stream) of a bucket if
// missing: from the stream's start, so jobs queued before it existed are
// read.
func (b *Backend) ensureGroup(ctx context.Context, bucket int) error {
	err := b.rdb.XGroupCreateMkStream(ctx, b.keys.Jobs(bucket), deliverersGroup, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return unavailable(ctx, "create consumer group", err)
	}
	return nil
}

// takeSlice bounds one blocking read of a bucket's jobs when there are
// several buckets: a blocking read covers one stream's slot only, so Take
// reads every bucket without blocking, then blocks on one bucket (a
// different one each time) for at most this long. A job queued in another
// bucket meanwhile waits at most this long for the next Take.
const takeSlice = 100 * time.Millisecond

// Take implements state.Outbox with XREADGROUP: every bucket from a
// rotating first one until n jobs are found, then, when none were, a wait
// of up to block on one bucket. A Redis that lost the group (restarted
// empty) gets it again.
func (b *Backend) Take(ctx context.Context, consumer string, n int, block time.Duration) ([]state.Job, error) {
	if b.callTimeout > 0 {
		// Every call is bounded by the call timeout: block within it.
		block = min(block, b.callTimeout/2)
	}
	nb := b.keys.Buckets()
	if nb == 1 {
		return b.takeFrom(ctx, 0, consumer, n, block)
	}
	// A bucket that fails (its master is down) is passed over: the jobs
	// taken from the others are this consumer's now, and are returned, not
	// left to wait for a takeover.
	var (
		jobs  []state.Job
		first error
	)
	start := int(b.rotate.Add(1) % uint64(nb))
	for i := range nb {
		got, err := b.takeFrom(ctx, (start+i)%nb, consumer, n-len(jobs), -1)
		if err != nil {
			first = cmp.Or(first, err)
			continue
		}
		if jobs = append(jobs, got...); len(jobs) == n {
			return jobs, nil
		}
	}
	switch {
	case len(jobs) > 0:
		return jobs, nil
	case first != nil:
		return nil, first
	case block <= 0:
		return nil, nil
	}
	return b.takeFrom(ctx, start, consumer, n, min(block, takeSlice))
}

// takeFrom reads at most n new jobs of one bucket, waiting up to block for
// them (not at all when block is negative).
func (b *Backend) takeFrom(ctx context.Context, bucket int, consumer string, n int, block time.Duration) ([]state.Job, error) {
	for attempt := 0; ; attempt++ {
		res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: deliverersGroup, Consumer: consumer, Streams: []string{b.keys.Jobs(bucket), ">"},
			Count: int64(n), Block: block,
		}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return nil, nil
		case err != nil && redis.HasErrorPrefix(err, "NOGROUP") && attempt == 0:
			if err := b.ensureGroup(ctx, bucket); err != nil {
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

// Reclaim implements state.Outbox with XAUTOCLAIM, over every bucket from
// a rotating first one until n jobs are found. It then forgets, in every
// bucket, the consumers that hold no job and have not read for
// forgetIdleAfter times minIdle (forgetIdleScript): each replica's is named
// anew when it starts, so a replica that never stopped cleanly (HandBack)
// would leave its own in the group for good.
func (b *Backend) Reclaim(ctx context.Context, consumer string, minIdle time.Duration, n int) ([]state.Job, error) {
	nb := b.keys.Buckets()
	first := int(b.rotate.Add(1) % uint64(nb))
	var (
		jobs   []state.Job
		failed error
	)
	for i := 0; i < nb && len(jobs) < n; i++ {
		bucket := (first + i) % nb
		msgs, _, err := b.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: b.keys.Jobs(bucket), Group: deliverersGroup, Consumer: consumer,
			MinIdle: minIdle, Start: "0-0", Count: int64(n - len(jobs)),
		}).Result()
		switch {
		case err != nil && redis.HasErrorPrefix(err, "NOGROUP"):
			if err := b.ensureGroup(ctx, bucket); err != nil {
				failed = cmp.Or(failed, err)
			}
			continue
		case err != nil:
			// Passed over, as in Take: the jobs claimed from the others
			// are returned.
			failed = cmp.Or(failed, unavailable(ctx, "claim delivery jobs", err))
			continue
		}
		for _, j := range toJobs(msgs) {
			if j.RequestID != "" { // an entry deleted meanwhile comes back empty
				jobs = append(jobs, j)
			}
		}
	}
	if len(jobs) == 0 && failed != nil {
		return nil, failed
	}
	// Best effort, like the reclaim of a bucket that failed: the next one
	// looks again.
	for bucket := range nb {
		_ = b.forgetIdle.Run(ctx, b.rdb, []string{b.keys.Jobs(bucket)}, deliverersGroup, consumer, (forgetIdleAfter * minIdle).Milliseconds()).Err()
	}
	return jobs, nil
}

// HandBack implements state.Outbox with handBackScript, in each bucket. A
// bucket whose group is gone (Redis restarted empty) holds no job of
// consumer's.
func (b *Backend) HandBack(ctx context.Context, consumer string) (int, error) {
	var (
		total  int
		failed error
	)
	for bucket := range b.keys.Buckets() {
		for {
			n, err := b.handBack.Run(ctx, b.rdb, []string{b.keys.Jobs(bucket)}, deliverersGroup, consumer, handBackBatch).Int()
			if err != nil {
				if !redis.HasErrorPrefix(err, "NOGROUP") {
					failed = cmp.Or(failed, unavailable(ctx, "hand back delivery jobs", err))
				}
				break
			}
			total += n
			if n < handBackBatch {
				break
			}
		}
	}
	return total, failed
}

// Done implements state.Outbox: XACK and XDEL in each job's bucket (its
// request's), so the streams hold only jobs not done.
func (b *Backend) Done(ctx context.Context, jobs ...state.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	byStream := make(map[string][]string)
	for _, j := range jobs {
		k := b.jobsKey(j.RequestID)
		byStream[k] = append(byStream[k], j.ID)
	}
	pipe := b.rdb.Pipeline()
	for k, ids := range byStream {
		pipe.XAck(ctx, k, deliverersGroup, ids...)
		pipe.XDel(ctx, k, ids...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable(ctx, "finish delivery jobs", err)
	}
	return nil
}

// Wake implements state.Outbox.
func (b *Backend) Wake(ctx context.Context, requestID string) error {
	if err := b.rdb.XAdd(ctx, &redis.XAddArgs{Stream: b.jobsKey(requestID), Values: []string{"r", requestID}}).Err(); err != nil {
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
	if err := b.rdb.ZAddLT(ctx, b.keys.Retries(b.keys.Bucket(requestID)), redis.Z{Score: float64(at.UnixMilli()), Member: requestID}).Err(); err != nil {
		return unavailable(ctx, "schedule delivery retry", err)
	}
	return nil
}

// WakeDue implements state.Outbox: each bucket's due retries move into its
// own jobs stream (one slot), at most n per bucket.
func (b *Backend) WakeDue(ctx context.Context, now time.Time, n int) (int, error) {
	calls := make([]scriptCall, b.keys.Buckets())
	for i := range calls {
		calls[i] = scriptCall{keys: []string{b.keys.Retries(i), b.keys.Jobs(i)}, args: []any{strconv.FormatInt(now.UnixMilli(), 10), n}}
	}
	moved := 0
	for _, cmd := range b.runAll(ctx, b.wakeDue, calls) {
		m, err := cmd.Int()
		if err != nil {
			return moved, unavailable(ctx, "wake due deliveries", err)
		}
		moved += m
	}
	return moved, nil
}

// Depth implements state.Outbox, summed over the buckets.
func (b *Backend) Depth(ctx context.Context) (jobs, retries int64, err error) {
	nb := b.keys.Buckets()
	pipe := b.rdb.Pipeline()
	xl := make([]*redis.IntCmd, nb)
	zc := make([]*redis.IntCmd, nb)
	for i := range nb {
		xl[i] = pipe.XLen(ctx, b.keys.Jobs(i))
		zc[i] = pipe.ZCard(ctx, b.keys.Retries(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, 0, unavailable(ctx, "outbox depth", err)
	}
	for i := range nb {
		jobs += xl[i].Val()
		retries += zc[i].Val()
	}
	return jobs, retries, nil
}

var _ state.Outbox = (*Backend)(nil)
