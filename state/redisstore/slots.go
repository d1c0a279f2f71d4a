package redisstore

import (
	"context"
	"crypto/rand"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// slotCheck is how many of a full count's oldest slots a reservation checks
// against their records: a request whose record was lost and rebuilt (the
// rebuilt one does not know it holds a slot) or removed ends without giving
// its slot back, and is found here instead of holding it until expiry.
const slotCheck = 16

// reserveScript is Reserve: KEYS[1] the deployment's count, KEYS[2] the
// tenant's on it (one slot: the deployment's hash tag); ARGV 1 now (ms), 2
// the deployment's cap, 3 the tenant's (0: none), 4 the token, 5 its expiry
// (ms), 6 slotCheck. Slots past their expiry are dropped. Returns {0}
// reserved, or {1 (the deployment's cap reached) or 2 (the tenant's), then
// the request ids among the count's slotCheck oldest slots}: the caller
// looks at their records (in other slots) and drops the ones that ended
// (dropScript) before it tries again.
const reserveScript = `
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
end
for i = 1, 2 do
  if caps[i] > 0 and redis.call('ZCARD', KEYS[i]) >= caps[i] then
    local res = {tostring(i)}
    for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, tonumber(ARGV[6]) - 1)) do
      if string.sub(id, 1, 2) ~= '+:' then res[#res + 1] = id end
    end
    return res
  end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], ARGV[5], ARGV[4])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[5]) - tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[5]) - tonumber(ARGV[1]))
  end
end
return {'0'}
`

// bindScript is Bind's first step, in the record's slot: KEYS[1] the
// record; ARGV 1 the counts' names ("<deployment's>\n<tenant's>"). An
// unfinished record names the counts in its 'cap' field, so that its final
// save gives the slot back (followSlots). Returns the record's TTL in ms,
// or -1 when it has ended or is gone.
const bindScript = `
local rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '3')
local ttl = redis.call('PTTL', KEYS[1])
if rank >= 3 or ttl < 0 then return -1 end
redis.call('HSET', KEYS[1], 'cap', ARGV[1])
return ttl
`

// placeScript is Bind's second step, in the counts' slot: KEYS[1] and
// KEYS[2] the counts; ARGV 1 the token, 2 the request id, 3 now (ms), 4
// the record's TTL (ms; negative: ended). The reservation is dropped; an
// unfinished record takes a slot that expires with it.
const placeScript = `
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local ttl = tonumber(ARGV[4])
if ttl < 0 then return 0 end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], tonumber(ARGV[3]) + ttl, ARGV[2])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
`

// followScript follows a save of a record that holds a slot: KEYS[1] and
// KEYS[2] the counts; ARGV 1 the request id, 2 1 when the record is final,
// 3 its TTL (ms). A final record's slot is given back; an unfinished one's
// expires with the record, and the counts live at least as long.
const followScript = `
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], 'XX', expires, ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
`

// slotKeys are the counts of deploymentID and of tenant on it.
func (b *Backend) slotKeys(deploymentID, tenant string) []string {
	dep := b.prefix + "cap:{" + deploymentID + "}"
	return []string{dep, dep + ":" + tenant}
}

// Reserve takes a slot if neither cap is reached. A reservation's token
// starts with "+:", which no request id does. At a cap, the oldest slots'
// records are read, and the slots of those that ended or are gone are
// dropped before one more try: a request whose record was lost and rebuilt
// (the rebuilt one does not know it holds a slot), or whose final save's
// second step failed, is found here instead of holding its slot until
// expiry.
func (b *Backend) Reserve(ctx context.Context, deploymentID, tenant string, caps state.Caps, hold time.Duration) (string, error) {
	keys := b.slotKeys(deploymentID, tenant)
	token := "+:" + rand.Text()
	// checked: the ended slots of the deployment's count (0) or the
	// tenant's (1) were dropped once already. Each cap is checked once: a
	// try that drops the deployment's may then meet the tenant's, whose
	// ended slots of other requests are only found there.
	var checked [2]bool
	for {
		now := time.Now()
		res, err := b.reserve.Run(ctx, b.rdb, keys,
			now.UnixMilli(), caps.Deployment, caps.PerTenant, token, now.Add(hold).UnixMilli(), slotCheck).StringSlice()
		if err == nil && len(res) == 0 {
			err = errors.New("empty answer")
		}
		if err != nil {
			return "", unavailable(ctx, "reserve a concurrency slot", err)
		}
		if res[0] == "0" {
			return token, nil
		}
		count := 0
		if res[0] == "2" {
			count = 1
		}
		if !checked[count] && len(res) > 1 {
			checked[count] = true
			ended, err := b.ended(ctx, res[1:])
			if err != nil {
				return "", err
			}
			if len(ended) > 0 {
				if err := b.drop(ctx, keys, ended); err != nil {
					return "", err
				}
				continue
			}
		}
		if res[0] == "1" {
			return "", &state.CapError{DeploymentID: deploymentID, Limit: caps.Deployment}
		}
		return "", &state.CapError{DeploymentID: deploymentID, PerTenant: true, Limit: caps.PerTenant}
	}
}

// ended returns the ids among ids whose record is final or gone.
func (b *Backend) ended(ctx context.Context, ids []string) ([]any, error) {
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGet(ctx, b.recordKey(id), "rank")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, unavailable(ctx, "check concurrency slots", err)
	}
	var out []any
	for i, c := range cmds {
		if rank, err := c.Int(); err != nil || rank >= 3 {
			out = append(out, ids[i])
		}
	}
	return out, nil
}

// drop removes ids' slots from the counts.
func (b *Backend) drop(ctx context.Context, keys []string, ids []any) error {
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, keys[0], ids...)
		p.ZRem(ctx, keys[1], ids...)
		return nil
	})
	if err != nil {
		return unavailable(ctx, "drop ended concurrency slots", err)
	}
	return nil
}

// Bind makes a reservation requestID's slot while its record is unfinished:
// the record names the counts, then the reservation becomes the request's
// slot (two steps: the record and the counts are in different slots). A
// final save between the two finds no slot to give back; the slot is then
// dropped by the next reservation at the cap, which sees the record ended.
func (b *Backend) Bind(ctx context.Context, token, deploymentID, tenant, requestID string) error {
	keys := b.slotKeys(deploymentID, tenant)
	ttl, err := b.bind.Run(ctx, b.rdb, []string{b.recordKey(requestID)}, keys[0]+"\n"+keys[1]).Int64()
	if err != nil {
		return unavailable(ctx, "bind a concurrency slot", err)
	}
	err = b.place.Run(ctx, b.rdb, keys, token, requestID, strconv.FormatInt(time.Now().UnixMilli(), 10), ttl).Err()
	if err != nil {
		return unavailable(ctx, "bind a concurrency slot", err)
	}
	return nil
}

// Free gives a reservation back.
func (b *Backend) Free(ctx context.Context, token, deploymentID, tenant string) error {
	keys := b.slotKeys(deploymentID, tenant)
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, keys[0], token)
		p.ZRem(ctx, keys[1], token)
		return nil
	})
	if err != nil {
		return unavailable(ctx, "free a concurrency slot", err)
	}
	return nil
}
