package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

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
	cfg   ReconcilerConfig
	polls atomic.Int64

	mu         sync.Mutex
	pauseUntil time.Time // set by a 429: the whole poller waits
}

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
	return &Reconciler{cfg: cfg}, nil
}

// Watched brings a watched request's next poll forward to half an interval from
// now, so a watcher whose callbacks were lost waits less. Best effort.
func (r *Reconciler) Watched(ctx context.Context, requestID string) {
	_ = r.cfg.Schedule.Expedite(ctx, requestID, r.cfg.Now().Add(r.cfg.Interval/2))
}

// Polls counts status polls made since start.
func (r *Reconciler) Polls() int64 { return r.polls.Load() }

// leaseTTL outlasts one poll (status, result, apply) with room to spare; a
// replica that dies holding it is replaced once it expires.
func (r *Reconciler) leaseTTL() time.Duration { return max(2*r.cfg.Interval, 5*time.Second) }

// Run polls due requests until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	tick := time.NewTicker(max(r.cfg.Interval/4, 20*time.Millisecond))
	defer tick.Stop()
	sem := make(chan struct{}, r.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if wait := r.paused(); wait > 0 {
			continue
		}
		ids, err := r.cfg.Schedule.Due(ctx, r.cfg.Now(), 4*r.cfg.Concurrency)
		if err != nil {
			if ctx.Err() == nil {
				r.cfg.Logger.Warn("reading the poll schedule failed", "error", err)
			}
			continue
		}
		for _, id := range ids {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				r.pollOne(ctx, id)
			}()
		}
	}
}

func (r *Reconciler) paused() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pauseUntil.Sub(r.cfg.Now())
}

// pause stops all polling for d: RunComfy asked the whole account to slow down.
func (r *Reconciler) pause(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if until := r.cfg.Now().Add(d); until.After(r.pauseUntil) {
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
	return now.Add(d + jitter)
}

// pollOne polls one request under its lease.
func (r *Reconciler) pollOne(ctx context.Context, id string) {
	log := r.cfg.Logger.With("request_id", id)
	ok, err := r.cfg.Schedule.Lease(ctx, id, r.cfg.Owner, r.leaseTTL())
	if err != nil || !ok {
		return // another replica polls it, or the backend is down: next tick
	}
	defer func() {
		// The lease is released on a context of its own: it must go even when
		// ctx ended mid-poll (shutdown), or a successor waits for its expiry.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = r.cfg.Schedule.Release(rctx, id, r.cfg.Owner)
		cancel()
	}()
	if err := r.poll(ctx, id); err != nil && ctx.Err() == nil {
		log.Warn("poll failed", "error", err)
	}
}

func (r *Reconciler) poll(ctx context.Context, id string) error {
	now := r.cfg.Now()
	rec, err := r.cfg.Tracker.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return r.cfg.Schedule.Forget(ctx, id) // expired: nothing left to track
	}
	if err != nil {
		return err
	}
	if rec.Terminal() || now.Sub(rec.CreatedAt) > r.cfg.Retention {
		return r.cfg.Schedule.Forget(ctx, id)
	}
	r.polls.Add(1)
	after, _, err := r.cfg.Tracker.Refresh(ctx, r.cfg.Upstream, rec.DeploymentID, id, "poll")
	if err != nil {
		return r.failed(ctx, rec, err)
	}
	switch {
	case after != nil && after.Terminal():
		return r.cfg.Schedule.Forget(ctx, id)
	case after != nil && after.Seq > rec.Seq:
		return nil // Apply rescheduled it a full interval on
	default:
		return r.cfg.Schedule.SetDue(ctx, id, r.next(rec, now))
	}
}

// failed reschedules a request whose poll failed; a 429 pauses every poll.
func (r *Reconciler) failed(ctx context.Context, rec *Record, err error) error {
	var apiErr *runcomfy.APIError
	if errors.Is(err, runcomfy.ErrRateLimited) {
		wait := r.cfg.Interval
		if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
			wait = apiErr.RetryAfter
		}
		r.pause(wait)
		r.cfg.Logger.Warn("RunComfy rate limits polling; pausing", "for", wait)
	}
	if serr := r.cfg.Schedule.SetDue(ctx, rec.RequestID, r.next(rec, r.cfg.Now())); serr != nil {
		return errors.Join(err, serr)
	}
	return fmt.Errorf("poll request %s: %w", rec.RequestID, err)
}
