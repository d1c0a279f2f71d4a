package memory

import (
	"context"
	"slices"
	"time"
)

type lease struct {
	owner   string
	expires time.Time
}

// SetDue implements state.Schedule.
func (b *Backend) SetDue(_ context.Context, requestID string, at time.Time) error {
	b.mu.Lock()
	b.due[requestID] = at
	b.mu.Unlock()
	return nil
}

// Expedite implements state.Schedule.
func (b *Backend) Expedite(_ context.Context, requestID string, at time.Time) error {
	b.mu.Lock()
	if cur, ok := b.due[requestID]; ok && at.Before(cur) {
		b.due[requestID] = at
	}
	b.mu.Unlock()
	return nil
}

// Due implements state.Schedule. It scans every scheduled request: fine for the
// number of unfinished requests one replica holds.
func (b *Backend) Due(_ context.Context, now time.Time, n int) ([]string, error) {
	type item struct {
		id string
		at time.Time
	}
	b.mu.Lock()
	var items []item
	for id, at := range b.due {
		if !at.After(now) {
			items = append(items, item{id, at})
		}
	}
	b.mu.Unlock()
	slices.SortFunc(items, func(x, y item) int { return x.at.Compare(y.at) })
	ids := make([]string, 0, min(n, len(items)))
	for _, it := range items[:min(n, len(items))] {
		ids = append(ids, it.id)
	}
	return ids, nil
}

// Forget implements state.Schedule.
func (b *Backend) Forget(_ context.Context, requestID string) error {
	b.mu.Lock()
	delete(b.due, requestID)
	b.mu.Unlock()
	return nil
}

// Lease implements state.Schedule.
func (b *Backend) Lease(_ context.Context, requestID, owner string, ttl time.Duration) (bool, error) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.leases[requestID]; ok && now.Before(l.expires) {
		return false, nil
	}
	b.leases[requestID] = lease{owner: owner, expires: now.Add(ttl)}
	return true, nil
}

// Release implements state.Schedule.
func (b *Backend) Release(_ context.Context, requestID, owner string) error {
	b.mu.Lock()
	if l, ok := b.leases[requestID]; ok && l.owner == owner {
		delete(b.leases, requestID)
	}
	b.mu.Unlock()
	return nil
}

// Pause implements state.Schedule.
func (b *Backend) Pause(_ context.Context, until time.Time) error {
	b.mu.Lock()
	if until.After(b.pausedUntil) {
		b.pausedUntil = until
	}
	b.mu.Unlock()
	return nil
}

// PausedUntil implements state.Schedule.
func (b *Backend) PausedUntil(context.Context) (time.Time, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pausedUntil, nil
}
