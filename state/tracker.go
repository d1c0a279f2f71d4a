package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/runcomfy"
)

// DefaultRetention is how long records live: RunComfy deletes results after 7
// days, after which there is nothing left to track.
const DefaultRetention = 7 * 24 * time.Hour

// DefaultPollInterval is how long an unfinished request may go without any
// update before it is polled upstream.
const DefaultPollInterval = 10 * time.Second

// maxSaveAttempts bounds the read-merge-save loop under contention. Each retry
// follows another writer's success, so running out means a storm of updates to one
// request, not a livelock.
const maxSaveAttempts = 32

// ResultFetcher reads a request's result upstream; *runcomfy.Client provides it.
type ResultFetcher interface {
	Result(ctx context.Context, deploymentID, requestID string) (*runcomfy.ResultResponse, error)
}

// errOutputsNotReady: upstream reported success but its result does not say so
// yet. Returned so that the caller (a callback, a poll) retries later instead of
// publishing a success without outputs.
var errOutputsNotReady = errors.New("state: success reported but the result is not available yet")

// Tracker is the one writer of records.
type Tracker struct {
	store     Store
	schedule  Schedule
	poll      time.Duration
	results   ResultFetcher
	retention time.Duration
	now       func() time.Time
	counts    [Foreign + 1]atomic.Int64
	epoch     atomic.Int64 // the last epoch newEpoch gave
	recent    *recentRecords
	copies    WorkQueue
	// restoring: the store lost its data and RestoreLost has not yet put
	// back everything it could (the store failed on the way), so the next
	// call goes on although the loss was reported only once.
	restoring atomic.Bool
	deferred  deferred
	held      heldEvents
}

// TrackerConfig holds the Tracker's dependencies.
type TrackerConfig struct {
	Store   Store
	Results ResultFetcher
	// Schedule, when set, keeps every unfinished request due for a poll
	// PollInterval after its last change, and forgets finished ones.
	Schedule     Schedule
	PollInterval time.Duration
	// Copies, when set, is the queue of outputs to copy to object storage:
	// a request that succeeds is recorded with its copy pending and queued
	// before the record is saved, so that no success is left uncopied (a
	// save that then fails leaves a queued request the copier finds with
	// nothing to do).
	Copies WorkQueue
	// Retention is each record's time to live after its last write; default
	// DefaultRetention.
	Retention time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// NewTracker checks its dependencies and returns a Tracker.
func NewTracker(cfg TrackerConfig) (*Tracker, error) {
	if cfg.Store == nil {
		return nil, errors.New("state: store is required")
	}
	if cfg.Results == nil {
		return nil, errors.New("state: result fetcher is required")
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Schedule != nil && cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	return &Tracker{store: cfg.Store, schedule: cfg.Schedule, poll: cfg.PollInterval, results: cfg.Results, retention: cfg.Retention, now: cfg.Now,
		recent: newRecentRecords(recentRecordsSize), copies: cfg.Copies}, nil
}

// Get returns the current record of a request, or ErrNotFound.
func (t *Tracker) Get(ctx context.Context, requestID string) (*Record, error) {
	return t.store.Get(ctx, requestID)
}

// Lookup is Get for a caller asking about its request. A request this
// replica remembers, within its retention, whose record a store that can
// lose its data no longer holds was lost with it (Redis restarted empty): it
// is put back first, as RestoreLost does within a second, rather than
// answered as unknown meanwhile to its owner, who would take the job for
// gone. A record made again since, without the owner this replica knows by
// proof, gets that owner back. (The reconciler reads with Get: a watched record it finds missing it
// records again from RunComfy.)
func (t *Tracker) Lookup(ctx context.Context, requestID string) (*Record, error) {
	rec, err := t.store.Get(ctx, requestID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if _, ok := t.store.(LossDetector); !ok {
		return rec, err
	}
	mem := t.recent.get(requestID)
	if mem == nil || t.now().Sub(mem.UpdatedAt) >= t.retention {
		return rec, err
	}
	if err == nil {
		// Found: put back only the owner this replica knows by proof, where
		// the record made again after the loss has none or one an attach
		// claimed meanwhile (catchUp), as the owner's next callback would.
		if owner, attached := provenOwner(rec, mem); rec.Epoch == mem.Epoch || (owner == rec.Owner && attached == rec.OwnerAttached) {
			return rec, nil
		}
	}
	if _, rerr := t.restoreOne(ctx, mem); rerr != nil {
		return nil, fmt.Errorf("put back lost request %s: %w", requestID, rerr)
	}
	return t.store.Get(ctx, requestID)
}

// Missing returns those of ids that have no record. It asks the store in one
// call when the store can (MissingChecker), else one Get each.
func (t *Tracker) Missing(ctx context.Context, ids []string) ([]string, error) {
	if mc, ok := t.store.(MissingChecker); ok {
		return mc.Missing(ctx, ids)
	}
	var missing []string
	for _, id := range ids {
		_, err := t.store.Get(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			missing = append(missing, id)
		case err != nil:
			return nil, err
		}
	}
	return missing, nil
}

// Apply merges u into the request's record. It returns the record as it stands
// afterwards (nil when there is none and u was not applied) and what it did. An
// update that reports success without outputs has them fetched from upstream
// first, so a success is never published without its outputs. An error means
// nothing was stored or published: the caller must not acknowledge u.
func (t *Tracker) Apply(ctx context.Context, u Update) (*Record, Outcome, error) {
	if u.RequestID == "" {
		return nil, 0, errors.New("state: update without request id")
	}
	// cur starts as the last record this replica wrote for the request (none
	// when it wrote none): merging with it and saving is one round trip to the
	// store when it is still current, the usual case. Save's seq check makes
	// a stale guess cost one retry, never a wrong write; and an outcome other
	// than Applied is only returned once cur has been read from the store.
	cur, read := t.recent.get(u.RequestID), false
	fetched := false
	// lost is the newest epoch seen of this request: a record created anew
	// (its predecessor was lost) takes a later one.
	var lost int64
	// refused: a save was refused (another writer's came first). The
	// schedule is written with a save whether the save takes or not, so a
	// refused one may have moved the request's poll: it is set again from
	// the stored record when nothing else is saved.
	refused := false
	// mem is what this replica remembers of the request: when the store
	// turns out to have lost it, it is put back first (restore), so that
	// what an update does not carry (webhooks, owner, deadlines) survives.
	mem, restored := cur, false
	// caught: the stored record was brought up to what this replica knew
	// (caughtUp), or found to need nothing.
	caught := false
	for range maxSaveAttempts {
		if cur != nil {
			lost = max(lost, cur.Epoch)
		}
		if read && cur != nil && !caught {
			var err error
			if caught, err = t.caughtUp(ctx, &cur); err != nil {
				if !errors.Is(err, ErrConflict) {
					return nil, 0, err
				}
				// Another writer came first: the record is read again.
				refused = true
				if err := t.read(ctx, u.RequestID, &cur); err != nil {
					return nil, 0, err
				}
				continue
			}
		}
		needFetch := u.State == runcomfy.StateSucceeded && len(u.Outputs) == 0 && !fetched
		if !read && needFetch {
			// Fetching costs an upstream call: decide it on the stored record.
			if err := t.read(ctx, u.RequestID, &cur); err != nil {
				return nil, 0, err
			}
			read = true
		}
		if cur == nil && read && keepsMore(mem) && !restored && t.now().Sub(mem.UpdatedAt) < t.retention {
			restored = true
			// An update that moves the request on goes into the record
			// put back, whose first state it then is: put back as it was
			// remembered, an earlier state would be announced again (to
			// the webhooks) after the one this update brings.
			back := mem
			if advances(mem, &u) {
				if needFetch {
					if err := t.fetchOutputs(ctx, mem, &u); err != nil {
						return nil, 0, err
					}
					fetched = true
				}
				if next, outcome := merge(mem, &u, t.now()); outcome == Applied {
					back = next
				}
			}
			// A final state RunComfy reports now is behind nothing any
			// replica remembers: its event goes with the restore. Held in
			// this replica's memory, it would be lost with the replica if
			// it stopped within the settle.
			announce := back != mem && back.Terminal()
			switch err := t.restoreWith(ctx, back, announce); {
			case err == nil && back != mem:
				t.counts[Applied].Add(1)
				return t.recent.get(u.RequestID), Applied, nil
			case err == nil:
				cur = t.recent.get(u.RequestID)
			case errors.Is(err, ErrConflict):
				// Another replica put it back first; a refused final
				// restore took it off the schedule.
				refused = true
				if err := t.read(ctx, u.RequestID, &cur); err != nil {
					return nil, 0, err
				}
			default:
				return nil, 0, err
			}
			continue
		}
		if needFetch && advances(cur, &u) {
			if err := t.fetchOutputs(ctx, cur, &u); err != nil {
				return nil, 0, err
			}
			fetched = true
		}
		now := t.now()
		next, outcome := merge(cur, &u, now)
		if outcome != Applied {
			if !read {
				if err := t.read(ctx, u.RequestID, &cur); err != nil {
					return nil, 0, err
				}
				read = true
				continue
			}
			t.counts[outcome].Add(1)
			if outcome == Duplicate && u.reads() {
				cur = t.touch(ctx, cur, now)
			}
			if refused {
				t.reschedule(ctx, cur)
			}
			return cur, outcome, nil
		}
		if next.Seq == 1 {
			next.Epoch = t.newEpoch(now, lost)
		}
		if err := t.queueCopy(ctx, cur, next, now); err != nil {
			return nil, 0, err
		}
		err := t.save(ctx, next, EventFor(cur, next))
		var conflict *ConflictError
		if errors.Is(err, ErrConflict) {
			refused = true
		}
		switch {
		case errors.As(err, &conflict):
			cur, read = conflict.Current, true
			if cur != nil {
				t.recent.put(cur)
			}
			continue
		case errors.Is(err, ErrConflict):
			if err := t.read(ctx, u.RequestID, &cur); err != nil {
				return nil, 0, err
			}
			read = true
			continue
		case err != nil:
			return nil, 0, err
		}
		t.counts[Applied].Add(1)
		t.recent.put(next)
		return next, Applied, nil
	}
	return nil, 0, fmt.Errorf("save request %s: %d concurrent updates: %w", u.RequestID, maxSaveAttempts, ErrConflict)
}

// caughtUp brings *cur, the request's record as the store holds it, up to
// what this replica knew of the request (catchUp), when *cur is a record made
// again after a loss (another epoch than the record kept for the request)
// that lacks the webhooks or deadlines, or stands at an earlier state: a
// record evicted while the store went on, and made again by a replica that
// did not remember it, from a poll or a callback. It reports whether *cur
// needs nothing more; *cur is the caught-up record when it was saved.
func (t *Tracker) caughtUp(ctx context.Context, cur **Record) (bool, error) {
	stored := *cur
	k := t.recent.kept(stored.RequestID)
	if k == nil || k.Epoch == stored.Epoch || t.now().Sub(k.UpdatedAt) >= t.retention ||
		(!lacks(stored, k) && Rank(k.State) <= Rank(stored.State)) {
		return true, nil
	}
	saved, err := t.catchUp(ctx, stored, k)
	if err != nil {
		return false, err
	}
	if saved {
		*cur = t.recent.get(stored.RequestID)
	}
	return true, nil
}

// LossDetector is a Store that can tell that it lost its data (Redis
// restarted without persistence, or failed over to a replica that had
// nothing): the records, the webhook deliveries and the copies queued with
// them are gone, and no callback may ever come for the requests that had
// finished.
type LossDetector interface {
	Lost(ctx context.Context) (bool, error)
}

// RestoreLost puts back, once the store reports it lost its data, the records
// this replica remembers (the last it wrote, or read to apply an update, of
// its most recent requests) that the store no longer holds, and returns how
// many records it saved (put back, or brought up to date). Each comes back
// under a new epoch, as it last stood, with its webhook events queued again
// once the restore settled (saveHeld, releaseHeld; the events of its
// state: at least once, under new webhook-ids) and its outputs' copy queued
// again; an unfinished one is polled as usual. A
// record found in the store instead (put back by another replica, or made
// again from what RunComfy said by a callback or a poll on a replica that did
// not remember it) is brought up to what this replica remembers (catchUp):
// given back its webhooks and deadlines, and moved on to a further state.
func (t *Tracker) RestoreLost(ctx context.Context) (int, error) {
	ld, ok := t.store.(LossDetector)
	if !ok {
		return 0, nil
	}
	// The events held back by an earlier pass go first: the store is
	// answering if a loss can be looked for. A held event that failed for
	// another reason keeps no loss waiting: its error is returned with the
	// look's.
	heldErr := t.releaseHeld(ctx, false)
	if errors.Is(heldErr, ErrUnavailable) || ctx.Err() != nil {
		return 0, heldErr
	}
	lost, err := ld.Lost(ctx)
	if err != nil || (!lost && !t.restoring.Load()) {
		return 0, errors.Join(heldErr, err)
	}
	t.restoring.Store(true)
	// The records go back restoreConcurrency at a time: a replica remembers
	// thousands, and callbacks that come meanwhile would make them again
	// without what only the memory holds.
	var (
		mu       sync.Mutex
		restored int
		errs     []error
		down     atomic.Bool
		downErr  error // the first unavailable store's, under mu
		g        errgroup.Group
	)
	g.SetLimit(restoreConcurrency)
	for _, mem := range t.recent.all() {
		if t.now().Sub(mem.UpdatedAt) >= t.retention {
			continue // expired, not lost
		}
		if down.Load() {
			break // the store is down again: the next call goes on
		}
		g.Go(func() error {
			done, err := t.restoreOne(ctx, mem)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrUnavailable):
				if !down.Swap(true) {
					downErr = err
				}
				errs = append(errs, err)
			case err != nil:
				errs = append(errs, err)
			case done:
				restored++
			}
			return nil
		})
	}
	_ = g.Wait() // the errors are in errs
	if len(errs) == 0 {
		t.restoring.Store(false)
	}
	if down.Load() {
		return restored, errors.Join(heldErr, downErr)
	}
	return restored, errors.Join(append(errs, heldErr)...)
}

// restoreConcurrency is how many records RestoreLost puts back at once.
const restoreConcurrency = 16

// restoreOne restores mem, or brings the record found in its place up to
// what this replica remembers (catchUp), trying again when a concurrent save
// comes first; done reports a save.
func (t *Tracker) restoreOne(ctx context.Context, mem *Record) (done bool, err error) {
	// refused: a save of ours was refused. With a store that writes the
	// schedule with the record, a refused final save took the request off
	// the schedule; the record that came first stays, so when it is not
	// final it is made due again, or nothing would poll it to its end.
	refused := false
	for range maxSaveAttempts {
		stored, err := t.store.Get(ctx, mem.RequestID)
		switch {
		case errors.Is(err, ErrNotFound):
			err = t.restoreWith(ctx, t.withKept(mem), false)
		case err != nil:
			return false, err
		default:
			var saved bool
			if saved, err = t.catchUp(ctx, stored, mem); err == nil && !saved {
				if refused {
					t.reschedule(ctx, stored)
				}
				return false, nil
			}
		}
		if !errors.Is(err, ErrConflict) {
			return err == nil, err
		}
		refused = true
	}
	return false, fmt.Errorf("restore request %s: %d concurrent updates: %w", mem.RequestID, maxSaveAttempts, ErrConflict)
}

// keepsMore reports whether rec holds what no update from RunComfy brings
// back (webhooks, deadlines): a lost record that does is put back before an
// update is applied; one that does not is made again from the update alone.
func keepsMore(rec *Record) bool {
	return rec != nil && (len(rec.Webhooks) > 0 || rec.MaxQueue > 0 || rec.MaxRun > 0)
}

// withKept is rec with the webhooks and deadlines of the record kept for its
// request (recentRecords.kept), where rec lacks them (giveBack).
func (t *Tracker) withKept(rec *Record) *Record {
	k := t.recent.kept(rec.RequestID)
	if !lacks(rec, k) {
		return rec
	}
	c := rec.Clone()
	giveBack(c, k)
	return c
}

// lacks reports whether rec lacks what kept holds that no update from
// RunComfy brings back: its webhooks (and with them its owner), or its
// deadlines. A record never loses them but when it is made again after a
// loss, from a callback or a poll, by a replica that did not remember them.
func lacks(rec, kept *Record) bool {
	if kept == nil {
		return false
	}
	return (len(rec.Webhooks) == 0 && len(kept.Webhooks) > 0) ||
		(rec.MaxQueue == 0 && rec.MaxRun == 0 && (kept.MaxQueue > 0 || kept.MaxRun > 0))
}

// giveBack gives next, a record of kept's request, the webhooks and owner
// and the deadlines of kept, each where next has none.
func giveBack(next, kept *Record) {
	if len(next.Webhooks) == 0 && len(kept.Webhooks) > 0 {
		next.Webhooks = slices.Clone(kept.Webhooks)
		next.Owner, next.OwnerAttached = provenOwner(next, kept)
	}
	if next.MaxQueue == 0 && next.MaxRun == 0 {
		next.MaxQueue, next.MaxRun = kept.MaxQueue, kept.MaxRun
	}
}

// provenOwner is the owner rec should have, given mem, what this replica
// remembers of the request: mem's when rec has none, or only one an attach
// claimed while mem's was proven (as merge lets a proven owner take over).
func provenOwner(rec, mem *Record) (string, bool) {
	if rec.Owner == "" || (rec.OwnerAttached && !mem.OwnerAttached && mem.Owner != "") {
		return mem.Owner, mem.OwnerAttached
	}
	return rec.Owner, rec.OwnerAttached
}

// catchUp brings stored, the record of mem's request that the store holds
// since it lost its data, up to what this replica remembers of the request,
// in one save at stored's next seq, and reports whether it saved. stored may
// lack two things:
//   - the webhooks (and with them the owner) and the deadlines, when a
//     replica that did not remember the request made it again from a
//     callback or a poll: a record never loses them otherwise, and without
//     its deadlines a request would run on past them, billed;
//   - the state, when what this replica remembers is further along: another
//     replica put back an older state first, or a late callback made the
//     record again. Left so, the request would read as gone back until a
//     poll of RunComfy moved it on again.
//
// The state moves as an update saying what the replica remembers would move
// it (merge), so a success brings its outputs, a final state leaves the poll
// schedule and has its copy queued (unless its outputs were stored, as with
// restore). A state of the same rank is left as it is, and so is a final one:
// nothing changes a final state.
func (t *Tracker) catchUp(ctx context.Context, stored, mem *Record) (bool, error) {
	now := t.now()
	kept := t.recent.kept(mem.RequestID)
	// The furthest state remembered: the record with webhooks and deadlines
	// may be ahead of mem when this replica has read the record made again
	// since.
	known := mem
	if kept != nil && Rank(kept.State) > Rank(known.State) {
		known = kept
	}
	next := stored
	if Rank(known.State) > Rank(stored.State) {
		u := rememberedUpdate(known)
		if u.State == runcomfy.StateSucceeded && len(u.Outputs) == 0 {
			if err := t.fetchOutputs(ctx, stored, &u); err != nil {
				return false, err
			}
		}
		if moved, outcome := merge(stored, &u, now); outcome == Applied {
			next = moved
			// RunComfy confirmed this state when it confirmed known's,
			// not now (a restore keeps it too).
			next.SyncedAt = known.SyncedAt
			if next.State == runcomfy.StateSucceeded && known.Storage != nil && known.Storage.State != StoragePending {
				next.Storage = known.Storage.Clone() // the object store lost nothing
			}
		}
	}
	if lacks(stored, kept) {
		if next == stored {
			next = stored.Clone()
			next.Seq++
			next.UpdatedAt = now
		}
		giveBack(next, kept)
	}
	// The owner this replica knows by proof (its submit came through here)
	// where the record made again has none, or one an attach only claimed.
	if owner, attached := provenOwner(next, mem); owner != next.Owner || attached != next.OwnerAttached {
		if next == stored {
			next = stored.Clone()
			next.Seq++
			next.UpdatedAt = now
		}
		next.Owner, next.OwnerAttached = owner, attached
	}
	if next == stored {
		return false, nil
	}
	if err := t.queueCopy(ctx, stored, next, now); err != nil {
		return false, err
	}
	// The event of next's whole state, as a restore's: its endpoints heard
	// at most of stored's (of nothing, when stored had no webhooks).
	if err := t.saveHeld(ctx, next); err != nil {
		return false, err
	}
	return true, nil
}

// rememberedUpdate is the update that says what rec says of its request's
// progress, for catchUp to merge onto the stored record. It names no owner,
// webhooks, deadlines or storage: merge takes those only from their own
// sources, and catchUp gives the webhooks, owner and storage itself.
func rememberedUpdate(rec *Record) Update {
	return Update{
		RequestID: rec.RequestID, DeploymentID: rec.DeploymentID, Source: SourceRestore,
		State: rec.State, UpstreamStatus: rec.UpstreamStatus, QueuePosition: rec.QueuePosition, InstanceID: rec.InstanceID,
		Outputs: rec.Outputs, OutputURLs: rec.OutputURLs, Error: rec.Error,
		CreatedAt: rec.CreatedAt, StartedAt: rec.StartedAt, FinishedAt: rec.FinishedAt,
		Expired: rec.Expired, Cancelling: rec.Cancelling,
	}
}

// restoreWith saves rec again as the first record of a new epoch, with the
// event of its state at once when announce is set, and held back (saveHeld)
// when not.
func (t *Tracker) restoreWith(ctx context.Context, rec *Record, announce bool) error {
	now := t.now()
	next := rec.Clone()
	next.Seq = 1
	next.Epoch = t.newEpoch(now, rec.Epoch)
	next.UpdatedAt = now
	if next.State == runcomfy.StateSucceeded && (next.Storage == nil || next.Storage.State == StoragePending) {
		// The copy's job went with the data: queued again. Outputs already
		// stored stay so: the object store lost nothing.
		next.Storage = nil
		if err := t.queueCopy(ctx, nil, next, now); err != nil {
			return err
		}
	}
	if announce {
		if err := t.save(ctx, next, stateEvent(next)); err != nil {
			return err
		}
		t.recent.put(next)
		return nil
	}
	return t.saveHeld(ctx, next)
}

// saveHeld saves next, a record put back or brought up to what this replica
// remembers after a loss, with the event of its whole state for endpoints
// that may have missed it. When the store can lose its data (LossDetector)
// the event is held back (heldEvents): every replica then puts back what it
// remembers, and what one remembers may be behind what another does, or
// behind RunComfy.
func (t *Tracker) saveHeld(ctx context.Context, next *Record) error {
	_, holds := t.store.(LossDetector)
	var ev *Event
	if !holds {
		ev = stateEvent(next)
	}
	if err := t.save(ctx, next, ev); err != nil {
		return err
	}
	t.recent.put(next)
	if holds {
		t.held.hold(next, t.now().Add(RestoreSettle))
	}
	return nil
}

// stateEvent is the event of everything rec's state is, for endpoints that
// may have missed it: it announces the state itself (a final one by its own
// type), with the storage as it stands in its body, rather than the storage
// alone.
func stateEvent(rec *Record) *Event {
	bare := rec.Clone()
	bare.Storage = nil
	ev := EventFor(nil, bare)
	if ev != nil {
		ev.Record = rec.Clone()
	}
	return ev
}

// queueCopy marks the copy of a request that succeeds with next pending
// and queues it, before next is saved.
func (t *Tracker) queueCopy(ctx context.Context, cur, next *Record, now time.Time) error {
	if t.copies == nil || next.State != runcomfy.StateSucceeded || next.Storage != nil ||
		(cur != nil && cur.State == runcomfy.StateSucceeded) {
		return nil
	}
	next.Storage = &Storage{State: StoragePending}
	if err := t.copies.Add(ctx, next.RequestID, now); err != nil {
		return fmt.Errorf("queue the copy of request %s's outputs: %w", next.RequestID, err)
	}
	return nil
}

// newEpoch is the epoch of a record created now: the clock in microseconds,
// later than lost (the newest epoch this tracker saw of the request) and than
// any epoch it gave before, so that a record created again differs from the
// one it replaces even when the clock has not moved.
func (t *Tracker) newEpoch(now time.Time, lost int64) int64 {
	e := max(now.UnixMicro(), lost+1)
	for {
		prev := t.epoch.Load()
		next := max(e, prev+1)
		if t.epoch.CompareAndSwap(prev, next) {
			return next
		}
	}
}

// touchAfter is how stale a record's SyncedAt may grow before an
// observation that changes nothing is written to it: a storm of duplicate
// callbacks costs one write a second, not one each.
const touchAfter = time.Second

// touch records that upstream confirmed cur's state at now (a duplicate
// update) and returns cur as it then stands. Best effort: a failed touch
// leaves the record as it was, only older-looking.
func (t *Tracker) touch(ctx context.Context, cur *Record, now time.Time) *Record {
	tc, ok := t.store.(Toucher)
	if !ok || cur == nil || now.Sub(cur.SyncedAt) < touchAfter {
		return cur
	}
	if err := tc.Touch(ctx, cur.RequestID, cur.Position(), now); err != nil {
		return cur
	}
	next := cur.Clone()
	next.SyncedAt = now
	t.recent.put(next)
	return next
}

// read sets *cur to the stored record of requestID (nil when there is none).
func (t *Tracker) read(ctx context.Context, requestID string, cur **Record) error {
	rec, err := t.store.Get(ctx, requestID)
	if errors.Is(err, ErrNotFound) {
		rec, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("read request %s: %w", requestID, err)
	}
	if rec != nil {
		t.recent.put(rec)
	}
	*cur = rec
	return nil
}

// due is when an unfinished request is next due for a poll: a poll interval
// after its last change, or its deadline when that comes first (kept by the
// reconciler), unless a cancel is already under way.
func (t *Tracker) due(rec *Record) time.Time {
	due := rec.UpdatedAt.Add(t.poll)
	if at, kind := rec.Deadline(); kind != "" && at.Before(due) && !rec.Cancelling {
		due = at
	}
	return due
}

// reschedule sets the poll of cur, the stored record, again (best effort:
// a request polled at the wrong time is still polled).
func (t *Tracker) reschedule(ctx context.Context, cur *Record) {
	if t.schedule == nil || cur == nil || cur.Terminal() {
		return
	}
	_ = t.schedule.SetDue(ctx, cur.RequestID, t.due(cur))
}

// save stores next and keeps the poll schedule in step: an unfinished request
// is due a poll interval after its last change, a finished one leaves the
// schedule. With a store that is its own schedule (ScheduledSaver), both go
// in one round trip. A change that makes a webhook event (ev) queues it in
// the same save (OutboxSaver).
func (t *Tracker) save(ctx context.Context, next *Record, ev *Event) error {
	id := next.RequestID
	var due time.Time
	if t.schedule != nil && !next.Terminal() {
		due = t.due(next)
	}
	forget := t.schedule != nil && next.Terminal()
	// The event goes in the save itself: recorded and queued, or neither.
	os, queues := t.store.(OutboxSaver)
	if ev != nil && !queues {
		return fmt.Errorf("save request %s: the store cannot queue webhook events", id)
	}
	write := func(due time.Time, forget bool) error {
		if ev != nil {
			return os.SaveWithEvent(ctx, next, t.retention, due, forget, ev)
		}
		if ss, ok := t.store.(ScheduledSaver); ok && (!due.IsZero() || forget) {
			return ss.SaveScheduled(ctx, next, t.retention, due, forget)
		}
		return t.store.Save(ctx, next, t.retention)
	}
	if _, ok := t.store.(ScheduledSaver); ok && t.schedule != nil {
		// A refused final save has removed the request from the schedule; the
		// caller retries it with a final record again (nothing leaves a final
		// state), and a failing retry is answered with an error, so the
		// callback or poll behind it comes again.
		if err := write(due, forget); err != nil {
			return fmt.Errorf("save request %s: %w", id, err)
		}
		return nil
	}
	// Schedule before saving and forget after: a crash in between leaves a
	// request polled once too often, never one that is never polled.
	if !due.IsZero() {
		if err := t.schedule.SetDue(ctx, id, due); err != nil {
			return fmt.Errorf("schedule request %s: %w", id, err)
		}
	}
	if err := write(time.Time{}, false); err != nil {
		return fmt.Errorf("save request %s: %w", id, err)
	}
	if forget {
		// Best effort: a finished request left in the schedule is dropped
		// by the reconciler when it finds it finished.
		_ = t.schedule.Forget(ctx, id)
	}
	return nil
}

// fetchOutputs completes a success update from upstream /result.
func (t *Tracker) fetchOutputs(ctx context.Context, cur *Record, u *Update) error {
	dep := u.DeploymentID
	if dep == "" && cur != nil {
		dep = cur.DeploymentID
	}
	res, err := t.results.Result(ctx, dep, u.RequestID)
	if err != nil {
		return fmt.Errorf("fetch outputs of request %s: %w", u.RequestID, err)
	}
	if res.State != runcomfy.StateSucceeded {
		return fmt.Errorf("request %s: result says %q: %w", u.RequestID, res.Status, errOutputsNotReady)
	}
	u.Outputs, u.OutputURLs = res.Outputs, res.OutputURLs
	if u.CreatedAt.IsZero() {
		u.CreatedAt = res.CreatedAt
	}
	if u.StartedAt.IsZero() {
		u.StartedAt = res.StartedAt
	}
	if u.FinishedAt.IsZero() {
		u.FinishedAt = res.FinishedAt
	}
	if u.InstanceID == "" {
		u.InstanceID = res.InstanceID
	}
	return nil
}

// Stats counts Apply outcomes since start.
type Stats struct {
	Applied, Duplicate, Stale, Unknown, Foreign int64
}

// Stats returns the outcome counters.
func (t *Tracker) Stats() Stats {
	return Stats{
		Applied:   t.counts[Applied].Load(),
		Duplicate: t.counts[Duplicate].Load(),
		Stale:     t.counts[Stale].Load(),
		Unknown:   t.counts[Unknown].Load(),
		Foreign:   t.counts[Foreign].Load(),
	}
}

// UpdateFromResult turns an upstream result (a /result answer or a callback) into
// an Update.
func UpdateFromResult(deploymentID string, source Source, r *runcomfy.ResultResponse) Update {
	return Update{
		RequestID:      r.RequestID,
		DeploymentID:   deploymentID,
		Source:         source,
		State:          r.State,
		UpstreamStatus: r.Status,
		InstanceID:     r.InstanceID,
		Outputs:        r.Outputs,
		OutputURLs:     r.OutputURLs,
		Error:          r.Error,
		CreatedAt:      r.CreatedAt,
		StartedAt:      r.StartedAt,
		FinishedAt:     r.FinishedAt,
	}
}

// UpdateFromStatus turns an upstream /status answer into an Update.
func UpdateFromStatus(deploymentID string, source Source, s *runcomfy.StatusResponse) Update {
	return Update{
		RequestID:      s.RequestID,
		DeploymentID:   deploymentID,
		Source:         source,
		State:          s.State,
		UpstreamStatus: s.Status,
		QueuePosition:  s.QueuePosition,
		InstanceID:     s.InstanceID,
	}
}

// Upstream is what Refresh and the reconciler read from RunComfy;
// *runcomfy.Client provides it.
type Upstream interface {
	Status(ctx context.Context, deploymentID, requestID string) (*runcomfy.StatusResponse, error)
	Result(ctx context.Context, deploymentID, requestID string) (*runcomfy.ResultResponse, error)
}

// Refresh reads a request's state from RunComfy (its status, and its result once
// finished, since only the result carries outputs and errors) and applies it. A
// request the gateway did not know is recorded from then on (attached).
//
// It returns the record afterwards and the update it applied. When the upstream
// read fails, the update is nil and err is upstream's; when only recording
// failed, the update is set (the caller may still show what upstream said) and
// err says why.
//
// owner, when set, claims a request nobody owns yet (see Update.Owner).
func (t *Tracker) Refresh(ctx context.Context, up Upstream, deploymentID, requestID string, source Source, owner string) (*Record, *Update, error) {
	return t.refresh(ctx, up, WatchedRequest{RequestID: requestID, DeploymentID: deploymentID, Owner: owner}, source)
}

// rebuild is Refresh for a lost record of w, made again (source
// SourceRebuild or SourceRestore) with w's webhooks and deadlines when its
// owner is proven (SourceRestore): the schedule's description kept them.
func (t *Tracker) rebuild(ctx context.Context, up Upstream, w WatchedRequest, source Source) (*Record, *Update, error) {
	if source != SourceRestore {
		w.Webhooks, w.MaxQueue, w.MaxRun = nil, 0, 0
	}
	return t.refresh(ctx, up, w, source)
}

func (t *Tracker) refresh(ctx context.Context, up Upstream, w WatchedRequest, source Source) (*Record, *Update, error) {
	deploymentID, requestID := w.DeploymentID, w.RequestID
	st, err := up.Status(ctx, deploymentID, requestID)
	if err != nil {
		return nil, nil, fmt.Errorf("status of request %s: %w", requestID, err)
	}
	if st.RequestID == "" {
		st.RequestID = requestID
	}
	u := UpdateFromStatus(deploymentID, source, st)
	if !st.State.Terminal() && (source == SourceRebuild || source == SourceRestore || source == SourceAttach) {
		// A record about to be made from this read would otherwise date
		// the request from now: the result, unlike the status, says when
		// it was created and started. Best effort.
		if res, err := up.Result(ctx, deploymentID, requestID); err == nil {
			u.CreatedAt, u.StartedAt = res.CreatedAt, res.StartedAt
		}
	}
	if st.State.Terminal() {
		// Best effort: without the result the status alone is still applied.
		if res, err := up.Result(ctx, deploymentID, requestID); err == nil && res.State.Terminal() {
			if res.RequestID == "" {
				res.RequestID = requestID
			}
			u = UpdateFromResult(deploymentID, source, res)
		}
	}
	u.Owner = w.Owner
	u.Webhooks, u.MaxQueue, u.MaxRun = w.Webhooks, w.MaxQueue, w.MaxRun
	if u.State == runcomfy.StateUnknown {
		return nil, &u, nil
	}
	rec, _, err := t.Apply(ctx, u)
	if err != nil {
		return nil, &u, err
	}
	return rec, &u, nil
}
