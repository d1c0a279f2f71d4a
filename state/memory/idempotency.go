package memory

import (
	"context"
	"time"

	"github.com/comfygate/comfygate/state"
)

type idemEntry struct {
	e       state.IdempotencyEntry
	expires time.Time
}

// Claim implements state.Idempotency.
func (b *Backend) Claim(_ context.Context, key string, e state.IdempotencyEntry, ttl time.Duration) (state.IdempotencyEntry, bool, error) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.idem[key]; ok && now.Before(cur.expires) {
		return cur.e, false, nil
	}
	b.idem[key] = idemEntry{e: e, expires: now.Add(ttl)}
	return e, true, nil
}

// Complete implements state.Idempotency.
func (b *Backend) Complete(_ context.Context, key string, e state.IdempotencyEntry, ttl time.Duration) error {
	b.mu.Lock()
	b.idem[key] = idemEntry{e: e, expires: b.now().Add(ttl)}
	b.mu.Unlock()
	return nil
}

// Drop implements state.Idempotency.
func (b *Backend) Drop(_ context.Context, key string) error {
	b.mu.Lock()
	delete(b.idem, key)
	b.mu.Unlock()
	return nil
}
