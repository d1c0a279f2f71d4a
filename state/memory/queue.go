package memory

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/comfygate/comfygate/state"
)

// Queue implements state.Queues: a work queue kept in this process, lost
// with it.
func (b *Backend) Queue(name string) state.WorkQueue {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q, ok := b.queues[name]; ok {
		return q
	}
	q := &queue{now: b.now, due: map[string]time.Time{}, leases: map[string]lease{}}
	b.queues[name] = q
	return q
}

type queue struct {
	now    func() time.Time
	mu     sync.Mutex
	due    map[string]time.Time
	leases map[string]lease
}

func (q *queue) Add(_ context.Context, requestID string, at time.Time) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if cur, ok := q.due[requestID]; !ok || at.Before(cur) {
		q.due[requestID] = at
	}
	return nil
}

func (q *queue) RetryAt(_ context.Context, requestID string, at time.Time) error {
	q.mu.Lock()
	q.due[requestID] = at
	q.mu.Unlock()
	return nil
}

func (q *queue) Due(_ context.Context, now time.Time, n int) ([]string, error) {
	type item struct {
		id string
		at time.Time
	}
	q.mu.Lock()
	var items []item
	for id, at := range q.due {
		if !at.After(now) {
			items = append(items, item{id, at})
		}
	}
	q.mu.Unlock()
	slices.SortFunc(items, func(x, y item) int { return x.at.Compare(y.at) })
	ids := make([]string, 0, min(n, len(items)))
	for _, it := range items[:min(n, len(items))] {
		ids = append(ids, it.id)
	}
	return ids, nil
}

func (q *queue) Lease(_ context.Context, requestID, owner string, ttl time.Duration) (bool, error) {
	now := q.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	if l, ok := q.leases[requestID]; ok && now.Before(l.expires) {
		return false, nil
	}
	q.leases[requestID] = lease{owner: owner, expires: now.Add(ttl)}
	return true, nil
}

func (q *queue) Release(_ context.Context, requestID, owner string) error {
	q.mu.Lock()
	if l, ok := q.leases[requestID]; ok && l.owner == owner {
		delete(q.leases, requestID)
	}
	q.mu.Unlock()
	return nil
}

func (q *queue) Done(_ context.Context, requestID string) error {
	q.mu.Lock()
	delete(q.due, requestID)
	q.mu.Unlock()
	return nil
}

func (q *queue) Len(context.Context) (int64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int64(len(q.due)), nil
}
