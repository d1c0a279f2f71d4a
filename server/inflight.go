package server

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/semaphore"
)

// inflightBudget bounds the bytes of request bodies (REST) and submit
// messages (gRPC) a replica holds at once: --max-inflight-body-bytes. With
// several tenants, one may hold at most a share of it, so that a tenant that
// opens slow bodies cannot take the whole budget from the others for the
// length of a read timeout.
type inflightBudget struct {
	total *semaphore.Weighted
	share int64 // most one tenant may hold; 0: no share (one tenant)

	mu      sync.Mutex
	tenants map[string]*semaphore.Weighted // each of size share; made on first use
}

// tenantShareDivisor: a tenant may hold a quarter of the budget (or one
// whole body, if that is more).
const tenantShareDivisor = 4

func newInflightBudget(total, maxBody int64, tenants bool) *inflightBudget {
	b := &inflightBudget{total: semaphore.NewWeighted(total), tenants: map[string]*semaphore.Weighted{}}
	if tenants {
		b.share = max(total/tenantShareDivisor, maxBody)
	}
	return b
}

// tenant is tenant's own share, nil without shares. Tenants are the keys
// file's, few: their semaphores are kept.
func (b *inflightBudget) tenant(tenant string) *semaphore.Weighted {
	if b.share == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.tenants[tenant]
	if s == nil {
		s = semaphore.NewWeighted(b.share)
		b.tenants[tenant] = s
	}
	return s
}

// acquire takes n bytes for tenant at once, or reports that they are not
// there (a REST body, refused with 503).
func (b *inflightBudget) acquire(tenant string, n int64) bool {
	t := b.tenant(tenant)
	if t != nil && !t.TryAcquire(n) {
		return false
	}
	if !b.total.TryAcquire(n) {
		if t != nil {
			t.Release(n)
		}
		return false
	}
	return true
}

// acquireWait takes n bytes for tenant, waiting for them until ctx ends (a
// gRPC message, whose sender waits meanwhile: HTTP/2's flow control holds
// what it sends back).
func (b *inflightBudget) acquireWait(ctx context.Context, tenant string, n int64) error {
	t := b.tenant(tenant)
	if t != nil {
		if err := t.Acquire(ctx, n); err != nil {
			return fmt.Errorf("waiting for room in the bytes in flight: %w", err)
		}
	}
	if err := b.total.Acquire(ctx, n); err != nil {
		if t != nil {
			t.Release(n)
		}
		return fmt.Errorf("waiting for room in the bytes in flight: %w", err)
	}
	return nil
}

// release gives back n bytes of tenant's.
func (b *inflightBudget) release(tenant string, n int64) {
	if n <= 0 {
		return
	}
	b.total.Release(n)
	if t := b.tenant(tenant); t != nil {
		t.Release(n)
	}
}
