package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// rateTimeout bounds one rate-limit decision. Every read and submit waits for
// one, so a Redis that hangs must turn into a prompt UNAVAILABLE rather than
// calls that hang with it; a healthy Redis answers in well under a millisecond.
const rateTimeout = 500 * time.Millisecond

// maxRatePeriod bounds the period a rate is turned into, so that an absurdly
// small rate does not overflow time.Duration.
const maxRatePeriod = 365 * 24 * time.Hour

// RateLimiter keeps per-tenant token buckets in Redis, shared by every
// replica: two replicas with a burst of 3 accept 3 calls together, not 6. It is
// GCRA (github.com/go-redis/redis_rate), one Lua script per decision that reads
// and updates one key atomically with Redis's own clock, so replicas' clocks
// do not matter. A bucket's key expires once the bucket is full again:
//
//	<prefix>rate:{<tenant>}:<limit>   string: the bucket's theoretical arrival
//	                                  time; limit is "submit" or "read"
//
// The tenant is the hash tag, so a tenant's buckets share a cluster slot and
// tenants spread over slots.
type RateLimiter struct {
	limiter *redis_rate.Limiter
}

// RateLimiter returns the backend's rate limiter, on the same client and
// prefix as the rest of its keys.
func (b *Backend) RateLimiter() *RateLimiter {
	return &RateLimiter{limiter: redis_rate.NewLimiter(&prefixed{rdb: b.rdb, prefix: b.prefix})}
}

// Allow implements server.RateLimiter: it spends one token of tenant's limit
// bucket and returns 0, or returns how long until a token is there. A Redis
// failure or timeout is state.ErrUnavailable, so the caller fails closed.
func (r *RateLimiter) Allow(ctx context.Context, tenant, limit string, rate float64, burst int) (time.Duration, error) {
	if rate <= 0 || burst < 1 {
		return 0, fmt.Errorf("redis rate limit %s: rate %v and burst %d must be positive", limit, rate, burst)
	}
	// redis_rate counts Rate events per Period; a rate of, say, 0.5/s is one
	// event per 2s, which keeps fractional rates exact.
	period := maxRatePeriod
	if p := float64(time.Second) / rate; p < float64(maxRatePeriod) {
		period = max(time.Duration(p), time.Nanosecond)
	}
	tctx, cancel := context.WithTimeout(ctx, rateTimeout)
	defer cancel()
	res, err := r.limiter.Allow(tctx, rateKey(tenant, limit), redis_rate.Limit{Rate: 1, Period: period, Burst: burst})
	if err != nil {
		// The caller's own end stays visible as such; our timeout is Redis's
		// failure.
		return 0, unavailable(ctx, "rate limit", err)
	}
	if res.Allowed > 0 {
		return 0, nil
	}
	// Never 0 when refused: 0 means allowed.
	return max(res.RetryAfter, time.Millisecond), nil
}

// rateKey is the part of a bucket's key after "<prefix>rate:" (redis_rate
// puts "rate:" in front of it, and prefixed puts the store's prefix in front
// of that).
func rateKey(tenant, limit string) string {
	return "{" + tenant + "}:" + limit
}

// prefixed is the client redis_rate runs its script on. redis_rate names every
// key "rate:" + key, outside any prefix; prefixed puts the store's prefix in
// front of each key, so the buckets live under the prefix like every other
// key (one Redis can serve several gateways, and operators scan, evict and
// delete by prefix).
type prefixed struct {
	rdb    redis.UniversalClient
	prefix string
}

func (p *prefixed) keys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = p.prefix + k
	}
	return out
}

func (p *prefixed) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return p.rdb.Eval(ctx, script, p.keys(keys), args...)
}

func (p *prefixed) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return p.rdb.EvalSha(ctx, sha1, p.keys(keys), args...)
}

func (p *prefixed) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return p.rdb.EvalRO(ctx, script, p.keys(keys), args...)
}

func (p *prefixed) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return p.rdb.EvalShaRO(ctx, sha1, p.keys(keys), args...)
}

func (p *prefixed) ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd {
	return p.rdb.ScriptExists(ctx, hashes...)
}

func (p *prefixed) ScriptLoad(ctx context.Context, script string) *redis.StringCmd {
	return p.rdb.ScriptLoad(ctx, script)
}

func (p *prefixed) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	return p.rdb.Del(ctx, p.keys(keys)...)
}
