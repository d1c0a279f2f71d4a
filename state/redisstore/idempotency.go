package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// Claim implements state.Idempotency: SET NX, or read what holds the key.
func (b *Backend) Claim(ctx context.Context, key string, e state.IdempotencyEntry, ttl time.Duration) (state.IdempotencyEntry, bool, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return state.IdempotencyEntry{}, false, err
	}
	for range 3 {
		err := b.rdb.SetArgs(ctx, b.idemKey(key), data, redis.SetArgs{Mode: "NX", TTL: ttl}).Err()
		if err == nil {
			return e, true, nil
		}
		if !errors.Is(err, redis.Nil) {
			return state.IdempotencyEntry{}, false, unavailable(ctx, "claim", err)
		}
		cur, err := b.rdb.Get(ctx, b.idemKey(key)).Bytes()
		if errors.Is(err, redis.Nil) {
			continue // dropped or expired in between: claim again
		}
		if err != nil {
			return state.IdempotencyEntry{}, false, unavailable(ctx, "claim", err)
		}
		var got state.IdempotencyEntry
		if err := json.Unmarshal(cur, &got); err != nil {
			return state.IdempotencyEntry{}, false, fmt.Errorf("idempotency entry is not valid: %w", err)
		}
		return got, false, nil
	}
	return state.IdempotencyEntry{}, false, fmt.Errorf("claim idempotency key: %w", state.ErrConflict)
}

// Complete implements state.Idempotency.
func (b *Backend) Complete(ctx context.Context, key string, e state.IdempotencyEntry, ttl time.Duration) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := b.rdb.Set(ctx, b.idemKey(key), data, ttl).Err(); err != nil {
		return unavailable(ctx, "complete", err)
	}
	return nil
}

// Drop implements state.Idempotency.
func (b *Backend) Drop(ctx context.Context, key string) error {
	if err := b.rdb.Del(ctx, b.idemKey(key)).Err(); err != nil {
		return unavailable(ctx, "drop", err)
	}
	return nil
}
