package hooks

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/state"
)

// Defaults of Config. The timeout of an attempt is DefaultTimeout, the
// guarded client's.
const (
	// DefaultRetryMin is the first retry's delay: long enough that a
	// receiver restarting is back, short enough that a blip costs little.
	DefaultRetryMin = 5 * time.Second
	// DefaultRetryMax caps the doubling delay, so a receiver that comes back
	// after a long outage is tried within the hour.
	DefaultRetryMax = time.Hour
	// DefaultHorizon is how long a delivery is retried before it fails: a
	// day covers a receiver down over a night or a weekend's on-call.
	DefaultHorizon = 24 * time.Hour
	// DefaultRetention is how long deliveries are kept for List: past the
	// horizon, so that a failed one can still be seen and redelivered.
	DefaultRetention = 72 * time.Hour
	// DefaultWorkers is how many requests one replica delivers at once.
	DefaultWorkers = 8
)

const (
	// userAgent names the sender, so a receiver's logs tell our deliveries
	// from other traffic.
	userAgent = "comfygate-webhooks"
	// takeBlock bounds one wait for new jobs, and so how long Run takes to
	// notice its context is done while waiting.
	takeBlock = time.Second
	// wakeBatch is how many due retries one WakeDue call moves.
	wakeBatch = 100
	// maxWakeBatches bounds the WakeDue calls of one maintenance round, so a
	// huge backlog cannot keep the loop from refreshing the gauges.
	maxWakeBatches = 100
	// maxErrorText bounds the error text kept with an attempt.
	maxErrorText = 200
	// finishTimeout bounds the bookkeeping (retry, release, done) done after a
	// job's work even when Run is being stopped, so a finished job is not
	// left to be redone.
	finishTimeout = time.Second
	// busyRecheck is how soon a request whose lease another replica holds is
	// looked at again. The holder reloads the events after each round, so
	// this matters only for an event that came just as it finished; a short
	// wait keeps that event from waiting a whole lease.
	busyRecheck = time.Second
)

// Config configures a Deliverer.
type Config struct {
	// Outbox is the durable queue of events and their deliveries.
	Outbox state.Outbox
	// Client sends the deliveries; it must be the guarded client
	// (NewGuardedClient), which refuses the gateway's own network.
	Client *http.Client
	// Secrets returns the tenant's active signing secrets; several while it
	// rotates, and every one signs.
	Secrets func(tenant string) []Secret
	// Render is the JSON body of an event.
	Render func(ev *state.Event) ([]byte, error)
	// Consumer is this replica's name in the deliverers' group; the name must
	// stay the same across restarts, so that the jobs a replica held when it
	// stopped are taken over as soon as they are idle.
	Consumer string
	// Timeout bounds one attempt; default DefaultTimeout.
	Timeout time.Duration
	// RetryMin is the first retry's delay, doubled with every attempt;
	// default DefaultRetryMin.
	RetryMin time.Duration
	// RetryMax caps the retry delay; default DefaultRetryMax.
	RetryMax time.Duration
	// Horizon: a delivery still failing this long after its first attempt
	// fails; default DefaultHorizon.
	Horizon time.Duration
	// Retention is how long deliveries are kept after their last write;
	// default DefaultRetention, and never less than Horizon.
	Retention time.Duration
	// Workers is how many requests are delivered at once; default
	// DefaultWorkers.
	Workers int
	// Logger receives a record per attempt; nil discards them.
	Logger *slog.Logger
	// Registry registers the metrics; nil leaves them unregistered.
	Registry prometheus.Registerer
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Deliverer sends the outbox's events to their endpoints: signed, in order per
// endpoint, retried with backoff until a horizon, with jobs shared among the
// replicas of the deliverers' group. A request is worked on by one deliverer
// at a time (the outbox lease), so an event is not sent twice at once and the
// order per endpoint holds across replicas.
type Deliverer struct {
	out       state.Outbox
	client    *http.Client
	secrets   func(string) []Secret
	render    func(*state.Event) ([]byte, error)
	consumer  string
	timeout   time.Duration
	retryMin  time.Duration
	retryMax  time.Duration
	horizon   time.Duration
	retention time.Duration
	// lease is how long a request's lease lasts and how idle a job must be
	// before another deliverer takes it over: three attempts' worth, so a
	// working deliverer that extends it before each attempt never loses it.
	lease   time.Duration
	workers int
	log     *slog.Logger
	now     func() time.Time
	m       *metrics

	mu sync.Mutex
	// running holds the requests a worker of this deliverer is processing.
	// The outbox lease cannot keep two of its own workers apart, since they
	// share the consumer name it is taken with.
	running map[string]*localRun
}

// localRun is a request a worker is processing; rerun asks it for one more
// round, for a job that came meanwhile.
type localRun struct {
	rerun bool
}

// New checks cfg, fills in its defaults and registers the metrics. It reports
// every problem of cfg at once.
func New(cfg Config) (*Deliverer, error) {
	var errs []error
	if cfg.Outbox == nil {
		errs = append(errs, errors.New("outbox is required"))
	}
	if cfg.Client == nil {
		errs = append(errs, errors.New("client is required (the guarded client)"))
	}
	if cfg.Secrets == nil {
		errs = append(errs, errors.New("secrets function is required"))
	}
	if cfg.Render == nil {
		errs = append(errs, errors.New("render function is required"))
	}
	if strings.TrimSpace(cfg.Consumer) == "" {
		errs = append(errs, errors.New("consumer name is required"))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"timeout", cfg.Timeout}, {"retry min", cfg.RetryMin}, {"retry max", cfg.RetryMax}, {"horizon", cfg.Horizon}, {"retention", cfg.Retention}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s is negative (%s)", f.name, f.v))
		}
	}
	if cfg.Workers < 0 {
		errs = append(errs, fmt.Errorf("workers is negative (%d)", cfg.Workers))
	}
	orDefault := func(v, def time.Duration) time.Duration {
		if v <= 0 {
			return def
		}
		return v
	}
	cfg.Timeout = orDefault(cfg.Timeout, DefaultTimeout)
	cfg.RetryMin = orDefault(cfg.RetryMin, DefaultRetryMin)
	cfg.RetryMax = orDefault(cfg.RetryMax, DefaultRetryMax)
	cfg.Horizon = orDefault(cfg.Horizon, DefaultHorizon)
	cfg.Retention = max(orDefault(cfg.Retention, DefaultRetention), cfg.Horizon)
	if cfg.RetryMin > cfg.RetryMax {
		errs = append(errs, fmt.Errorf("retry min (%s) is above retry max (%s)", cfg.RetryMin, cfg.RetryMax))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("hooks: invalid deliverer config: %w", errors.Join(errs...))
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	return &Deliverer{
		out: cfg.Outbox, client: cfg.Client, secrets: cfg.Secrets, render: cfg.Render, consumer: cfg.Consumer,
		timeout: cfg.Timeout, retryMin: cfg.RetryMin, retryMax: cfg.RetryMax, horizon: cfg.Horizon, retention: cfg.Retention,
		lease:   3*cfg.Timeout + time.Second,
		workers: cfg.Workers, log: cfg.Logger, now: cfg.Now, m: m,
		running: make(map[string]*localRun),
	}, nil
}

// Run delivers until ctx is done, then returns nil once every goroutine it
// started has stopped. Outbox errors are logged and retried: a Redis that is
// down delays deliveries and never stops Run. The jobs it took and did not
// finish (interrupted by the stop, or taken as it came) are handed back as
// it stops, for another deliverer to take at once; should that fail, they
// are taken over once idle.
func (d *Deliverer) Run(ctx context.Context) error {
	defer d.handBack(ctx)
	jobs := make(chan state.Job)
	free := newSlots(d.workers)
	g, ctx := errgroup.WithContext(ctx)
	for range d.workers {
		g.Go(func() error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case job := <-jobs:
					d.process(ctx, job)
					free.put(1)
				}
			}
		})
	}
	g.Go(func() error {
		d.fetchLoop(ctx, jobs, free)
		return nil
	})
	g.Go(func() error {
		d.maintain(ctx)
		return nil
	})
	return g.Wait()
}

// handBack gives back the jobs this deliverer took and did not finish, on a
// context of its own: ctx is done.
func (d *Deliverer) handBack(ctx context.Context) {
	hctx, cancel := finishContext(ctx)
	defer cancel()
	n, err := d.out.HandBack(hctx, d.consumer)
	if err != nil {
		d.log.Warn("webhook jobs may not have been handed back as the deliverer stops (a Redis that answers late may still run the hand back); any left are taken over once idle", "error", err)
	}
	if n > 0 {
		d.log.Info("webhook jobs handed back as the deliverer stops", "jobs", n)
	}
}

// slots counts idle workers, so that no more jobs are taken from the queue
// than can start now: a job taken and left waiting here would be invisible to
// the other replicas until it is idle long enough to be taken over.
type slots chan struct{}

func newSlots(n int) slots {
	s := make(slots, n)
	for range n {
		s <- struct{}{}
	}
	return s
}

// take waits for one idle worker, then counts those idle now, up to most; 0
// when ctx is done.
func (s slots) take(ctx context.Context, most int) int {
	select {
	case <-s:
	case <-ctx.Done():
		return 0
	}
	return 1 + s.tryTake(most-1)
}

// tryTake counts the workers idle now, up to most, without waiting.
func (s slots) tryTake(most int) int {
	n := 0
	for n < most {
		select {
		case <-s:
			n++
		default:
			return n
		}
	}
	return n
}

// put gives n slots back; never more than the workers, whatever a backend
// answered, so a miscount cannot block a worker.
func (s slots) put(n int) {
	for range n {
		select {
		case s <- struct{}{}:
		default:
			return
		}
	}
}

// feed hands jobs to the workers; false when ctx ended first.
func feed(ctx context.Context, jobs chan<- state.Job, got []state.Job) bool {
	for _, j := range got {
		select {
		case jobs <- j:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// errBackoff is the wait after an outbox error: short at first, so a blip
// costs little, growing so that an outage is not hammered.
type errBackoff struct {
	next    time.Duration
	failing bool
}

const (
	errWaitMin = 100 * time.Millisecond
	errWaitMax = 5 * time.Second
)

// failed logs err (the first of a series at Warn, the rest at Debug, so an
// outage does not flood the log) and returns how long to wait.
func (b *errBackoff) failed(log *slog.Logger, msg string, err error) time.Duration {
	if !b.failing {
		log.Warn(msg, "error", err)
	} else {
		log.Debug(msg, "error", err)
	}
	b.failing = true
	b.next = min(max(2*b.next, errWaitMin), errWaitMax)
	return b.next
}

// ok notes a success, logging the recovery after a series of errors.
func (b *errBackoff) ok(log *slog.Logger, msg string) {
	if b.failing {
		log.Info(msg)
	}
	b.failing, b.next = false, 0
}

// wait waits for d or for ctx; false when ctx ended first.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// fetchLoop hands jobs to the workers as they become idle: new ones, and
// every half lease first those of deliverers that died (or stopped in the
// middle) and left them not done for a lease. One loop does both, so the
// count of idle workers is not split between two takers.
func (d *Deliverer) fetchLoop(ctx context.Context, jobs chan<- state.Job, free slots) {
	var takeBo, reclaimBo errBackoff
	// Reclaimed first thing: the jobs this consumer held when it last
	// stopped are idle by now.
	var nextReclaim time.Time
	for {
		n := free.take(ctx, d.workers)
		if n == 0 {
			return
		}
		var got []state.Job
		var err error
		if !time.Now().Before(nextReclaim) {
			nextReclaim = time.Now().Add(d.lease / 2)
			got, err = d.out.Reclaim(ctx, d.consumer, d.lease, n)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				reclaimBo.failed(d.log, "webhook jobs: reclaim failed", err)
			default:
				reclaimBo.ok(d.log, "webhook jobs: reclaiming again")
				for _, j := range got {
					d.log.Info("webhook job taken over", "request_id", j.RequestID, "job", j.ID)
				}
			}
		}
		if len(got) == 0 {
			got, err = d.out.Take(ctx, d.consumer, n, takeBlock)
			if err != nil {
				free.put(n)
				if ctx.Err() != nil {
					return
				}
				if !wait(ctx, takeBo.failed(d.log, "webhook jobs: take failed", err)) {
					return
				}
				continue
			}
			takeBo.ok(d.log, "webhook jobs: taking again")
		}
		free.put(n - len(got))
		if !feed(ctx, jobs, got) {
			return
		}
	}
}

// maintain wakes the requests whose retry is due and refreshes the depth
// gauges.
func (d *Deliverer) maintain(ctx context.Context) {
	// A fifth of the first retry delay keeps retries close to their time;
	// the bounds keep the loop from spinning or dozing.
	tick := time.NewTicker(min(max(d.retryMin/5, 50*time.Millisecond), time.Second))
	defer tick.Stop()
	var wakeBo, depthBo errBackoff
	for {
		d.wakeDue(ctx, &wakeBo)
		if jobsN, retries, err := d.out.Depth(ctx); err != nil {
			if ctx.Err() == nil {
				depthBo.failed(d.log, "webhook outbox: depth failed", err)
			}
		} else {
			depthBo.ok(d.log, "webhook outbox: depth read again")
			d.m.depth.WithLabelValues("jobs").Set(float64(jobsN))
			d.m.depth.WithLabelValues("retries").Set(float64(retries))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// wakeDue queues the requests whose retry time has come, a batch at a time
// while batches come full.
func (d *Deliverer) wakeDue(ctx context.Context, bo *errBackoff) {
	for range maxWakeBatches {
		n, err := d.out.WakeDue(ctx, d.now(), wakeBatch)
		if err != nil {
			if ctx.Err() == nil {
				bo.failed(d.log, "webhook outbox: waking due retries failed", err)
			}
			return
		}
		bo.ok(d.log, "webhook outbox: waking due retries again")
		if n < wakeBatch {
			return
		}
	}
}

// errLeaseLost: another deliverer holds the request's lease now (ours ran
// out); it does the work.
var errLeaseLost = errors.New("outbox lease lost")

// process does the work of one job: every delivery of its request that is
// due, then schedules the next retry and marks the job done, in that order,
// so a crash in between leaves the job to be taken over rather than lost.
func (d *Deliverer) process(ctx context.Context, job state.Job) {
	rid := job.RequestID
	log := d.log.With("request_id", rid)
	if rid == "" {
		d.finish(ctx, job, "", time.Time{}, false)
		return
	}
	if !d.claimLocal(rid) {
		// A worker of this replica is on it and does one more round for
		// this job. The retry is a safety net should the process die
		// before that worker is done.
		d.finish(ctx, job, rid, d.now().Add(d.lease), false)
		return
	}
	defer d.releaseLocal(rid)
	ok, err := d.out.LeaseOutbox(ctx, rid, d.consumer, d.lease)
	if err != nil {
		// The job stays in the queue and is taken over once idle.
		if ctx.Err() == nil {
			log.Warn("webhook outbox: lease failed", "error", err)
		}
		return
	}
	if !ok {
		d.finish(ctx, job, rid, d.now().Add(min(busyRecheck, d.lease)), false)
		return
	}
	next, err := d.deliverAll(ctx, rid)
	switch {
	case err == nil:
		d.finish(ctx, job, rid, next, true)
	case errors.Is(err, errLeaseLost):
		log.Info("webhook outbox: lease lost to another deliverer")
		d.finish(ctx, job, rid, d.now().Add(min(busyRecheck, d.lease)), false)
	case ctx.Err() != nil:
		// Stopping in the middle: the job is handed back as Run stops,
		// and another deliverer takes it over at once without the lease.
		fctx, cancel := finishContext(ctx)
		defer cancel()
		if err := d.out.ReleaseOutbox(fctx, rid, d.consumer); err != nil {
			log.Debug("webhook outbox: release failed", "error", err)
		}
	default:
		log.Warn("webhook outbox: delivering failed", "error", err)
		d.finish(ctx, job, rid, d.now().Add(d.retryMin), true)
	}
}

// finishContext is for the bookkeeping after a job's work: it survives ctx's
// cancellation, briefly.
func finishContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
}

// finish schedules rid's next look at retry (unless zero), gives up the
// lease when release, and marks job done. When the retry cannot be
// scheduled the job is not marked done: it is taken over once idle.
func (d *Deliverer) finish(ctx context.Context, job state.Job, rid string, retry time.Time, release bool) {
	ctx, cancel := finishContext(ctx)
	defer cancel()
	log := d.log.With("request_id", rid)
	if !retry.IsZero() {
		if err := d.out.RetryAt(ctx, rid, retry); err != nil {
			log.Warn("webhook outbox: scheduling a retry failed; the job will be taken over", "error", err)
			if release {
				_ = d.out.ReleaseOutbox(ctx, rid, d.consumer)
			}
			return
		}
	}
	if release {
		if err := d.out.ReleaseOutbox(ctx, rid, d.consumer); err != nil {
			// It runs out by itself.
			log.Debug("webhook outbox: release failed", "error", err)
		}
	}
	if err := d.out.Done(ctx, job); err != nil {
		// Done again after it is taken over: harmless.
		log.Warn("webhook outbox: marking a job done failed", "error", err)
	}
}

// claimLocal marks rid as being processed here; false (and a rerun asked
// of its worker) when it already is.
func (d *Deliverer) claimLocal(rid string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r, ok := d.running[rid]; ok {
		r.rerun = true
		return false
	}
	d.running[rid] = &localRun{}
	return true
}

// takeRerun reports (and clears) whether another job for rid came while it
// was being processed.
func (d *Deliverer) takeRerun(rid string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.running[rid]
	rerun := r != nil && r.rerun
	if r != nil {
		r.rerun = false
	}
	return rerun
}

func (d *Deliverer) releaseLocal(rid string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.running, rid)
}

// deliverAll makes rounds over rid's deliveries until one attempts nothing
// and no job came meanwhile: each round reloads the events, so those that
// came while the lease was held are sent now rather than at a later retry.
// It returns when the request wants to be looked at again (zero: never,
// unless a new event comes).
func (d *Deliverer) deliverAll(ctx context.Context, rid string) (time.Time, error) {
	for {
		next, attempted, err := d.round(ctx, rid)
		if err != nil {
			return time.Time{}, err
		}
		if attempted || d.takeRerun(rid) {
			continue
		}
		return next, nil
	}
}

// round goes once through rid's endpoints. For each, its events are sent in
// (epoch, seq) order, one at a time: the first pending one is its head, and
// nothing after the head is sent before the head is delivered, failed or
// gone. It returns the earliest time an endpoint waits for, and whether any
// attempt was made.
func (d *Deliverer) round(ctx context.Context, rid string) (next time.Time, attempted bool, err error) {
	events, err := d.out.Events(ctx, rid)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("loading events: %w", err)
	}
	stored, err := d.out.Deliveries(ctx, rid)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("loading deliveries: %w", err)
	}
	byKey := make(map[string]*state.Delivery, len(stored))
	for _, s := range stored {
		byKey[s.Key()] = s
	}
	for _, ep := range endpoints(events) {
		at, tried, err := d.endpointRound(ctx, rid, ep, eventsTo(events, ep), byKey)
		attempted = attempted || tried
		if err != nil {
			return time.Time{}, attempted, err
		}
		if !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next, attempted, nil
}

// endpointRound sends endpoint its due events, in order (see round).
//
// An endpoint that answers 410 Gone asked to receive nothing more: the later
// events of the request are marked gone without being sent, those of this
// round and those that come later. A delivery an operator reset (Redeliver)
// is stored, and is sent even after a gone one: the operator asked for it.
func (d *Deliverer) endpointRound(ctx context.Context, rid, endpoint string, evs []*state.Event, byKey map[string]*state.Delivery) (next time.Time, attempted bool, err error) {
	var goneBefore, goneNow bool
	for _, ev := range evs {
		del, isStored := byKey[state.DeliveryKey(ev.ID, endpoint)]
		if !isStored {
			del = placeholder(ev, endpoint)
		}
		switch del.State {
		case state.DeliveryGone:
			goneBefore = true
			continue
		case state.DeliveryDelivered, state.DeliveryFailed:
			continue
		}
		if goneNow || goneBefore && !isStored {
			del.State = state.DeliveryGone
			del.NextAt = time.Time{}
			if del.CreatedAt.IsZero() {
				del.CreatedAt = d.now()
			}
			d.m.deliveries.WithLabelValues(outcomeGone).Inc()
			if err := d.out.PutDelivery(ctx, rid, del, d.retention); err != nil {
				return time.Time{}, attempted, fmt.Errorf("saving delivery: %w", err)
			}
			continue
		}
		if del.NextAt.After(d.now()) {
			return del.NextAt, attempted, nil
		}
		// The lease is extended before each attempt, and so never runs out
		// under a working deliverer.
		ok, err := d.out.LeaseOutbox(ctx, rid, d.consumer, d.lease)
		if err != nil {
			return time.Time{}, attempted, fmt.Errorf("extending the lease: %w", err)
		}
		if !ok {
			return time.Time{}, attempted, errLeaseLost
		}
		attempted = true
		if !d.attempt(ctx, ev, del) {
			return time.Time{}, attempted, ctx.Err()
		}
		// Saved even when Run is being stopped: an answer the receiver gave
		// is worth keeping, above all an acceptance, which would otherwise
		// be sent again.
		pctx, cancel := finishContext(ctx)
		err = d.out.PutDelivery(pctx, rid, del, d.retention)
		cancel()
		if err != nil {
			return time.Time{}, attempted, fmt.Errorf("saving delivery: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return time.Time{}, attempted, err
		}
		switch del.State {
		case state.DeliveryPending:
			return del.NextAt, attempted, nil
		case state.DeliveryGone:
			goneNow = true
		}
	}
	return time.Time{}, attempted, nil
}

// placeholder is the delivery of ev to endpoint before its first attempt.
func placeholder(ev *state.Event, endpoint string) *state.Delivery {
	return &state.Delivery{
		EventID: ev.ID, Type: ev.Type, Epoch: ev.Epoch, Seq: ev.Seq,
		Endpoint: endpoint, State: state.DeliveryPending,
	}
}

// endpoints lists the distinct targets of events, in order of first
// appearance.
func endpoints(events []*state.Event) []string {
	var out []string
	for _, ev := range events {
		for _, t := range ev.Targets {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	return out
}

// eventsTo lists the events that go to endpoint, in (epoch, seq) order.
func eventsTo(events []*state.Event, endpoint string) []*state.Event {
	var out []*state.Event
	for _, ev := range events {
		if slices.Contains(ev.Targets, endpoint) {
			out = append(out, ev)
		}
	}
	slices.SortStableFunc(out, func(a, b *state.Event) int {
		return cmp.Or(cmp.Compare(a.Epoch, b.Epoch), cmp.Compare(a.Seq, b.Seq))
	})
	return out
}

// answer is what one attempt came to.
type answer struct {
	status     int
	result     string // the attempts_total label
	err        string // short, for the tenant's eyes: no body, no secret
	retryAfter time.Duration
}

// attempt sends ev to del's endpoint once and records the attempt and its
// consequence in del: delivered, gone, failed (past the horizon) or pending
// with the time of the next try. False when ctx ended during the attempt
// before any answer, which is then not recorded: it says nothing about the
// receiver.
func (d *Deliverer) attempt(ctx context.Context, ev *state.Event, del *state.Delivery) bool {
	at := d.now()
	ans := d.send(ctx, ev, del.Endpoint, at)
	if ctx.Err() != nil && ans.status == 0 {
		return false
	}
	if del.CreatedAt.IsZero() {
		del.CreatedAt = at
	}
	if del.FirstAttempt.IsZero() {
		del.FirstAttempt = at
	}
	end := d.now()
	del.Record(state.Attempt{At: at, HTTPStatus: ans.status, Error: ans.err, Duration: end.Sub(at)})
	d.m.attempts.WithLabelValues(ans.result).Inc()
	// Counted before the delivery is saved, so whoever sees the saved
	// delivery sees it counted.
	switch {
	case ans.result == result2xx:
		del.State, del.NextAt = state.DeliveryDelivered, time.Time{}
		d.m.deliveries.WithLabelValues(outcomeDelivered).Inc()
		d.m.latency.Observe(end.Sub(ev.At).Seconds())
	case ans.result == result410:
		del.State, del.NextAt = state.DeliveryGone, time.Time{}
		d.m.deliveries.WithLabelValues(outcomeGone).Inc()
	case end.Sub(del.FirstAttempt) >= d.horizon:
		del.State, del.NextAt = state.DeliveryFailed, time.Time{}
		d.m.deliveries.WithLabelValues(outcomeFailed).Inc()
	default:
		del.NextAt = end.Add(d.delay(del, ans.retryAfter))
	}
	d.logAttempt(ev, del, ans)
	return true
}

// logAttempt logs an attempt: successes at Debug, failures that are retried
// at Info, the end of a delivery that was not a success at Warn. The endpoint
// is shown without its query and user information, which may hold tokens.
func (d *Deliverer) logAttempt(ev *state.Event, del *state.Delivery, ans answer) {
	level := slog.LevelInfo
	switch del.State {
	case state.DeliveryFailed, state.DeliveryGone:
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("request_id", ev.RequestID), slog.String("event_id", ev.ID),
		slog.String("endpoint", redactURL(del.Endpoint)), slog.Int("status", ans.status),
		slog.String("result", ans.result), slog.Int("attempt", del.AttemptCount),
		slog.String("state", string(del.State)),
	}
	if ans.err != "" {
		attrs = append(attrs, slog.String("error", ans.err))
	}
	if !del.NextAt.IsZero() {
		attrs = append(attrs, slog.Time("next_retry", del.NextAt))
	}
	d.log.LogAttrs(context.Background(), level, "webhook attempt", attrs...)
}

// delay is how long to wait before the next try of del: the first retry
// delay doubled for each attempt since the horizon started, capped, with
// ±20% jitter so that receivers that failed together are not retried
// together; and at least what a Retry-After asked for (within the horizon).
func (d *Deliverer) delay(del *state.Delivery, retryAfter time.Duration) time.Duration {
	n := 0
	for _, a := range del.Attempts {
		if !a.At.Before(del.FirstAttempt) {
			n++
		}
	}
	delay := d.retryMin
	for i := 1; i < n && delay < d.retryMax; i++ {
		delay *= 2
	}
	delay = min(delay, d.retryMax)
	delay = time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64()))
	return max(delay, min(retryAfter, d.horizon))
}

// send makes one attempt: signed with every active secret of the event's
// tenant, bounded by the attempt timeout. It never sends an unsigned
// delivery: without a secret it answers an error, retried, so that an
// operator who restores the secret in time loses nothing.
func (d *Deliverer) send(ctx context.Context, ev *state.Event, endpoint string, at time.Time) answer {
	secrets := d.secrets(ev.Owner)
	if !slices.ContainsFunc(secrets, func(s Secret) bool { return s.key != "" }) {
		return answer{result: resultUnsigned, err: "no signing secret for the tenant"}
	}
	body, err := d.render(ev)
	if err != nil {
		return answer{result: resultError, err: clip("rendering the event: " + err.Error())}
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return answer{result: resultError, err: clip(innerError(err))}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	SetHeaders(req.Header, secrets, ev.ID, at, body)
	resp, err := d.client.Do(req)
	if err != nil {
		ans := d.classify(ctx, err)
		if resp != nil {
			// A refused redirect comes with its response, body closed.
			ans.status = resp.StatusCode
			_, _ = ReadLimited(resp, DefaultMaxResponseBytes)
		}
		return ans
	}
	// Read to reuse the connection, and discarded: a receiver's answer is
	// not the gateway's business, and may hold anything.
	_, _ = ReadLimited(resp, DefaultMaxResponseBytes)
	ans := answer{status: resp.StatusCode}
	switch {
	case resp.StatusCode == http.StatusGone:
		ans.result = result410
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		ans.result = result2xx
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		ans.result, ans.err = result3xx, "HTTP "+strconv.Itoa(resp.StatusCode)
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		ans.result, ans.err = result4xx, "HTTP "+strconv.Itoa(resp.StatusCode)
	case resp.StatusCode >= 500 && resp.StatusCode < 600:
		ans.result, ans.err = result5xx, "HTTP "+strconv.Itoa(resp.StatusCode)
	default:
		ans.result, ans.err = resultError, "HTTP "+strconv.Itoa(resp.StatusCode)
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		ans.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), d.now())
	}
	return ans
}

// classify names the failure of an attempt that got no usable answer.
func (d *Deliverer) classify(ctx context.Context, err error) answer {
	var ne net.Error
	switch {
	case errors.Is(err, ErrForbiddenAddress):
		return answer{result: resultForbidden, err: "the endpoint's address is not public, refused"}
	case errors.Is(err, ErrRedirect):
		return answer{result: result3xx, err: "redirect, not followed"}
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return answer{result: resultTimeout, err: "no answer within " + d.timeout.String()}
	default:
		return answer{result: resultError, err: clip(innerError(err))}
	}
}

// innerError is err's text without the URL a *url.Error repeats, which may
// carry a token in its query.
func innerError(err error) string {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return err.Error()
}

// clip bounds an error text kept with a delivery.
func clip(s string) string {
	if len(s) <= maxErrorText {
		return s
	}
	return s[:maxErrorText] + "…"
}

// maxRetryAfter bounds a Retry-After in seconds before it becomes a
// Duration, which would overflow; the horizon caps it further.
const maxRetryAfter = 366 * 24 * time.Hour

// parseRetryAfter reads a Retry-After header: seconds, or an HTTP date
// (relative to now). Zero when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter)
	}
	return 0
}

// redactURL is endpoint as logs may show it: scheme, host and path, without
// user information or query, which may hold credentials.
func redactURL(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "[invalid URL]"
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}
