package state

import (
	"context"
	"errors"
	"time"
)

// Errors a Store or Bus returns; the server maps them to gRPC codes and the
// webhook handler to HTTP statuses.
var (
	// ErrNotFound: no record for this request (never seen, or expired).
	ErrNotFound = errors.New("state: request not found")
	// ErrConflict: the stored seq moved since it was read; read again and retry.
	ErrConflict = errors.New("state: concurrent update")
	// ErrUnavailable: the backend cannot be reached; nothing was changed.
	ErrUnavailable = errors.New("state: backend unavailable")
)

// ConflictError is ErrConflict carrying the record stored when Save refused,
// for a store that read it anyway: the writer merges again with it instead of
// reading it once more. Current is nil when no record is stored.
type ConflictError struct {
	Current *Record
}

func (e *ConflictError) Error() string { return ErrConflict.Error() }

// Unwrap makes a ConflictError match ErrConflict.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// Store keeps records. Implementations: the embedded memory backend (one replica)
// and Redis (many replicas).
type Store interface {
	// Get returns the current record, or ErrNotFound.
	Get(ctx context.Context, requestID string) (*Record, error)
	// Save stores rec and publishes it on the request's channel, atomically, if
	// and only if the stored record is at (rec.Epoch, rec.Seq-1) (no record
	// when rec.Seq is 1); otherwise it changes nothing and returns ErrConflict
	// (a *ConflictError when it knows what is stored). The record expires ttl
	// after this write.
	Save(ctx context.Context, rec *Record, ttl time.Duration) error
}

// MissingChecker is a Store that can tell which of many requests have no
// record in one call.
type MissingChecker interface {
	Missing(ctx context.Context, ids []string) ([]string, error)
}

// Toucher is a Store that can record that upstream confirmed a state without
// changing it: the record's SyncedAt moves to at, nothing else changes and
// nothing is published. The Tracker uses it when the store offers it.
type Toucher interface {
	// Touch sets the SyncedAt of requestID's record to at if the record is
	// still at pos (and its SyncedAt is earlier); otherwise it does nothing.
	Touch(ctx context.Context, requestID string, pos Position, at time.Time) error
}

// ScheduledSaver is a Store that is also the Schedule and can write a
// record's schedule change in the same round trip as the record: the Tracker
// uses it when the store offers it, and Save then SetDue or Forget otherwise.
type ScheduledSaver interface {
	// SaveScheduled is Save that also makes the request due for a poll at due
	// (before the save; due zero leaves the schedule alone) or, with forget,
	// removes it from the schedule (after the save, even a refused one: the
	// caller saves a final record and retries a refusal with another final
	// record, since nothing moves a request out of a final state).
	SaveScheduled(ctx context.Context, rec *Record, ttl time.Duration, due time.Time, forget bool) error
}

// Bus delivers records published by Save, on any replica, to this replica.
// Subscriptions are per request: a replica receives only the requests its watchers
// follow.
type Bus interface {
	// Subscribe starts delivering requestID's records to deliver, in publish
	// order, and returns once the subscription is active: anything Saved after it
	// returns is delivered. deliver must not block.
	Subscribe(ctx context.Context, requestID string, deliver func(*Record)) error
	// Unsubscribe stops the delivery started by Subscribe.
	Unsubscribe(ctx context.Context, requestID string) error
}

// Schedule is the shared list of unfinished requests and when each is next due
// for a poll upstream, plus the per-request poll lease that keeps replicas from
// polling the same request at once.
type Schedule interface {
	// SetDue makes requestID due for a poll at at, replacing any earlier time.
	SetDue(ctx context.Context, requestID string, at time.Time) error
	// Expedite makes requestID due at at if that is earlier than its current due
	// time; it does nothing for a request that is not scheduled.
	Expedite(ctx context.Context, requestID string, at time.Time) error
	// Due returns up to n requests whose due time is at or before now, earliest
	// first.
	Due(ctx context.Context, now time.Time, n int) ([]string, error)
	// Forget removes requestID from the schedule (finished, or expired).
	Forget(ctx context.Context, requestID string) error
	// Lease takes requestID's poll lease for owner for ttl; false while anyone
	// (owner included) holds it. A lease that is not released expires after ttl, so a
	// replica that dies mid-poll is replaced.
	Lease(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error)
	// Release gives up owner's lease on requestID, if owner still holds it.
	Release(ctx context.Context, requestID, owner string) error
	// Pause stops every replica's polling until until (RunComfy answered 429
	// for the whole account); an earlier time than a pause in force is ignored.
	Pause(ctx context.Context, until time.Time) error
	// PausedUntil is the end of the pause in force; the zero time or a past time
	// when there is none.
	PausedUntil(ctx context.Context) (time.Time, error)
}

// ScheduledRequest describes a scheduled request, as its last scheduling save
// recorded it: enough to make its record again from RunComfy if the record
// alone is lost (evicted) while the schedule keeps it, with what RunComfy
// does not know of it: its webhooks and deadlines.
type ScheduledRequest struct {
	DeploymentID  string          `json:"d"`
	Owner         string          `json:"o,omitempty"`
	OwnerAttached bool            `json:"a,omitempty"`
	CreatedAt     time.Time       `json:"c,omitzero"`
	Webhooks      []WebhookTarget `json:"w,omitempty"`
	MaxQueue      time.Duration   `json:"mq,omitempty"`
	MaxRun        time.Duration   `json:"mr,omitempty"`
}

// ScheduleDescriber is a Schedule that keeps a description of each scheduled
// request beside it. A backend whose records can be lost without its
// schedule (Redis, evicting records) offers it.
type ScheduleDescriber interface {
	Scheduled(ctx context.Context, requestID string) (ScheduledRequest, bool, error)
}

// IdempotencyEntry is what an idempotency key stands for.
type IdempotencyEntry struct {
	// BodyHash identifies the submit (deployment and input) the key was first
	// used with.
	BodyHash string `json:"body_hash"`
	// RequestID is the request the submit started; empty while it is under way.
	RequestID string `json:"request_id,omitempty"`
	// Unanswered: the submit reached RunComfy and no answer naming a request
	// came back, so a job may have started. The key then stays taken, and a
	// retry with it is refused rather than sent again (a second paid job).
	Unanswered bool `json:"unanswered,omitempty"`
	// Sent: the submit is on its way to RunComfy (a job may start), its
	// sender alive until Until, which it moves on while it waits. A sent
	// entry past its Until was left by a sender that died or lost the store
	// before it learned the answer: a retry is then refused, as when
	// Unanswered. An entry not yet sent expires with its short claim.
	Sent  bool      `json:"sent,omitempty"`
	Until time.Time `json:"until,omitzero"`
}

// Idempotency remembers idempotency keys, shared by all replicas.
type Idempotency interface {
	// Claim stores e under key if the key is free and reports true; otherwise it
	// returns the entry present and false.
	Claim(ctx context.Context, key string, e IdempotencyEntry, ttl time.Duration) (IdempotencyEntry, bool, error)
	// Complete replaces the entry of a claimed key (with its request id).
	Complete(ctx context.Context, key string, e IdempotencyEntry, ttl time.Duration) error
	// Drop frees key: the submit it stood for failed, so a retry may try again.
	Drop(ctx context.Context, key string) error
}
