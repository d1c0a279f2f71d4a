package state

import (
	"context"
	"time"
)

// WorkQueue is durable per-request work that the replicas share, such as
// copying a succeeded request's outputs: a request is due at a time; a
// replica works on it under a lease, so one at a time does; work that is
// not finished stays due (its lease expires with a replica that died), and
// finished work leaves the queue.
type WorkQueue interface {
	// Add makes requestID due at at, or keeps it due earlier when it already
	// is.
	Add(ctx context.Context, requestID string, at time.Time) error
	// RetryAt makes requestID due at at, replacing its due time.
	RetryAt(ctx context.Context, requestID string, at time.Time) error
	// Due returns up to n requests due at or before now, earliest first.
	Due(ctx context.Context, now time.Time, n int) ([]string, error)
	// Lease takes requestID's lease for owner for ttl; false while anyone
	// (owner included) holds it.
	Lease(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error)
	// Release gives up owner's lease, if owner still holds it.
	Release(ctx context.Context, requestID, owner string) error
	// Done removes requestID from the queue.
	Done(ctx context.Context, requestID string) error
	// Len is how many requests the queue holds, due or not.
	Len(ctx context.Context) (int64, error)
}

// Queues is a backend that keeps named work queues.
type Queues interface {
	// Queue is the work queue called name (letters, digits and '-').
	Queue(name string) WorkQueue
}
