// Package memory is the embedded state backend: records, pub/sub and the poll
// schedule in this process, for a single replica. It implements state.Store,
// state.Bus and state.Schedule with the same contract as the Redis backend (the conformance suite in state/statetest
// runs against both).
package memory

import (
	"context"
	"sync"
	"time"

	"github.com/comfygate/comfygate/state"
)

// sweepEvery is how many writes pass between sweeps of expired records, which
// keeps memory bounded without a goroutine of its own.
const sweepEvery = 1024

type entry struct {
	rec     *state.Record
	expires time.Time
}

// Backend holds records and subscriptions in memory.
type Backend struct {
	now func() time.Time

	mu      sync.Mutex
	records map[string]entry
	subs    map[string]func(*state.Record)
	writes  int
	due     map[string]time.Time // the poll schedule
	leases  map[string]lease
	// pausedUntil is the end of the polling pause a 429 imposed.
	pausedUntil time.Time
	idem        map[string]idemEntry
	out         outbox
	queues      map[string]*queue // work queues by name (Queue)
	// usage are the hourly usage buckets: owner -> Unix hour -> counter.
	usage map[string]map[int64]map[string]int64
	// slots are the concurrency counts (Slots), by deployment and by
	// deployment and tenant.
	slots map[string]*slotSet
}

// New returns an empty Backend. now is the clock for expiry; nil means time.Now.
func New(now func() time.Time) *Backend {
	if now == nil {
		now = time.Now
	}
	return &Backend{
		now:     now,
		records: make(map[string]entry),
		subs:    make(map[string]func(*state.Record)),
		due:     make(map[string]time.Time),
		leases:  make(map[string]lease),
		idem:    make(map[string]idemEntry),
		out:     newOutbox(),
		queues:  make(map[string]*queue),
		usage:   make(map[string]map[int64]map[string]int64),
		slots:   make(map[string]*slotSet),
	}
}

// Get returns a copy of the current record, or state.ErrNotFound.
func (b *Backend) Get(ctx context.Context, requestID string) (*state.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	e, ok := b.records[requestID]
	b.mu.Unlock()
	if !ok || !b.now().Before(e.expires) {
		return nil, state.ErrNotFound
	}
	return e.rec.Clone(), nil
}

// Save stores rec if its seq follows the stored one, then publishes it, under one
// lock: no other Save of any request interleaves, so publish order is seq order.
// A refusal is a *state.ConflictError with the stored record.
func (b *Backend) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.saveLocked(rec, ttl)
}

// saveLocked is Save with b.mu held.
func (b *Backend) saveLocked(rec *state.Record, ttl time.Duration) error {
	now := b.now()
	stored := rec.Clone()
	var cur *state.Record
	if e, ok := b.records[rec.RequestID]; ok && now.Before(e.expires) {
		cur = e.rec
	}
	if cur == nil && rec.Seq != 1 || cur != nil && (cur.Seq != rec.Seq-1 || cur.Epoch != rec.Epoch) {
		if cur != nil {
			cur = cur.Clone()
		}
		return &state.ConflictError{Current: cur}
	}
	b.records[rec.RequestID] = entry{rec: stored, expires: now.Add(ttl)}
	if state.CountsEnd(cur, stored) {
		b.countEnd(stored)
	}
	if b.writes++; b.writes%sweepEvery == 0 {
		b.sweepUsage(now)
		for id, e := range b.records {
			if !now.Before(e.expires) {
				delete(b.records, id)
			}
		}
		for id, l := range b.leases {
			if !now.Before(l.expires) {
				delete(b.leases, id)
			}
		}
		for k, e := range b.idem {
			if !now.Before(e.expires) {
				delete(b.idem, k)
			}
		}
		b.out.sweep(now)
	}
	if deliver := b.subs[rec.RequestID]; deliver != nil {
		// The subscriber gets a copy of its own, as from Redis: what it does
		// with it can never reach the stored record (and its seq).
		deliver(stored.Clone())
	}
	return nil
}

// Touch implements state.Toucher.
func (b *Backend) Touch(ctx context.Context, requestID string, pos state.Position, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.records[requestID]
	if !ok || e.rec.Position() != pos || !e.rec.SyncedAt.Before(at) {
		return nil
	}
	// Stored records are never changed in place: Get hands out clones, but
	// a record delivered to subscribers may share nothing with it either way.
	rec := e.rec.Clone()
	rec.SyncedAt = at
	e.rec = rec
	b.records[requestID] = e
	return nil
}

// Missing implements state.MissingChecker.
func (b *Backend) Missing(ctx context.Context, ids []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	var missing []string
	for _, id := range ids {
		if e, ok := b.records[id]; !ok || !now.Before(e.expires) {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// Delete removes requestID's record, as an eviction or a restart would.
// Tests use it to lose data on purpose.
func (b *Backend) Delete(ctx context.Context, requestID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.records, requestID)
	return nil
}

// Subscribe registers deliver for requestID; it is active when Subscribe returns.
func (b *Backend) Subscribe(ctx context.Context, requestID string, deliver func(*state.Record)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	b.subs[requestID] = deliver
	b.mu.Unlock()
	return nil
}

// Unsubscribe removes requestID's subscription.
func (b *Backend) Unsubscribe(_ context.Context, requestID string) error {
	b.mu.Lock()
	delete(b.subs, requestID)
	b.mu.Unlock()
	return nil
}
