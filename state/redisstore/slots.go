package redisstore

import (
	"context"
	"crypto/rand"
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
// (ms), 6 the record key prefix (before the request id's hash tag), 7
// slotCheck. Slots
// past their expiry are dropped; at a cap, the oldest slots whose record is
// final or gone are dropped too, then the count is read again. Returns 0
// reserved, 1 the deployment's cap reached, 2 the tenant's.
const reserveScript = `
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
end
for i = 1, 2 do
  if caps[i] > 0 and redis.call('ZCARD', KEYS[i]) >= caps[i] then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, tonumber(ARGV[7]) - 1)) do
      if string.sub(id, 1, 2) ~= '+:' then
        local rank = tonumber(redis.call('HGET', ARGV[6] .. '{' .. id .. '}', 'rank') or '3')
        if rank >= 3 then
          redis.call('ZREM', KEYS[1], id)
          redis.call('ZREM', KEYS[2], id)
        end
      end
    end
    if redis.call('ZCARD', KEYS[i]) >= caps[i] then return i end
  end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], ARGV[5], ARGV[4])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[5]) - tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[5]) - tonumber(ARGV[1]))
  end
end
return 0
`

// bindScript is Bind: KEYS[1] the record, KEYS[2] and KEYS[3] the counts;
// ARGV 1 the token, 2 the request id, 3 now (ms). The reservation is
// dropped; an unfinished record takes a slot, expiring with the record,
// and names the counts in its 'cap' field, so that its final save gives the
// slot back (saveScript). Returns 1 bound, 0 freed.
const bindScript = `
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '3')
local ttl = redis.call('PTTL', KEYS[1])
if rank >= 3 or ttl < 0 then return 0 end
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], tonumber(ARGV[3]) + ttl, ARGV[2])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
redis.call('HSET', KEYS[1], 'cap', KEYS[2] .. '\n' .. KEYS[3])
return 1
`

// slotKeys are the counts of deploymentID and of tenant on it.
func (b *Backend) slotKeys(deploymentID, tenant string) []string {
	dep := b.prefix + "cap:{" + deploymentID + "}"
	return []string{dep, dep + ":" + tenant}
}

// Reserve takes a slot if neither cap is reached. A reservation's token
// starts with "+:", which no request id does.
func (b *Backend) Reserve(ctx context.Context, deploymentID, tenant string, caps state.Caps, hold time.Duration) (string, error) {
	now := time.Now()
	token := "+:" + rand.Text()
	res, err := b.reserve.Run(ctx, b.rdb, b.slotKeys(deploymentID, tenant),
		now.UnixMilli(), caps.Deployment, caps.PerTenant, token, now.Add(hold).UnixMilli(), b.prefix+"req:", slotCheck).Int()
	if err != nil {
		return "", unavailable(ctx, "reserve a concurrency slot", err)
	}
	switch res {
	case 1:
		return "", &state.CapError{DeploymentID: deploymentID, Limit: caps.Deployment}
	case 2:
		return "", &state.CapError{DeploymentID: deploymentID, PerTenant: true, Limit: caps.PerTenant}
	}
	return token, nil
}

// Bind makes a reservation requestID's slot while its record is unfinished.
func (b *Backend) Bind(ctx context.Context, token, deploymentID, tenant, requestID string) error {
	keys := append([]string{b.recordKey(requestID)}, b.slotKeys(deploymentID, tenant)...)
	if err := b.bind.Run(ctx, b.rdb, keys, token, requestID, strconv.FormatInt(time.Now().UnixMilli(), 10)).Err(); err != nil {
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
