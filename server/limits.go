package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// Names of the rate limits, as the rate backend keys them (a Redis key ends in
// one) and as the refusal's message says them.
const (
	limitSubmit = "submit"
	limitRead   = "read"
	// limitWatches, limitInflight and limitConcurrency name the other
	// refusals in metrics.
	limitWatches     = "watches"
	limitInflight    = "inflight_bytes"
	limitConcurrency = "concurrency_cap"
)

// watchRetryDelay is the RetryInfo hint on a watch refused for want of a slot:
// nothing tells when one of the tenant's streams will end, and any one that
// does frees a slot, so a client may try again soon.
const watchRetryDelay = time.Second

// RateLimiter keeps the token buckets behind the submit and read limits. The
// in-memory one (the default) limits each replica by itself; the Redis one
// (redisstore.RateLimiter) makes the limits cluster-wide, so that adding a
// replica does not add to what a tenant may cost.
type RateLimiter interface {
	// Allow spends one token of the bucket of tenant's limit, which holds
	// burst tokens and refills at rate per second, and returns 0. When the
	// bucket is empty it spends nothing and returns how long until a token is
	// there. An error means the backend could not tell: the caller refuses the
	// call (fails closed), since an unbounded tenant is what the limit exists
	// to prevent.
	Allow(ctx context.Context, tenant, limit string, rate float64, burst int) (retryAfter time.Duration, err error)
}

// LimitsConfig sets the per-tenant limits. A zero rate or a zero MaxWatches
// is no limit.
type LimitsConfig struct {
	// SubmitRate and SubmitBurst bound the submits that reach RunComfy (each
	// starts a paid job): a token bucket of SubmitBurst refilled at SubmitRate
	// per second.
	SubmitRate  float64
	SubmitBurst int
	// ReadRate and ReadBurst bound GetStatus, GetResult, Cancel and the opening
	// of watch streams, each of which may call RunComfy.
	ReadRate  float64
	ReadBurst int
	// MaxWatches bounds the watch streams (gRPC, NDJSON and SSE together) a
	// tenant may hold open on one replica: each costs memory and a share of
	// every event's fan-out for as long as it lasts.
	MaxWatches int
	// Rates keeps the submit and read buckets; default in this process.
	Rates RateLimiter
	// Metrics, when set, counts the refusals by limit.
	Metrics *Metrics
}

// Validate is NewTenantLimits's check of cfg, for a configuration to be
// refused before anything starts.
func (cfg LimitsConfig) Validate() error {
	var errs []error
	if cfg.SubmitRate < 0 || (cfg.SubmitRate > 0 && cfg.SubmitBurst < 1) {
		errs = append(errs, fmt.Errorf("server: submit rate %v must not be negative, and a positive one needs a burst of at least 1 (got %d)", cfg.SubmitRate, cfg.SubmitBurst))
	}
	if cfg.ReadRate < 0 || (cfg.ReadRate > 0 && cfg.ReadBurst < 1) {
		errs = append(errs, fmt.Errorf("server: read rate %v must not be negative, and a positive one needs a burst of at least 1 (got %d)", cfg.ReadRate, cfg.ReadBurst))
	}
	if cfg.MaxWatches < 0 {
		errs = append(errs, fmt.Errorf("server: max watches per tenant %d must not be negative", cfg.MaxWatches))
	}
	return errors.Join(errs...)
}

// TenantLimits applies the per-tenant limits on what costs the gateway:
// submits (paid jobs), reads (which may reach RunComfy) and open watch
// streams. Tenant "" (a gateway without API keys) is one tenant like any
// other. A nil *TenantLimits limits nothing.
type TenantLimits struct {
	submitRate  float64
	submitBurst int
	readRate    float64
	readBurst   int
	maxWatches  int
	rates       RateLimiter
	metrics     *Metrics

	mu      sync.Mutex
	watches map[string]int // open watch streams by tenant; absent is 0
}

// NewTenantLimits checks cfg and returns the limits it describes.
func NewTenantLimits(cfg LimitsConfig) (*TenantLimits, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Rates == nil {
		cfg.Rates = newMemoryRates()
	}
	return &TenantLimits{
		submitRate:  cfg.SubmitRate,
		submitBurst: cfg.SubmitBurst,
		readRate:    cfg.ReadRate,
		readBurst:   cfg.ReadBurst,
		maxWatches:  cfg.MaxWatches,
		rates:       cfg.Rates,
		metrics:     cfg.Metrics,
		watches:     map[string]int{},
	}, nil
}

// submit spends one of tenant's submits, or refuses with a *rateLimitedError.
func (l *TenantLimits) submit(ctx context.Context, tenant string) error {
	if l == nil {
		return nil
	}
	return l.take(ctx, tenant, limitSubmit, l.submitRate, l.submitBurst)
}

// read spends one of tenant's reads, or refuses with a *rateLimitedError.
func (l *TenantLimits) read(ctx context.Context, tenant string) error {
	if l == nil {
		return nil
	}
	return l.take(ctx, tenant, limitRead, l.readRate, l.readBurst)
}

func (l *TenantLimits) take(ctx context.Context, tenant, limit string, rate float64, burst int) error {
	if rate <= 0 {
		return nil
	}
	retry, err := l.rates.Allow(ctx, tenant, limit, rate, burst)
	if err != nil {
		return fmt.Errorf("%s rate limit of tenant %q: %w", limit, tenant, err)
	}
	if retry > 0 {
		l.metrics.refused(limit)
		return &rateLimitedError{what: limit + " rate limit reached", retry: retry}
	}
	return nil
}

// openWatch takes one of tenant's watch slots on this replica and spends one
// read, or refuses. The slot is checked first: it costs nothing, so a tenant
// at its cap does not also burn its reads. release frees the slot; it may be
// called more than once and frees it once.
func (l *TenantLimits) openWatch(ctx context.Context, tenant string) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	if l.maxWatches > 0 {
		l.mu.Lock()
		n := l.watches[tenant]
		if n >= l.maxWatches {
			l.mu.Unlock()
			l.metrics.refused(limitWatches)
			return nil, &rateLimitedError{
				what:  fmt.Sprintf("too many open watch streams for this tenant (%d)", l.maxWatches),
				retry: watchRetryDelay,
			}
		}
		l.watches[tenant] = n + 1
		l.mu.Unlock()
	}
	var released atomic.Bool
	release = func() {
		if l.maxWatches <= 0 || !released.CompareAndSwap(false, true) {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if n := l.watches[tenant] - 1; n > 0 {
			l.watches[tenant] = n
		} else {
			delete(l.watches, tenant) // tenants come and go; keep the map small
		}
	}
	if err := l.read(ctx, tenant); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// isRead tells whether the read limit applies to a call: each of these may
// call RunComfy (or, for the deliveries, reads and writes the state backend). Submit has its own limit, inside Submit after the idempotency
// claim, so that a replay (which calls nothing) is free; WatchRequest spends
// its read in openWatch.
func isRead(fullMethod string) bool {
	switch fullMethod {
	case comfygatev1.GatewayService_GetStatus_FullMethodName,
		comfygatev1.GatewayService_GetResult_FullMethodName,
		comfygatev1.GatewayService_Cancel_FullMethodName,
		comfygatev1.GatewayService_ListDeliveries_FullMethodName,
		comfygatev1.GatewayService_ListRequests_FullMethodName,
		comfygatev1.GatewayService_GetUsage_FullMethodName,
		comfygatev1.GatewayService_RedeliverEvent_FullMethodName:
		return true
	}
	return false
}
