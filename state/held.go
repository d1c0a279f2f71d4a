package state

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// RestoreSettle is how long RestoreLost holds back the webhook event of a
// record it put back. After a loss of all the data every replica puts back
// what it remembers, and one may remember less than another: a replica that
// only read the record while it was queued puts it back queued, and the
// replica that recorded it running moves it on (catchUp) moments later. Sent
// at once, the first replica's event would tell the endpoints of a state
// they had long left. Each replica looks for a loss every second (the
// reconciler), so after a few seconds every one has put back, or brought up
// to date, what it knew; the held event is then queued only if the record
// still stands where this replica put it (and, unfinished, once RunComfy
// confirmed it: releaseHeld).
const RestoreSettle = 3 * time.Second

// heldEvent is the state a record was put back in, when, and when its event
// is queued.
type heldEvent struct {
	epoch int64
	state runcomfy.State
	at    time.Time // the restore's UpdatedAt
	due   time.Time
}

// heldEvents are the held-back events of the records RestoreLost put back,
// by request.
type heldEvents struct {
	mu sync.Mutex
	m  map[string]heldEvent
}

// hold holds the event of rec, just put back, until due.
func (h *heldEvents) hold(rec *Record, due time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]heldEvent{}
	}
	h.m[rec.RequestID] = heldEvent{epoch: rec.Epoch, state: rec.State, at: rec.UpdatedAt, due: due}
}

// take removes and returns the events due at now, or all of them.
func (h *heldEvents) take(now time.Time, all bool) map[string]heldEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	if all {
		m := h.m
		h.m = nil
		return m
	}
	var due map[string]heldEvent
	for id, e := range h.m {
		if !now.Before(e.due) {
			if due == nil {
				due = map[string]heldEvent{}
			}
			due[id] = e
			delete(h.m, id)
		}
	}
	return due
}

// giveBack holds again the events take returned that could not be queued
// yet, unless a later restore of the same request holds its own.
func (h *heldEvents) giveBack(back map[string]heldEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, e := range back {
		if _, ok := h.m[id]; ok {
			continue
		}
		if h.m == nil {
			h.m = map[string]heldEvent{}
		}
		h.m[id] = e
	}
}

// ReleaseHeld queues now the events RestoreLost holds back, whether due or
// not, and drops those of unfinished records RunComfy has not confirmed
// since (releaseHeld): a replica that stops would otherwise take them with
// it.
func (t *Tracker) ReleaseHeld(ctx context.Context) error {
	return t.releaseHeld(ctx, true)
}

// releaseHeld queues the held events that are due (all of them, with all),
// each with a save of its record at the next seq, when the record still
// stands in the state it was put back in and, unless it is final, RunComfy
// confirmed that state since (a poll or a callback: SyncedAt after the
// restore). Every replica may remember less than the truth (the one that
// recorded the further state restarted since), and a poll of each restored
// unfinished request comes within a poll interval. A record that moved on
// had the event of its further state queued with the save that moved it;
// one put back again (another epoch) holds its own. An event whose record is
// not confirmed yet is held again, and so, when the store does not answer,
// is every event not queued yet. With all (a replica that stops), the events
// due or not are queued on the same terms, and those of unconfirmed records
// dropped: no one would confirm them later.
func (t *Tracker) releaseHeld(ctx context.Context, all bool) error {
	due := t.held.take(t.now(), all)
	var (
		errs  []error
		again = map[string]heldEvent{}
	)
	defer func() { t.held.giveBack(again) }()
	for id, e := range due {
		err := t.releaseOne(ctx, id, e, all)
		switch {
		case errors.Is(err, errUnconfirmed):
			// Looked at again a settle later, not at every look for a
			// loss: a replica may hold thousands.
			e.due = t.now().Add(RestoreSettle)
			again[id] = e
		case errors.Is(err, ErrUnavailable) || ctx.Err() != nil:
			maps.Copy(again, due)
			return errors.Join(append(errs, err)...)
		case err != nil:
			errs = append(errs, err)
		}
		delete(due, id)
	}
	return errors.Join(errs...)
}

// errUnconfirmed: the record of a held event has not been confirmed by
// RunComfy since it was put back.
var errUnconfirmed = errors.New("state: restored record not confirmed by RunComfy yet")

// releaseOne queues the held event e of request id (see releaseHeld).
func (t *Tracker) releaseOne(ctx context.Context, id string, e heldEvent, all bool) error {
	for range maxSaveAttempts {
		stored, err := t.store.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return nil // lost again, or expired: a later restore holds its own
		}
		if err != nil {
			return err
		}
		if stored.Epoch != e.epoch || stored.State != e.state {
			return nil
		}
		if !stored.Terminal() && !stored.SyncedAt.After(e.at) {
			if all {
				return nil // dropped: it may be a state the request has left
			}
			return errUnconfirmed
		}
		next := stored.Clone()
		next.Seq++
		next.UpdatedAt = t.now()
		err = t.save(ctx, next, stateEvent(next))
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		t.recent.put(next)
		return nil
	}
	return fmt.Errorf("queue the event of restored request %s: %d concurrent updates: %w", id, maxSaveAttempts, ErrConflict)
}
