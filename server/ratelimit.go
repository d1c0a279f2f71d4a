package server

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// rateLimitedError: the tenant submits faster than --submit-rate allows.
type rateLimitedError struct{ retry time.Duration }

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("submit rate limit reached; retry in %v", e.retry.Round(time.Millisecond))
}

// submitLimits holds one token bucket per tenant. Buckets are made on first use
// and kept: tenants are few (one per API key).
type submitLimits struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	tenants map[string]*rate.Limiter
}

func newSubmitLimits(perSecond float64, burst int) *submitLimits {
	if perSecond <= 0 {
		return nil
	}
	return &submitLimits{limit: rate.Limit(perSecond), burst: max(burst, 1), tenants: map[string]*rate.Limiter{}}
}

// take spends one token of tenant's bucket, or says how long until one is there.
func (l *submitLimits) take(tenant string) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	lim := l.tenants[tenant]
	if lim == nil {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.tenants[tenant] = lim
	}
	l.mu.Unlock()
	r := lim.Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		return &rateLimitedError{retry: d}
	}
	return nil
}
