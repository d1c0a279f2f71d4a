package outputs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Stored is what the object store says of an object it kept.
type Stored struct {
	Key         string
	Size        int64
	ContentType string
	SHA256      string
}

// ErrTooLarge is what an ObjectStore's Put wraps when more than maxBytes
// came: such an output is never stored, so its copy fails at once.
var ErrTooLarge = errors.New("output larger than the limit")

// ObjectStore keeps objects: the operator's bucket (storage.Store, adapted
// by internal/app).
type ObjectStore interface {
	// Key is the object key of parts, under the store's prefix.
	Key(parts ...string) string
	// Put streams r (size bytes, -1 unknown) to key, and fails with
	// ErrTooLarge (wrapped) past maxBytes, leaving nothing behind.
	Put(ctx context.Context, key string, r io.Reader, size int64, contentType string, maxBytes int64) (Stored, error)
}

// Tracker is what the copier needs of the state: the request's record, and
// recording its reports.
type Tracker interface {
	Get(ctx context.Context, requestID string) (*state.Record, error)
	Apply(ctx context.Context, u state.Update) (*state.Record, state.Outcome, error)
}

// Config holds the Copier's dependencies and settings.
type Config struct {
	Queue   state.WorkQueue
	Tracker Tracker
	Store   ObjectStore
	// Client fetches the outputs from RunComfy's storage.
	Client *http.Client
	// Owner names this replica in the queue's leases.
	Owner string
	// MaxBytes bounds one output file; default 1 GiB.
	MaxBytes int64
	// Timeout bounds the copy of one request's outputs; the lease lasts
	// this long and a second, so a dead replica's copy is taken over then.
	// Default 10 minutes.
	Timeout time.Duration
	// RetryMin and RetryMax bound the back-off between attempts (doubling,
	// with jitter); defaults 5s and 10m. Horizon is how long after the first
	// attempt the copy is given up (failed); default 24h.
	RetryMin, RetryMax, Horizon time.Duration
	// Workers is how many requests this replica copies at once; default 4.
	Workers int
	// Interval is how often the queue is read for due copies (a copy waits
	// at most this long to start); default 200ms.
	Interval time.Duration
	Logger   *slog.Logger
	// Registry, when set, receives the copier's metrics.
	Registry prometheus.Registerer
	Now      func() time.Time
}

// Copier copies succeeded requests' outputs to the object store.
type Copier struct {
	cfg     Config
	metrics *metrics
	// early counts, per request, the times this replica found a copy due
	// before its record was ready (see notReady).
	mu    sync.Mutex
	early map[string]int
}

// notReadyLooks is how many times a replica finds a copy due before its
// record says succeeded before it drops it; notReadyWait is the wait
// between two looks. A copy is queued just before the save that makes its
// record succeeded (a crash in between leaves a job for nothing, not a
// success without its copy), so the first look may come before the save
// lands: after a stall, or when the record was lost and is being put back.
const (
	notReadyLooks = 3
	notReadyWait  = 2 * time.Second
)

// New checks cfg and returns a Copier; it starts nothing.
func New(cfg Config) (*Copier, error) {
	if cfg.Queue == nil || cfg.Tracker == nil || cfg.Store == nil || cfg.Client == nil || cfg.Owner == "" {
		return nil, errors.New("outputs: queue, tracker, store, client and owner are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Timeout, 10*time.Minute)
	def(&cfg.RetryMin, 5*time.Second)
	def(&cfg.RetryMax, 10*time.Minute)
	def(&cfg.Horizon, 24*time.Hour)
	def(&cfg.Interval, 200*time.Millisecond)
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 30
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.RetryMin > cfg.RetryMax {
		return nil, errors.New("outputs: RetryMin is longer than RetryMax")
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
	return &Copier{cfg: cfg, metrics: m, early: map[string]int{}}, nil
}

// lease is how long a copy holds its request.
func (c *Copier) lease() time.Duration { return c.cfg.Timeout + time.Second }

// Run copies due requests until ctx ends; every copy it started has ended
// when it returns.
func (c *Copier) Run(ctx context.Context) error {
	slots := make(chan struct{}, c.cfg.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	busy := map[string]bool{}
	var busyMu sync.Mutex
	for {
		if n, err := c.cfg.Queue.Len(ctx); err == nil {
			c.metrics.queue.Set(float64(n))
		}
		ids, err := c.cfg.Queue.Due(ctx, c.cfg.Now(), c.cfg.Workers*4)
		if err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("reading the copy queue failed", "error", err)
		}
		for _, id := range ids {
			busyMu.Lock()
			skip := busy[id]
			busyMu.Unlock()
			if skip {
				continue
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			ok, err := c.cfg.Queue.Lease(ctx, id, c.cfg.Owner, c.lease())
			if err != nil || !ok {
				<-slots
				continue
			}
			busyMu.Lock()
			busy[id] = true
			busyMu.Unlock()
			wg.Go(func() {
				defer func() {
					busyMu.Lock()
					delete(busy, id)
					busyMu.Unlock()
					<-slots
				}()
				c.copyLeased(ctx, id)
			})
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// copyLeased copies id under its lease, then gives the lease up.
func (c *Copier) copyLeased(ctx context.Context, id string) {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	c.copy(ctx, cctx, id)
	// The lease goes even when ctx ended: another replica takes over.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	if err := c.cfg.Queue.Release(rctx, id, c.cfg.Owner); err != nil {
		c.cfg.Logger.Warn("releasing a copy's lease failed", "request_id", id, "error", err)
	}
}

// copy makes one attempt at id's copy, bounded by ctx, and records its
// outcome; nothing is recorded once parent (the copier's life) ended.
func (c *Copier) copy(parent, ctx context.Context, id string) {
	log := c.cfg.Logger.With("request_id", id)
	rec, err := c.cfg.Tracker.Get(ctx, id)
	switch {
	case errors.Is(err, state.ErrNotFound), err == nil && !rec.Terminal():
		// Expired, never saved, or its success not saved yet.
		c.notReady(ctx, id)
		return
	case err != nil:
		log.Warn("reading a request to copy failed", "error", err)
		return // due again at once, with the lease's end
	case rec.State != runcomfy.StateSucceeded || rec.Storage == nil || rec.Storage.State != state.StoragePending:
		c.forget(id)
		c.done(ctx, id)
		return
	}
	c.forget(id)
	attempts := rec.Storage.Attempts + 1
	now := c.cfg.Now()
	files := Files(rec.Outputs)
	if len(rec.Outputs) == 0 {
		// The success came without outputs and they are not read yet.
		c.retry(ctx, rec, attempts, errors.New("the outputs are not known yet"), now)
		return
	}
	objects := make([]state.StoredObject, 0, len(files))
	var copied int64
	for _, f := range files {
		obj, err := c.copyFile(ctx, rec, f)
		if err != nil {
			if parent.Err() != nil {
				return // stopping: not an attempt; the lease's end makes it due again
			}
			if errors.Is(err, ErrTooLarge) || errors.Is(err, errGone) {
				c.end(ctx, rec, state.Storage{State: state.StorageFailed, Error: err.Error(), Attempts: attempts, FirstAttempt: firstAttempt(rec, now)})
				return
			}
			c.retry(ctx, rec, attempts, err, now)
			return
		}
		copied += obj.Size
		objects = append(objects, obj)
	}
	c.metrics.bytes.Add(float64(copied))
	c.end(ctx, rec, state.Storage{State: state.StorageStored, Objects: objects, Attempts: attempts, FirstAttempt: firstAttempt(rec, now)})
	log.Info("outputs stored", "objects", len(objects), "bytes", copied, "attempts", attempts)
}

// errGone: RunComfy no longer has an output (404 or 410): no retry brings
// it back.
var errGone = errors.New("the output is gone from RunComfy's storage")

// copyFile streams one output from RunComfy to the store.
func (c *Copier) copyFile(ctx context.Context, rec *state.Record, f File) (state.StoredObject, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return state.StoredObject{}, fmt.Errorf("output %s/%s: %w", f.Node, f.Name, err)
	}
	resp, err := c.cfg.Client.Do(req)
	if err != nil {
		return state.StoredObject{}, fmt.Errorf("fetch output %s/%s: %w", f.Node, f.Name, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return state.StoredObject{}, fmt.Errorf("fetch output %s/%s: HTTP %d: %w", f.Node, f.Name, resp.StatusCode, errGone)
	case resp.StatusCode/100 != 2:
		return state.StoredObject{}, fmt.Errorf("fetch output %s/%s: HTTP %d", f.Node, f.Name, resp.StatusCode)
	case resp.ContentLength > c.cfg.MaxBytes:
		return state.StoredObject{}, fmt.Errorf("output %s/%s is %d bytes: %w (%d)", f.Node, f.Name, resp.ContentLength, ErrTooLarge, c.cfg.MaxBytes)
	}
	ctype := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ctype); err != nil || mt == "" {
		ctype = "application/octet-stream"
	}
	owner := rec.Owner
	if owner == "" {
		owner = "_"
	}
	key := c.cfg.Store.Key(owner, rec.DeploymentID, rec.RequestID, f.Node, f.Name)
	obj, err := c.cfg.Store.Put(ctx, key, resp.Body, resp.ContentLength, ctype, c.cfg.MaxBytes)
	if err != nil {
		return state.StoredObject{}, fmt.Errorf("store output %s/%s: %w", f.Node, f.Name, err)
	}
	return state.StoredObject{Node: f.Node, File: f.Name, Key: obj.Key, Size: obj.Size, ContentType: obj.ContentType, SHA256: obj.SHA256}, nil
}

// retry records a failed attempt and makes the copy due again after its
// back-off, or fails it past the horizon (from the first attempt, whichever
// replica made it).
func (c *Copier) retry(ctx context.Context, rec *state.Record, attempts int, cause error, now time.Time) {
	first := rec.Storage.FirstAttempt
	if first.IsZero() {
		first = now
	}
	if now.Sub(first) >= c.cfg.Horizon {
		c.end(ctx, rec, state.Storage{State: state.StorageFailed, Error: cause.Error(), Attempts: attempts, FirstAttempt: first})
		return
	}
	c.metrics.copies.WithLabelValues("retry").Inc()
	c.report(ctx, rec, state.Storage{State: state.StoragePending, Error: cause.Error(), Attempts: attempts, FirstAttempt: first})
	delay := c.delay(attempts)
	// The retry is scheduled on the copier's own context: the attempt's
	// may be the one that ran out.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.cfg.Queue.RetryAt(rctx, rec.RequestID, now.Add(delay)); err != nil {
		c.cfg.Logger.Warn("scheduling a copy's retry failed", "request_id", rec.RequestID, "error", err)
	}
	c.cfg.Logger.Warn("copying outputs failed; will retry", "request_id", rec.RequestID, "attempt", attempts, "retry_in", delay, "error", cause)
}

// delay is the back-off before attempt n+1: RetryMin doubled per attempt,
// at most RetryMax, within ±20%.
func (c *Copier) delay(n int) time.Duration {
	d := c.cfg.RetryMin
	for i := 1; i < n && d < c.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.RetryMax)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// end records the copy's end and takes the request off the queue.
func (c *Copier) end(ctx context.Context, rec *state.Record, s state.Storage) {
	if !c.report(ctx, rec, s) {
		return // due again: the next attempt records it
	}
	c.metrics.copies.WithLabelValues(string(s.State)).Inc()
	if s.State == state.StorageFailed {
		c.cfg.Logger.Error("copying outputs failed for good", "request_id", rec.RequestID, "attempts", s.Attempts, "error", s.Error)
	}
	c.done(ctx, rec.RequestID)
}

// report records s on the request; false when it could not be.
func (c *Copier) report(ctx context.Context, rec *state.Record, s state.Storage) bool {
	// Recorded on the copier's context: the attempt's may have run out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _, err := c.cfg.Tracker.Apply(ctx, state.Update{RequestID: rec.RequestID, Source: state.SourceStorage, State: runcomfy.StateSucceeded, Storage: &s})
	if err != nil {
		c.cfg.Logger.Warn("recording a copy's outcome failed", "request_id", rec.RequestID, "error", err)
		return false
	}
	return true
}

// firstAttempt is when rec's copy was first tried: now for the first.
func firstAttempt(rec *state.Record, now time.Time) time.Time {
	if t := rec.Storage.FirstAttempt; !t.IsZero() {
		return t
	}
	return now
}

// notReady looks at a copy whose record is missing or unfinished again
// after notReadyWait, and drops it after notReadyLooks looks.
func (c *Copier) notReady(ctx context.Context, id string) {
	c.mu.Lock()
	c.early[id]++
	looks := c.early[id]
	if looks >= notReadyLooks {
		delete(c.early, id)
	}
	c.mu.Unlock()
	if looks >= notReadyLooks {
		c.done(ctx, id)
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.cfg.Queue.RetryAt(rctx, id, c.cfg.Now().Add(notReadyWait)); err != nil {
		c.cfg.Logger.Warn("postponing a copy failed", "request_id", id, "error", err)
	}
}

// forget drops what notReady counted of id.
func (c *Copier) forget(id string) {
	c.mu.Lock()
	delete(c.early, id)
	c.mu.Unlock()
}

func (c *Copier) done(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.cfg.Queue.Done(ctx, id); err != nil {
		c.cfg.Logger.Warn("removing a finished copy from the queue failed", "request_id", id, "error", err)
	}
}

type metrics struct {
	copies *prometheus.CounterVec
	bytes  prometheus.Counter
	queue  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		copies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comfygate_output_copies_total",
			Help: "Copies of succeeded requests' outputs to object storage, by outcome: stored, failed (given up), retry (an attempt failed).",
		}, []string{"outcome"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comfygate_output_copy_bytes_total",
			Help: "Bytes of outputs stored in object storage.",
		}),
		queue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "comfygate_output_copy_queue",
			Help: "Requests whose outputs wait to be copied, due or not.",
		}),
	}
	for _, o := range []string{"stored", "failed", "retry"} {
		m.copies.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.copies, m.bytes, m.queue} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("outputs: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
