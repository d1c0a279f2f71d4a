package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/runcomfy"
)

// ReconcilerConfig holds the reconciler's dependencies and settings.
type ReconcilerConfig struct {
	Schedule Schedule
	Tracker  *Tracker
	Upstream Upstream
	// Watching reports whether this replica has watchers of a request, which
	// makes it worth polling sooner; may be nil.
	Watching func(requestID string) bool
	// Watched lists the requests this replica's watchers follow (Hub.Watched):
	// any whose record is lost is rebuilt from RunComfy, so that its watchers
	// get its states and its end. May be nil.
	Watched func() []WatchedRequest
	// Interval is the base poll interval, default DefaultPollInterval.
	Interval time.Duration
	// MaxInterval caps the back-off for requests that stay unchanged (long
	// queues); default 8 × Interval.
	MaxInterval time.Duration
	// Concurrency bounds the polls in flight toward RunComfy; default 8.
	Concurrency int
	// Retention: requests older than this are dropped, not polled; default
	// DefaultRetention.
	Retention time.Duration
	// Canceller cancels requests on RunComfy whose deadline passed (see
	// Record.Deadline); without it deadlines are not kept.
	Canceller Canceller
	// Owner names this replica in leases; required.
	Owner  string
	Logger *slog.Logger
	Now    func() time.Time
}

// Reconciler polls RunComfy for unfinished requests that have had no update for
// a while (a callback was lost, late, or can never come) and feeds what it learns
// through Tracker.Apply, like any callback. Replicas share the schedule; a lease
// per request keeps two from polling the same request at once.
type Reconciler struct {
	cfg     ReconcilerConfig
	polls   atomic.Int64
	rebuilt atomic.Int64
	lost    atomic.Int64
	expired atomic.Int64

	mu         sync.Mutex
	pauseUntil time.Time // set by a 429: the whole poller waits
	// missing holds, by request, when this replica's polls first found that
	// RunComfy no longer knows it (goneUpstream).
	missing map[string]time.Time
	// retries holds, by request, the lost records this replica failed to
	// make again: since when, and when to try next (rebuild).
	retries map[string]retry
}

// ErrorTypeUpstreamLost is the error type of a request that RunComfy no
// longer knows (it deletes requests after about 7 days): the request ends
// FAILED with it, so that its watchers end instead of waiting forever.
const ErrorTypeUpstreamLost = "upstream_lost"

// NewReconciler checks its dependencies and fills defaults.
func NewReconciler(cfg ReconcilerConfig) (*Reconciler, error) {
	if cfg.Schedule == nil || cfg.Tracker == nil || cfg.Upstream == nil || cfg.Logger == nil || cfg.Owner == "" {
		return nil, errors.New("state: reconciler needs schedule, tracker, upstream, logger and owner")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultPollInterval
	}
	if cfg.MaxInterval < cfg.Interval {
		cfg.MaxInterval = 8 * cfg.Interval
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Watching == nil {
		cfg.Watching = func(string) bool { return false }
	}
	if cfg.Watched == nil {
		cfg.Watched = func() []WatchedRequest { return nil }
	}
	return &Reconciler{cfg: cfg, missing: map[string]time.Time{}, retries: map[string]retry{}}, nil
}

// Watched brings a watched request's next poll forward to half an interval from
// now, so a watcher whose callbacks were lost waits less. Best effort.
func (r *Reconciler) Watched(ctx context.Context, requestID string) {
	_ = r.cfg.Schedule.Expedite(ctx, requestID, r.cfg.Now().Add(r.cfg.Interval/2))
}

// Polls counts status polls made since start.
func (r *Reconciler) Polls() int64 { return r.polls.Load() }

// Rebuilt counts lost records this replica made again from RunComfy.
func (r *Reconciler) Rebuilt() int64 { return r.rebuilt.Load() }

// Expired counts requests this replica cancelled at a deadline.
func (r *Reconciler) Expired() int64 { return r.expired.Load() }

// Canceller is what the reconciler cancels with; *runcomfy.Client
// provides it.
type Canceller interface {
	Cancel(ctx context.Context, deploymentID, requestID string) (*runcomfy.CancelResponse, error)
}

// LostUpstream counts requests this replica ended because RunComfy no longer
// knew them.
func (r *Reconciler) LostUpstream() int64 { return r.lost.Load() }

// leaseTTL outlasts one poll (status, result, apply) with room to spare; a
// replica that dies holding it is replaced once it expires.
func (r *Reconciler) leaseTTL() time.Duration { return max(2*r.cfg.Interval, 5*time.Second) }

// Run polls due requests until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	tick := time.NewTicker(max(r.cfg.Interval/4, 20*time.Millisecond))
	defer tick.Stop()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		inFlight = make(map[string]bool) // requests this replica polls now
	)
	// freed wakes the loop when a poll ends, so a free slot does not wait for
	// the next tick.
	freed := make(chan struct{}, 1)
	// Watched requests are checked for lost records at the pace they are
	// polled, by one goroutine at a time.
	keepTick := time.NewTicker(max(r.cfg.Interval/2, 20*time.Millisecond))
	defer keepTick.Stop()
	var keeping atomic.Bool
	// A loss of the store's data is looked for every second (one read), so
	// that the records it took are put back before callbacks and polls make
	// them again without what only this replica remembers.
	lossTick := time.NewTicker(lossCheckInterval)
	defer lossTick.Stop()
	var restoring atomic.Bool
	lookForLoss := func() {
		if restoring.CompareAndSwap(false, true) {
			wg.Go(func() {
				defer restoring.Store(false)
				r.restoreLost(ctx)
			})
		}
	}
	defer wg.Wait()
	// At once, too: a loss shows only against what the replica read before
	// it, and Redis may lose its data within a replica's first second.
	lookForLoss()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			r.releaseHeld(ctx)
			return nil
		case <-lossTick.C:
			lookForLoss()
			continue
		case <-keepTick.C:
			if keeping.CompareAndSwap(false, true) {
				wg.Go(func() {
					defer keeping.Store(false)
					r.keep(ctx)
				})
			}
			continue
		case <-tick.C:
		case <-freed:
		}
		if wait := r.paused(); wait > 0 {
			continue
		}
		// Another replica may have been told to slow down: RunComfy limits the
		// account, not the replica.
		if until, err := r.cfg.Schedule.PausedUntil(ctx); err == nil && until.After(r.cfg.Now()) {
			r.pauseLocal(until)
			continue
		}
		mu.Lock()
		busy := maps.Clone(inFlight)
		mu.Unlock()
		free := r.cfg.Concurrency - len(busy)
		if free <= 0 {
			continue
		}
		ids := r.claim(ctx, free, busy)
		mu.Lock()
		for _, id := range ids {
			inFlight[id] = true
		}
		mu.Unlock()
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.pollLeased(ctx, id)
				mu.Lock()
				delete(inFlight, id)
				mu.Unlock()
				select {
				case freed <- struct{}{}:
				default:
				}
			}()
		}
	}
}

// claim takes the leases of up to n due requests, skipping those this replica
// polls already, and returns those it may poll now.
//
// A lease alone does not make a poll right: an id read from the schedule goes
// stale as soon as the poll that another replica was making of it ends, since
// that poll reschedules the request and then releases its lease. The lease
// taken just after would poll the request a second time. So once the leases are
// held, the schedule is read again, and only the requests still due are kept:
// a poll reschedules before it releases, so a request polled meanwhile is no
// longer due in that second read.
func (r *Reconciler) claim(ctx context.Context, n int, skip map[string]bool) []string {
	// Ask for more than n: requests in flight here or on other replicas stay
	// due until their polls end, and would otherwise take every place.
	want := 4*r.cfg.Concurrency + len(skip)
	ids, err := r.cfg.Schedule.Due(ctx, r.cfg.Now(), want)
	if err != nil {
		if ctx.Err() == nil {
			r.cfg.Logger.Warn("reading the poll schedule failed", "error", err)
		}
		return nil
	}
	var leased []string
	for _, id := range ids {
		if len(leased) == n {
			break
		}
		if skip[id] {
			continue
		}
		ok, err := r.cfg.Schedule.Lease(ctx, id, r.cfg.Owner, r.leaseTTL())
		if err == nil && ok {
			leased = append(leased, id)
		}
		// Not ok: another replica polls it. An error: the backend is down;
		// next tick.
	}
	if len(leased) == 0 {
		return nil
	}
	still, err := r.cfg.Schedule.Due(ctx, r.cfg.Now(), want)
	claimed := leased[:0]
	for _, id := range leased {
		if err == nil && slices.Contains(still, id) {
			claimed = append(claimed, id)
		} else {
			r.release(ctx, id)
		}
	}
	return claimed
}

// release gives up a lease on a context of its own: it must go even when ctx
// ended mid-poll (shutdown), or a successor waits for its expiry.
func (r *Reconciler) release(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	_ = r.cfg.Schedule.Release(rctx, id, r.cfg.Owner)
	cancel()
}

func (r *Reconciler) paused() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pauseUntil.Sub(r.cfg.Now())
}

// pauseFor is how long a 429 pauses polling: RunComfy's Retry-After (the
// poll interval without one), at most MaxInterval, the longest an unchanged
// request waits between polls anyway. A longer pause (an hour, asked by a
// proxy or by mistake) would hold every watch without callbacks that long;
// one poll after MaxInterval costs RunComfy one more 429 at most.
func (r *Reconciler) pauseFor(err error) time.Duration {
	var apiErr *runcomfy.APIError
	if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
		return min(apiErr.RetryAfter, r.cfg.MaxInterval)
	}
	return r.cfg.Interval
}

// pause stops all polling for d, on every replica: RunComfy asked the whole
// account to slow down.
func (r *Reconciler) pause(ctx context.Context, d time.Duration) {
	until := r.cfg.Now().Add(d)
	r.pauseLocal(until)
	if err := r.cfg.Schedule.Pause(ctx, until); err != nil {
		r.cfg.Logger.Warn("sharing the polling pause failed", "error", err)
	}
}

func (r *Reconciler) pauseLocal(until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if until.After(r.pauseUntil) {
		r.pauseUntil = until
	}
}

// next is the due time after a poll that found nothing new: the interval doubles
// with the request's age in steps of the interval, up to MaxInterval, with ±20%
// jitter so that requests submitted together do not stay in lockstep; a watched
// request is polled at half the interval.
func (r *Reconciler) next(rec *Record, now time.Time) time.Time {
	d := r.cfg.Interval
	if age := now.Sub(rec.UpdatedAt); age > 0 {
		for step := r.cfg.Interval; step < age && d < r.cfg.MaxInterval; step *= 2 {
			d *= 2
		}
	}
	d = min(d, r.cfg.MaxInterval)
	if r.cfg.Watching(rec.RequestID) {
		d = min(d, r.cfg.Interval/2)
	}
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
	due := now.Add(d + jitter)
	if at, kind := rec.Deadline(); kind != "" && at.After(now) && at.Before(due) && r.cfg.Canceller != nil && !rec.Cancelling {
		// A deadline ahead is kept to the tick, not to the back-off; one
		// that passed and failed to cancel is tried again at this pace.
		due = at
	}
	return due
}

// expire cancels on RunComfy a request whose deadline (kind) passed, and
// records it CANCELLED with kind as its error type. The caller holds the
// request's lease, and the request was still due in the schedule once it
// did (claim): one replica cancels it, once. The deadline is recorded
// first (Record.Expired), so that RunComfy's own report of the
// cancellation, which may come before the cancel's answer, ends the request
// with the same error; a cancel that fails is tried again at the next
// poll. A request RunComfy says has finished (not cancellable) is polled
// instead, so its real end is recorded.
func (r *Reconciler) expire(ctx context.Context, rec *Record, kind string, now time.Time) error {
	if rec.Expired == "" {
		cur, _, err := r.cfg.Tracker.Apply(ctx, Update{
			RequestID: rec.RequestID, DeploymentID: rec.DeploymentID, Source: SourceCancel, Owner: rec.Owner,
			State: rec.State, Expired: kind,
		})
		if err != nil {
			return r.failed(ctx, rec, fmt.Errorf("record the deadline %s: %w", kind, err))
		}
		// The request may have moved on meanwhile (started, ended): its
		// deadline is then another one, or none.
		if cur == nil || cur.Terminal() {
			return r.cfg.Schedule.Forget(ctx, rec.RequestID)
		}
		if at, k := cur.Deadline(); k != kind || now.Before(at) {
			return r.cfg.Schedule.SetDue(ctx, rec.RequestID, r.next(cur, now))
		}
		rec = cur
	}
	res, err := r.cfg.Canceller.Cancel(ctx, rec.DeploymentID, rec.RequestID)
	if err != nil {
		return r.failed(ctx, rec, fmt.Errorf("cancel at %s: %w", kind, err))
	}
	// RunComfy cancels a queued job at once and a running one later, and
	// says "cancelled" for both: the state is read back, as a caller's
	// cancel does, and recorded. A cancellation it reports ends the request
	// with the deadline's error (Record.Expired), now or when it comes.
	r.polls.Add(1)
	after, _, err := r.cfg.Tracker.Refresh(ctx, r.cfg.Upstream, rec.DeploymentID, rec.RequestID, SourcePoll, "")
	if err == nil && (after == nil || !after.Terminal()) {
		// Taken, not yet done (or not cancellable, not yet ended): the
		// request is polled until RunComfy ends it, with no second cancel.
		st := rec.State
		if after != nil {
			st = after.State
		}
		after, _, err = r.cfg.Tracker.Apply(ctx, Update{
			RequestID: rec.RequestID, DeploymentID: rec.DeploymentID, Source: SourceCancel, Owner: rec.Owner,
			State: st, Cancelling: true,
		})
	}
	if err != nil {
		// The cancel was answered: only the record of it failed. The next
		// poll reads the state again (and cancels again, which RunComfy
		// answers as before).
		return r.failed(ctx, rec, fmt.Errorf("record the cancel at %s: %w", kind, err))
	}
	r.cfg.Logger.Info("a request passed its deadline; cancel sent", "request_id", rec.RequestID, "deadline", kind, "outcome", res.Raw)
	if after != nil && after.Terminal() {
		if after.Error != nil && after.Error.Type == kind {
			r.expired.Add(1)
		}
		return r.cfg.Schedule.Forget(ctx, rec.RequestID)
	}
	r.expired.Add(1)
	return r.cfg.Schedule.SetDue(ctx, rec.RequestID, now.Add(r.cfg.Interval))
}

// pollLeased polls one request whose lease claim took, and releases it.
func (r *Reconciler) pollLeased(ctx context.Context, id string) {
	defer r.release(ctx, id)
	if r.paused() > 0 {
		return // a poll that ended meanwhile was rate limited
	}
	// A poll must end while its lease holds, or another replica polls the
	// same request at the same time: the upstream calls are cut at three
	// quarters of the lease, whatever the client's own timeout.
	pctx, cancel := context.WithTimeout(ctx, r.leaseTTL()*3/4)
	defer cancel()
	if err := r.poll(pctx, id); err != nil && ctx.Err() == nil {
		r.cfg.Logger.Warn("poll failed", "request_id", id, "error", err)
	}
}

func (r *Reconciler) poll(ctx context.Context, id string) error {
	now := r.cfg.Now()
	rec, err := r.cfg.Tracker.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		w, ok := r.watched(id)
		if !ok {
			w, ok = r.scheduled(ctx, id, now)
		}
		if ok {
			// Lost (evicted) while watched here: rebuilt, not forgotten.
			// Until that succeeds the request stays scheduled, at the pace
			// of a failing poll.
			done, err := r.rebuild(ctx, w)
			if !done {
				if serr := r.cfg.Schedule.SetDue(ctx, id, r.retryAt(id, now)); serr != nil {
					err = errors.Join(err, serr)
				}
			}
			return err
		}
		r.found(id)
		return r.cfg.Schedule.Forget(ctx, id) // expired: nothing left to track
	}
	if err != nil {
		return err
	}
	if rec.Terminal() || now.Sub(rec.CreatedAt) > r.cfg.Retention {
		r.found(id)
		return r.cfg.Schedule.Forget(ctx, id)
	}
	if at, kind := rec.Deadline(); kind != "" && !now.Before(at) && r.cfg.Canceller != nil && !rec.Cancelling {
		return r.expire(ctx, rec, kind, now)
	}
	r.polls.Add(1)
	after, _, err := r.cfg.Tracker.Refresh(ctx, r.cfg.Upstream, rec.DeploymentID, id, SourcePoll, "")
	if errors.Is(err, runcomfy.ErrNotFound) {
		if ended, gerr := r.goneUpstream(ctx, rec, now); ended || gerr != nil {
			return gerr
		}
	}
	if err != nil {
		return r.failed(ctx, rec, err)
	}
	r.found(id)
	switch {
	case after != nil && after.Terminal():
		return r.cfg.Schedule.Forget(ctx, id)
	case after != nil && after.Seq > rec.Seq:
		return nil // Apply rescheduled it a full interval on
	default:
		return r.cfg.Schedule.SetDue(ctx, id, r.next(rec, now))
	}
}

// goneUpstream ends a request RunComfy has answered "not found" for, at
// polls of this replica at least one interval apart (a single answer may be
// a glitch, or a request too fresh to be visible): it is recorded FAILED with
// ErrorTypeUpstreamLost, which its watchers receive as their last event.
// ended is false while the first answer is still too recent.
func (r *Reconciler) goneUpstream(ctx context.Context, rec *Record, now time.Time) (ended bool, err error) {
	r.mu.Lock()
	first, seen := r.missing[rec.RequestID]
	if !seen {
		// An entry is settled by the request's next poll, at most
		// MaxInterval on; one older than several of those belongs to a
		// request no longer polled here (expired, finished elsewhere).
		for id, at := range r.missing {
			if now.Sub(at) > 4*r.cfg.MaxInterval {
				delete(r.missing, id)
			}
		}
		r.missing[rec.RequestID] = now
	}
	r.mu.Unlock()
	if !seen || now.Sub(first) < r.cfg.Interval {
		return false, nil
	}
	_, outcome, err := r.cfg.Tracker.Apply(ctx, Update{
		RequestID: rec.RequestID, DeploymentID: rec.DeploymentID, Source: SourcePoll, Owner: rec.Owner,
		State:      runcomfy.StateFailed,
		Error:      &runcomfy.JobError{Type: ErrorTypeUpstreamLost, Message: "RunComfy no longer knows this request (it keeps requests for about 7 days)"},
		FinishedAt: now,
	})
	if err != nil {
		return false, fmt.Errorf("record request %s as lost upstream: %w", rec.RequestID, err)
	}
	r.found(rec.RequestID)
	if outcome == Applied {
		// Otherwise the request had ended meanwhile (or is another
		// tenant's): nothing was ended here.
		r.lost.Add(1)
		r.cfg.Logger.Warn("RunComfy no longer knows a request; it ends failed", "request_id", rec.RequestID, "since", first)
	}
	return true, r.cfg.Schedule.Forget(ctx, rec.RequestID)
}

// scheduled returns the description the schedule keeps of id, when it keeps
// one and the request is younger than the retention (an older one expired, as
// it should have).
func (r *Reconciler) scheduled(ctx context.Context, id string, now time.Time) (WatchedRequest, bool) {
	sd, ok := r.cfg.Schedule.(ScheduleDescriber)
	if !ok {
		return WatchedRequest{}, false
	}
	sr, found, err := sd.Scheduled(ctx, id)
	if err != nil || !found || sr.CreatedAt.IsZero() || now.Sub(sr.CreatedAt) > r.cfg.Retention {
		return WatchedRequest{}, false
	}
	return WatchedRequest{RequestID: id, DeploymentID: sr.DeploymentID, Owner: sr.Owner, OwnerAttached: sr.OwnerAttached,
		Webhooks: sr.Webhooks, MaxQueue: sr.MaxQueue, MaxRun: sr.MaxRun}, true
}

// watched returns the description of id if this replica's watchers follow it.
func (r *Reconciler) watched(id string) (WatchedRequest, bool) {
	for _, w := range r.cfg.Watched() {
		if w.RequestID == id {
			return w, true
		}
	}
	return WatchedRequest{}, false
}

// retry is a lost record this replica failed to make again.
type retry struct{ first, next time.Time }

// retryAt records a failed attempt to make id again at now and returns when
// to try next: the pace of a failing poll, backing off from the first
// failure as for a request that stays unchanged.
func (r *Reconciler) retryAt(id string, now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.retries[id]
	if !ok {
		rt.first = now
		for other, o := range r.retries {
			// Settled by the next attempt, at most MaxInterval on; older
			// ones belong to requests no longer watched here.
			if now.Sub(o.next) > 4*r.cfg.MaxInterval {
				delete(r.retries, other)
			}
		}
	}
	rt.next = r.next(&Record{RequestID: id, UpdatedAt: rt.first}, now)
	r.retries[id] = rt
	return rt.next
}

// retryDue reports whether a lost record may be tried again at now.
func (r *Reconciler) retryDue(id string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.retries[id]
	return !ok || !now.Before(rt.next)
}

// lossCheckInterval is how often the reconciler asks the store whether it
// lost its data.
const lossCheckInterval = time.Second

// restoreLost puts back the records this replica remembers once the store
// reports it lost its data (Tracker.RestoreLost).
func (r *Reconciler) restoreLost(ctx context.Context) {
	n, err := r.cfg.Tracker.RestoreLost(ctx)
	if n > 0 {
		r.rebuilt.Add(int64(n))
		r.cfg.Logger.Warn("the state backend lost its data; restored the records this replica remembered", "restored", n)
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, ErrUnavailable) {
		r.cfg.Logger.Warn("restoring lost records failed", "error", err)
	}
	// Then the updates the store was down for (Tracker.Defer).
	n, err = r.cfg.Tracker.RecordDeferred(ctx)
	if n > 0 {
		r.cfg.Logger.Info("recorded requests the state backend was unavailable for", "recorded", n)
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, ErrUnavailable) {
		r.cfg.Logger.Warn("recording deferred requests failed", "error", err)
	}
}

// releaseAtStop bounds how long a stopping replica spends queueing the
// webhook events its last restore held back.
const releaseAtStop = 2 * time.Second

// releaseHeld queues, as the replica stops, the webhook events of the
// records its last restore put back that are still held back
// (Tracker.ReleaseHeld): no one else would.
func (r *Reconciler) releaseHeld(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseAtStop)
	defer cancel()
	if err := r.cfg.Tracker.ReleaseHeld(ctx); err != nil {
		r.cfg.Logger.Warn("queueing the webhook events of restored records failed", "error", err)
	}
}

// keep rebuilds the lost records of the requests this replica's watchers
// follow. A record is lost when Redis restarted empty, failed over to a
// replica that had not received it, or evicted it: no callback may ever come
// for it again, and nothing else would poll it. Rebuilds run at most
// Concurrency at a time, as polls do, and not while polling is paused.
func (r *Reconciler) keep(ctx context.Context) {
	if r.paused() > 0 {
		return
	}
	if until, err := r.cfg.Schedule.PausedUntil(ctx); err != nil || until.After(r.cfg.Now()) {
		return
	}
	watched := r.cfg.Watched()
	if len(watched) == 0 {
		return
	}
	ids := make([]string, len(watched))
	for i, w := range watched {
		ids[i] = w.RequestID
	}
	missing, err := r.cfg.Tracker.Missing(ctx, ids)
	if err != nil {
		return // the backend is down: nothing to learn until it is back
	}
	byID := make(map[string]WatchedRequest, len(watched))
	for _, w := range watched {
		byID[w.RequestID] = w
	}
	var g errgroup.Group
	g.SetLimit(r.cfg.Concurrency)
	for _, id := range missing {
		w := byID[id]
		if !r.retryDue(id, r.cfg.Now()) {
			continue
		}
		g.Go(func() error {
			ok, err := r.cfg.Schedule.Lease(ctx, w.RequestID, r.cfg.Owner, r.leaseTTL())
			if err != nil || !ok {
				return nil // another replica rebuilds or polls it
			}
			defer r.release(ctx, w.RequestID)
			pctx, cancel := context.WithTimeout(ctx, r.leaseTTL()*3/4)
			defer cancel()
			done, err := r.rebuild(pctx, w)
			if !done {
				r.retryAt(w.RequestID, r.cfg.Now())
			}
			if err != nil && ctx.Err() == nil {
				r.cfg.Logger.Warn("rebuilding a lost record failed", "request_id", w.RequestID, "error", err)
			}
			return nil
		})
	}
	_ = g.Wait() // every attempt logs its own failure
}

// rebuild records a lost request again from RunComfy, under a new epoch,
// owned by whom its watchers saw own it; the caller holds its lease. The new
// record is scheduled and published like any, so every replica's watchers get
// it. RunComfy not knowing the request ends it as goneUpstream does. done is
// false while the request is neither recorded again nor ended.
func (r *Reconciler) rebuild(ctx context.Context, w WatchedRequest) (done bool, err error) {
	if _, err := r.cfg.Tracker.Get(ctx, w.RequestID); !errors.Is(err, ErrNotFound) {
		return err == nil, err // rebuilt meanwhile (nil), or the backend is down
	}
	now := r.cfg.Now()
	r.polls.Add(1)
	source := SourceRestore
	if w.Owner == "" || w.OwnerAttached {
		source = SourceRebuild
	}
	if len(w.Webhooks) == 0 && w.MaxQueue == 0 && w.MaxRun == 0 {
		// Watchers know the request's owner, not its webhooks and
		// deadlines: the schedule's description of it keeps them.
		if sr, ok := r.scheduled(ctx, w.RequestID, now); ok && sr.Owner == w.Owner && sr.OwnerAttached == w.OwnerAttached {
			w.Webhooks, w.MaxQueue, w.MaxRun = sr.Webhooks, sr.MaxQueue, sr.MaxRun
		}
	}
	rec, _, err := r.cfg.Tracker.rebuild(ctx, r.cfg.Upstream, w, source)
	if errors.Is(err, runcomfy.ErrNotFound) {
		stub := &Record{RequestID: w.RequestID, DeploymentID: w.DeploymentID, Owner: w.Owner}
		return r.goneUpstream(ctx, stub, now)
	}
	if err != nil {
		if errors.Is(err, runcomfy.ErrRateLimited) {
			r.pause(ctx, r.pauseFor(err))
		}
		return false, fmt.Errorf("rebuild request %s: %w", w.RequestID, err)
	}
	r.found(w.RequestID)
	r.mu.Lock()
	delete(r.retries, w.RequestID)
	r.mu.Unlock()
	if rec != nil {
		r.rebuilt.Add(1)
		r.cfg.Logger.Warn("a request's record was lost; rebuilt from RunComfy",
			"request_id", w.RequestID, "status", rec.State, "epoch", rec.Epoch)
	}
	return true, nil
}

// found forgets a request's "not found" answers: RunComfy knows it, or it has
// ended.
func (r *Reconciler) found(id string) {
	r.mu.Lock()
	delete(r.missing, id)
	r.mu.Unlock()
}

// failed reschedules a request whose poll failed; a 429 pauses every poll.
func (r *Reconciler) failed(ctx context.Context, rec *Record, err error) error {
	if errors.Is(err, runcomfy.ErrRateLimited) {
		wait := r.pauseFor(err)
		r.pause(ctx, wait)
		r.cfg.Logger.Warn("RunComfy rate limits polling; pausing", "for", wait)
	}
	if serr := r.cfg.Schedule.SetDue(ctx, rec.RequestID, r.next(rec, r.cfg.Now())); serr != nil {
		return errors.Join(err, serr)
	}
	return fmt.Errorf("poll request %s: %w", rec.RequestID, err)
}
