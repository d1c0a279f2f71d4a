package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// rateLimitedError: a tenant reached one of its limits (limits.go). what names
// the limit, so the message says which; retry is the RetryInfo hint (errors.go
// maps it to RESOURCE_EXHAUSTED, REST 429).
type rateLimitedError struct {
	what  string
	retry time.Duration
}

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("%s; retry in %v", e.what, e.retry.Round(time.Millisecond))
}

// memoryRates is the in-process RateLimiter: one token bucket per tenant and
// limit, made on first use and kept (tenants are few: one per API key). With
// several replicas each has its own buckets; the Redis one shares them.
type memoryRates struct {
	mu      sync.Mutex
	buckets map[bucketKey]*rate.Limiter
}

type bucketKey struct{ tenant, limit string }

func newMemoryRates() *memoryRates {
	return &memoryRates{buckets: map[bucketKey]*rate.Limiter{}}
}

// Allow implements RateLimiter. A bucket keeps the rate and burst it was made
// with: a limit's settings do not change while the process runs.
func (m *memoryRates) Allow(_ context.Context, tenant, limit string, perSecond float64, burst int) (time.Duration, error) {
	k := bucketKey{tenant, limit}
	m.mu.Lock()
	lim := m.buckets[k]
	if lim == nil {
		lim = rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))
		m.buckets[k] = lim
	}
	m.mu.Unlock()
	r := lim.Reserve()
	if d := r.Delay(); d > 0 {
		// Refused: give the token back, so refusals do not push the next
		// success further away.
		r.Cancel()
		return d, nil
	}
	return 0, nil
}
