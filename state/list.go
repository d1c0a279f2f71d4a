package state

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// Lister is a Store that lists one tenant's requests, newest first, from
// indexes it keeps in the same atomic step as each save: a listing on any
// replica sees every record saved before it, and nothing of a record that
// expired.
type Lister interface {
	List(ctx context.Context, q ListQuery) (ListPage, error)
}

// ListQuery selects requests.
type ListQuery struct {
	// Owner is the tenant whose requests are listed ("" for a gateway
	// without tenants).
	Owner string
	// DeploymentID, when set, lists that deployment's requests only.
	DeploymentID string
	// States, when set, lists requests in one of these states only.
	States []runcomfy.State
	// From and To bound the creation time: From <= created < To; zero is
	// unbounded.
	From, To time.Time
	// After continues a listing after the last request of a page; zero
	// starts at the newest.
	After ListCursor
	// Limit bounds the page (at least 1).
	Limit int
}

// ListCursor is a position in a listing: the creation time (Unix ms) and id
// of the last request of a page. Requests are ordered by creation time to
// the millisecond, then by id, both descending, so a position stays valid
// while new requests arrive (they come before it).
type ListCursor struct {
	CreatedMs int64
	ID        string
}

// IsZero reports whether c is the start of a listing.
func (c ListCursor) IsZero() bool { return c.ID == "" }

// ListPage is one page of a listing.
type ListPage struct {
	Records []*Record
	// Next continues the listing; zero when there is no more.
	Next ListCursor
}

// ListStates are the states an index keeps apart: every state a record
// can be in.
var ListStates = []runcomfy.State{
	runcomfy.StateQueued, runcomfy.StateRunning, runcomfy.StateSucceeded,
	runcomfy.StateFailed, runcomfy.StateCancelled, runcomfy.StateUnknown,
}

// CreatedMs is r's place in listings: its creation time in Unix ms, which
// does not change once set.
func (r *Record) CreatedMs() int64 { return r.CreatedAt.UnixMilli() }

// Cursor is the position just after r.
func (r *Record) Cursor() ListCursor { return ListCursor{CreatedMs: r.CreatedMs(), ID: r.RequestID} }

// Before reports whether the position (ms, id) comes after c in a listing
// (older, or as old with a smaller id): whether a request there is still to
// be listed.
func (c ListCursor) Before(ms int64, id string) bool {
	if c.IsZero() {
		return true
	}
	return ms < c.CreatedMs || ms == c.CreatedMs && id < c.ID
}

// Matches reports whether r belongs in q's listing (the cursor and the
// limit aside): its owner, deployment, state and creation time.
func (q ListQuery) Matches(r *Record) bool {
	if r.Owner != q.Owner || (q.DeploymentID != "" && r.DeploymentID != q.DeploymentID) {
		return false
	}
	if len(q.States) > 0 && !slices.Contains(q.States, listState(r.State)) {
		return false
	}
	return (q.From.IsZero() || !r.CreatedAt.Before(q.From)) && (q.To.IsZero() || r.CreatedAt.Before(q.To))
}

// listState is the index a state is kept in: one this version does not know
// is unknown.
func listState(s runcomfy.State) runcomfy.State {
	if slices.Contains(ListStates, s) {
		return s
	}
	return runcomfy.StateUnknown
}

// ListState is the index state of s, for stores.
func ListState(s runcomfy.State) runcomfy.State { return listState(s) }

// SortNewestFirst orders records as listings do.
func SortNewestFirst(recs []*Record) {
	slices.SortFunc(recs, func(a, b *Record) int {
		if c := cmp.Compare(b.CreatedMs(), a.CreatedMs()); c != 0 {
			return c
		}
		return cmp.Compare(b.RequestID, a.RequestID)
	})
}
