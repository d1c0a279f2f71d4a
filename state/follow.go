package state

import (
	"context"
	"errors"
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
	sent  bool
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
func (f *Follower) First(rec *Record) bool {
	if f.pos.Epoch != 0 && rec.Epoch != f.pos.Epoch || rec.Seq > f.pos.Seq {
		f.advance(rec)
		return true
	}
	return false
}

// Next returns the record to send for rec, delivered live, or nil when rec
// says nothing new. A record of the watcher's epoch is sent when its seq is
// greater. One of another epoch is either a late record of an incarnation
// already replaced, or the first news of a new one: the store tells which, and
// the new incarnation is sent as it is stored now (perhaps later than rec).
func (f *Follower) Next(ctx context.Context, rec *Record) *Record {
	if rec.Epoch == f.pos.Epoch || f.pos.Epoch == 0 && !f.sent {
		if rec.Seq <= f.pos.Seq {
			return nil
		}
		f.advance(rec)
		return rec
	}
	cur, err := f.store.Get(ctx, rec.RequestID)
	switch {
	case err == nil && cur.Epoch == f.pos.Epoch:
		// rec belongs to a lost incarnation; the watcher's is current.
		if cur.Seq > f.pos.Seq {
			f.advance(cur)
			return cur
		}
		return nil
	case err == nil:
		f.advance(cur)
		return cur
	case errors.Is(err, ErrNotFound):
		// Lost again since rec was published: the record created next is
		// published too.
		return nil
	default:
		// The store cannot say: epochs are chosen from the clock, so the
		// later one is the better guess.
		if rec.Epoch > f.pos.Epoch {
			f.advance(rec)
			return rec
		}
		return nil
	}
}

func (f *Follower) advance(rec *Record) {
	f.pos, f.sent = rec.Position(), true
}
