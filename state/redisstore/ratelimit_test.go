package redisstore_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// rateReplica is one replica's rate limiter: a client and backend of its own
// on the shared server (or the shared cluster), under prefix.
func rateReplica(t *testing.T, prefix string, onCluster bool) *redisstore.RateLimiter {
	t.Helper()
	var rdb redis.UniversalClient = server.Client(t)
	if onCluster {
		rdb = sharedCluster(t).Client(t)
	}
	b, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return b.RateLimiter()
}

// ratePrefix is a prefix of the test's own; every key under it is deleted
// when the test ends (buckets expire by themselves too, once full again).
func ratePrefix(t *testing.T) (string, *redis.Client) {
	t.Helper()
	prefix := redistest.Prefix(t)
	rdb := server.Client(t)
	t.Cleanup(func() {
		ctx := context.Background()
		keys, err := rdb.Keys(ctx, prefix+"*").Result()
		if err != nil {
			t.Errorf("list the test's keys: %v", err)
			return
		}
		if len(keys) > 0 {
			if err := rdb.Del(ctx, keys...).Err(); err != nil {
				t.Errorf("delete the test's keys: %v", err)
			}
		}
	})
	return prefix, rdb
}

// allow is one Allow that must not fail.
func allow(ctx context.Context, t *testing.T, r *redisstore.RateLimiter, tenant, limit string, rate float64, burst int) time.Duration {
	t.Helper()
	retry, err := r.Allow(ctx, tenant, limit, rate, burst)
	if err != nil {
		t.Fatalf("Allow(%s, %s): %v", tenant, limit, err)
	}
	return retry
}

// TestRateLimitIsClusterWide: replicas on one Redis share each bucket, so
// together they accept the burst once, not once each; the refusals spend
// nothing and say how long until the next token.
func TestRateLimitIsClusterWide(t *testing.T) {
	tests := []struct {
		name     string
		replicas int
		rate     float64
		burst    int
		// maxRetry bounds the first refusal's RetryAfter: one token's time.
		maxRetry time.Duration
		// onCluster runs the replicas on a Redis Cluster.
		onCluster bool
	}{
		{"one replica", 1, 1, 3, time.Second, false},
		{"two replicas", 2, 1, 3, time.Second, false},
		{"three replicas", 3, 1, 3, time.Second, false},
		{"fractional rate", 2, 0.5, 1, 2 * time.Second, false},
		{"three replicas on a cluster", 3, 1, 3, time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			prefix, _ := ratePrefix(t)
			var replicas []*redisstore.RateLimiter
			for range tt.replicas {
				replicas = append(replicas, rateReplica(t, prefix, tt.onCluster))
			}
			// Twice the burst, alternating between the replicas. The rates
			// are slow enough that no token comes back meanwhile.
			var allowed int
			var firstRetry time.Duration
			for i := range 2 * tt.burst {
				retry := allow(ctx, t, replicas[i%len(replicas)], "tenant-a", "submit", tt.rate, tt.burst)
				if retry == 0 {
					allowed++
				} else if firstRetry == 0 {
					firstRetry = retry
				}
			}
			if allowed != tt.burst {
				t.Errorf("allowed %d of %d, want the burst %d", allowed, 2*tt.burst, tt.burst)
			}
			if firstRetry <= 0 || firstRetry > tt.maxRetry {
				t.Errorf("RetryAfter %v, want within (0, %v]", firstRetry, tt.maxRetry)
			}
		})
	}
}

// TestRateLimitBucketsAreSeparate: each tenant and each limit has a bucket of
// its own; tenant "" (a gateway without API keys) is one tenant like another.
func TestRateLimitBucketsAreSeparate(t *testing.T) {
	ctx := context.Background()
	prefix, rdb := ratePrefix(t)
	r := rateReplica(t, prefix, false)
	buckets := []struct{ tenant, limit string }{
		{"tenant-a", "submit"},
		{"tenant-a", "read"},
		{"tenant-b", "submit"},
		{"", "submit"},
	}
	for _, b := range buckets {
		if retry := allow(ctx, t, r, b.tenant, b.limit, 0.001, 1); retry != 0 {
			t.Errorf("first call of %q %s refused (retry %v): buckets are shared", b.tenant, b.limit, retry)
		}
	}
	for _, b := range buckets {
		if retry := allow(ctx, t, r, b.tenant, b.limit, 0.001, 1); retry == 0 {
			t.Errorf("second call of %q %s allowed past a burst of 1", b.tenant, b.limit)
		}
	}
	// The key layout documented in ratelimit.go: under the prefix, hash-tagged
	// by tenant, and expiring once the bucket is full again.
	for _, b := range buckets {
		key := prefix + "rate:{" + b.tenant + "}:" + b.limit
		ttl, err := rdb.TTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 {
			t.Errorf("key %s: TTL %v, want a bucket that expires", key, ttl)
		}
	}
	if n, err := rdb.Exists(ctx, "rate:"+prefix+"{tenant-a}:submit").Result(); err != nil || n != 0 {
		t.Errorf("a bucket outside the prefix: %d, %v", n, err)
	}
}

// TestRateLimitRefillsAfterRetryAfter: a caller refused with RetryAfter is
// allowed again once that time has passed.
func TestRateLimitRefillsAfterRetryAfter(t *testing.T) {
	ctx := context.Background()
	prefix, _ := ratePrefix(t)
	r := rateReplica(t, prefix, false)
	if retry := allow(ctx, t, r, "tenant-a", "read", 20, 1); retry != 0 {
		t.Fatalf("first call refused: %v", retry)
	}
	retry := allow(ctx, t, r, "tenant-a", "read", 20, 1)
	if retry <= 0 || retry > 50*time.Millisecond {
		t.Fatalf("second call: RetryAfter %v, want within (0, 50ms]", retry)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Wait as a client told RetryAfter would.
		time.Sleep(retry)
		if retry = allow(ctx, t, r, "tenant-a", "read", 20, 1); retry == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no token came back")
		}
	}
}

// TestRateLimitFailsClosed: when Redis does not answer, Allow fails with
// state.ErrUnavailable within its short timeout, so the gateway refuses the
// call (UNAVAILABLE) rather than letting it through unlimited; the caller's
// own cancellation stays a cancellation.
func TestRateLimitFailsClosed(t *testing.T) {
	// Port 1: nothing listens, as during an outage.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	b, err := redisstore.New(rdb, redisstore.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r := b.RateLimiter()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"redis down", context.Background(), state.ErrUnavailable},
		{"caller gone", cancelled, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := r.Allow(tt.ctx, "tenant-a", "read", 1, 1)
			if !errors.Is(err, tt.want) {
				t.Errorf("Allow = %v, want %v", err, tt.want)
			}
			if tt.want == context.Canceled && errors.Is(err, state.ErrUnavailable) {
				t.Errorf("a cancelled caller reported as an outage: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Allow took %v: not bounded", d)
			}
		})
	}
}
