package server

import (
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

	mu   sync.Mutex
	held map[string]int64 // by tenant; absent is 0
}

// tenantShareDivisor: a tenant may hold a quarter of the budget (or one
// whole body, if that is more).
const tenantShareDivisor = 4

func newInflightBudget(total, maxBody int64, tenants bool) *inflightBudget {
	b := &inflightBudget{total: semaphore.NewWeighted(total), held: map[string]int64{}}
	if tenants {
		b.share = max(total/tenantShareDivisor, maxBody)
	}
	return b
}

// acquire takes n bytes for tenant, or reports that they are not there.
func (b *inflightBudget) acquire(tenant string, n int64) bool {
	if b.share > 0 {
		b.mu.Lock()
		if b.held[tenant]+n > b.share {
			b.mu.Unlock()
			return false
		}
		b.held[tenant] += n
		b.mu.Unlock()
	}
	if !b.total.TryAcquire(n) {
		b.giveBack(tenant, n)
		return false
	}
	return true
}

// release gives back n bytes of tenant's.
func (b *inflightBudget) release(tenant string, n int64) {
	b.total.Release(n)
	b.giveBack(tenant, n)
}

func (b *inflightBudget) giveBack(tenant string, n int64) {
	if b.share == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if left := b.held[tenant] - n; left > 0 {
		b.held[tenant] = left
	} else {
		delete(b.held, tenant)
	}
}
