package state

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Getter reads a record; every Store is one.
type Getter interface {
	Get(ctx context.Context, requestID string) (*Record, error)
}

// Follower decides, for one watcher, which records to send: each state once,
// in order, and across a change of epoch (the record was lost and created
// again, its seqs starting over) the current full state as a new first event.
// It holds the position of the last record sent. Not safe for concurrent use.
type Follower struct {
	store Getter
	pos   Position
	// Of the last record sent (sent false before the first): what tells a
	// later write at a seen seq from a late copy, and a step forward from
	// one back. Not the record itself, which an idle watcher would keep
	// alive for as long as it waits.
	sent        bool
	lastUpdated time.Time
	lastRank    int
}

// NewFollower returns a Follower for a watcher that has seen everything up to
// after. after.Epoch 0 means the watcher does not know the epoch: seqs alone
// are compared until a record has been sent.
func NewFollower(store Getter, after Position) *Follower {
	return &Follower{store: store, pos: after}
}

// Position is the position of the last record sent (the resume point before
// any).
func (f *Follower) Position() Position { return f.pos }

// First reports whether the snapshot rec, read after the watcher subscribed,
// is to be sent: it is newer than the resume point, or of another epoch than
// the one the watcher resumes from.
//
// A snapshot below the resume point means the record was made again (a
// resume point without an epoch, the form before epochs) or went back within
// its epoch (a failover to a replica that lagged), or the point is made up.
// The watcher then follows the record from where it stands, so that its next
// states reach it; the snapshot itself is sent when it is final (the watch
// must not end without it) or of an epoch the resume point did not name.
func (f *Follower) First(rec *Record) bool {
	switch {
	case f.pos.Epoch != 0 && rec.Epoch != f.pos.Epoch, rec.Seq > f.pos.Seq:
		f.advance(rec)
		return true
	case rec.Seq < f.pos.Seq:
		if rec.Terminal() || f.pos.Epoch == 0 && rec.Epoch != 0 {
			f.advance(rec)
			return true
		}
		f.pos = rec.Position()
	}
	return false
}

// ErrFollowUnsure: a record of another epoch arrived and the store could not
// say which epoch is current. The watch should end unavailable, so that its
// client resumes from its position and is sent the current state then.
var ErrFollowUnsure = errors.New("state: cannot tell which incarnation of the record is current")

// Next returns the record to send for rec, delivered live, or nil when rec
// says nothing new.
//
// A record of the watcher's epoch is sent when its seq is greater. One whose
// seq is not greater but which was written after the last one sent means the
// store went back within the epoch (a failover to a replica that lagged): the
// store says where the record now stands, the watcher follows from there, and
// is sent the stored state if it is further on than the last one sent.
//
// One of another epoch is either a late record of an incarnation already
// replaced, or the first news of a new one: the store tells which, and the new
// incarnation is sent as it is stored now (perhaps later than rec).
func (f *Follower) Next(ctx context.Context, rec *Record) (*Record, error) {
	sameEpoch := rec.Epoch == f.pos.Epoch || (f.pos.Epoch == 0 && !f.sent)
	switch {
	case sameEpoch && rec.Seq > f.pos.Seq:
		f.advance(rec)
		return rec, nil
	case sameEpoch && (!f.sent || !rec.UpdatedAt.After(f.lastUpdated)):
		return nil, nil // an older record delivered late (a resync's snapshot)
	}
	cur, err := f.store.Get(ctx, rec.RequestID)
	switch {
	case errors.Is(err, ErrNotFound):
		// Lost again since rec was published: the record made next is
		// published too.
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrFollowUnsure, err)
	case cur.Epoch != f.pos.Epoch:
		f.advance(cur)
		return cur, nil
	case cur.Seq > f.pos.Seq:
		// rec belongs to a lost incarnation, and the watcher's own went on.
		f.advance(cur)
		return cur, nil
	case f.sent && (cur.Seq < f.pos.Seq || !cur.UpdatedAt.Equal(f.lastUpdated)):
		// Gone back within the epoch: follow the record from where it is.
		// Its state is sent only if it says more than the last one sent.
		if Rank(cur.State) > f.lastRank {
			f.advance(cur)
			return cur, nil
		}
		f.pos = cur.Position()
		return nil, nil
	}
	return nil, nil // rec belongs to a lost incarnation; nothing new in the watcher's
}

func (f *Follower) advance(rec *Record) {
	f.pos, f.sent, f.lastUpdated, f.lastRank = rec.Position(), true, rec.UpdatedAt, Rank(rec.State)
}
