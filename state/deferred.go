package state

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// maxDeferred bounds the updates a Tracker keeps to record later.
const maxDeferred = 4096

// deferred holds updates that could not be recorded because the store was
// unavailable: the submit of a job RunComfy started, and bills, while Redis
// went down. Left alone such a request might never be recorded: its
// callbacks stop once refused for long enough, and nothing polls a request
// the store does not hold.
type deferred struct {
	mu      sync.Mutex
	updates map[string]Update
}

// Defer keeps u, which the store was unavailable to record, until
// RecordDeferred records it. Once maxDeferred are kept, u is dropped and
// Defer reports false.
func (t *Tracker) Defer(u Update) bool {
	t.deferred.mu.Lock()
	defer t.deferred.mu.Unlock()
	if t.deferred.updates == nil {
		t.deferred.updates = map[string]Update{}
	}
	if _, ok := t.deferred.updates[u.RequestID]; !ok && len(t.deferred.updates) >= maxDeferred {
		return false
	}
	t.deferred.updates[u.RequestID] = u
	return true
}

// RecordDeferred applies the deferred updates and returns how many it
// recorded (applied, or found recorded already). An update the store is
// still unavailable for stays for the next call; one past the retention,
// or refused for any other reason, is dropped, its error returned.
func (t *Tracker) RecordDeferred(ctx context.Context) (int, error) {
	t.deferred.mu.Lock()
	pending := make([]Update, 0, len(t.deferred.updates))
	for _, u := range t.deferred.updates {
		pending = append(pending, u)
	}
	t.deferred.mu.Unlock()
	var (
		recorded int
		errs     []error
	)
	for _, u := range pending {
		if ctx.Err() != nil {
			break
		}
		var err error
		if u.CreatedAt.IsZero() || t.now().Sub(u.CreatedAt) < t.retention {
			if _, _, err = t.Apply(ctx, u); errors.Is(err, ErrUnavailable) {
				// Still down: the next call tries again.
				return recorded, err
			}
		} else {
			err = fmt.Errorf("request %s: past its retention", u.RequestID)
		}
		t.deferred.mu.Lock()
		delete(t.deferred.updates, u.RequestID)
		t.deferred.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("record deferred update: %w", err))
			continue
		}
		recorded++
	}
	return recorded, errors.Join(errs...)
}
