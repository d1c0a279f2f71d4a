package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// DefaultWatcherBuffer is how many undelivered records a watcher holds before
// intermediate ones are coalesced. A watcher whose client keeps up still falls
// behind for as long as its process or its client is not scheduled; 64 records
// ride out a stall of a third of a second at 200 changes per second to one
// request. The buffer grows only as records wait (pointers to records shared
// by all watchers), so an idle watcher pays nothing for it.
const DefaultWatcherBuffer = 64

// ErrDraining is what Next returns, once a watcher's buffered records are
// read, after the hub started draining: the replica is shutting down and the
// watcher's client should resume on another one.
var ErrDraining = errors.New("state: hub draining")

// unsubscribeTimeout bounds the bus call made when the last watcher of a request
// leaves; that watcher's own context is already done by then.
const unsubscribeTimeout = 5 * time.Second

// Hub fans the records published for a request out to every watcher of it on
// this replica. It holds one bus subscription per watched request, shared by all
// its watchers (the first subscribes, the last unsubscribes), and never blocks on
// a watcher: each has a bounded buffer of its own.
type Hub struct {
	bus    Bus
	buffer int

	mu       sync.Mutex
	topics   map[string]*topic
	draining bool
}

// topic is the watchers of one request.
type topic struct {
	id   string
	refs int // guarded by Hub.mu: watchers that hold or are acquiring the topic

	// op serialises Subscribe and Unsubscribe for this request, so an unsubscribe
	// by a leaving watcher can never cancel the subscription of one arriving.
	op         sync.Mutex
	subscribed bool // guarded by op

	mu sync.Mutex
	// watchers, in no order: a slice, not a set, since most requests have
	// one watcher (a set would cost a table each) and a delivery walks them
	// all.
	watchers []*Watcher

	// dep, owner and attached describe the request (Describe), guarded by
	// Hub.mu.
	dep, owner string
	attached   bool
}

// WatchedRequest is a request this replica's watchers follow, as they saw it
// when they started: enough to rebuild its record from RunComfy if it is lost.
type WatchedRequest struct {
	RequestID, DeploymentID, Owner string
	// OwnerAttached: the owner was taken on trust (Record.OwnerAttached).
	OwnerAttached bool
	// Webhooks and deadlines, which RunComfy does not know: kept by the
	// schedule's description (ScheduledRequest), not by watchers.
	Webhooks         []WebhookTarget
	MaxQueue, MaxRun time.Duration
}

// NewHub returns a Hub on bus. buffer is each watcher's capacity; <= 0 means
// DefaultWatcherBuffer.
func NewHub(bus Bus, buffer int) (*Hub, error) {
	if bus == nil {
		return nil, errors.New("state: bus is required")
	}
	if buffer <= 0 {
		buffer = DefaultWatcherBuffer
	}
	return &Hub{bus: bus, buffer: buffer, topics: make(map[string]*topic)}, nil
}

// Watch registers a watcher of requestID and returns once the request's
// subscription is active: every record published afterwards reaches the watcher.
// Read the current record only after Watch returns (subscribe, then snapshot), so
// nothing falls between the two. The caller must Close the watcher.
func (h *Hub) Watch(ctx context.Context, requestID string) (*Watcher, error) {
	h.mu.Lock()
	tp := h.topics[requestID]
	if tp == nil {
		tp = &topic{id: requestID}
		h.topics[requestID] = tp
	}
	tp.refs++
	h.mu.Unlock()

	w := &Watcher{hub: h, topic: tp, max: h.buffer, notify: make(chan struct{}, 1)}
	w.mu.Lock()
	w.waitUnder(ctx)
	w.mu.Unlock()
	tp.mu.Lock()
	tp.watchers = append(tp.watchers, w)
	tp.mu.Unlock()
	// Checked after joining the topic: a Drain either finds this watcher
	// there or has set draining before this reads it.
	h.mu.Lock()
	draining := h.draining
	h.mu.Unlock()
	if draining {
		w.drain()
	}

	tp.op.Lock()
	var err error
	if !tp.subscribed {
		if err = h.bus.Subscribe(ctx, requestID, tp.deliver); err == nil {
			tp.subscribed = true
		}
	}
	tp.op.Unlock()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("subscribe to request %s: %w", requestID, err)
	}
	return w, nil
}

// deliver hands rec to every watcher of the topic without blocking.
func (tp *topic) deliver(rec *Record) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, w := range tp.watchers {
		w.push(rec)
	}
}

// remove takes w out of the topic's watchers.
func (tp *topic) remove(w *Watcher) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if i := slices.Index(tp.watchers, w); i >= 0 {
		last := len(tp.watchers) - 1
		tp.watchers[i] = tp.watchers[last]
		tp.watchers[last] = nil
		tp.watchers = tp.watchers[:last]
	}
}

// release drops one reference; the last one out unsubscribes and forgets the
// topic, unless a new watcher took a reference meanwhile.
func (h *Hub) release(tp *topic) {
	h.mu.Lock()
	tp.refs--
	last := tp.refs == 0
	h.mu.Unlock()
	if !last {
		return
	}
	tp.op.Lock()
	defer tp.op.Unlock()
	h.mu.Lock()
	still := tp.refs == 0
	h.mu.Unlock()
	if !still {
		return // a new watcher arrived and keeps the subscription
	}
	if tp.subscribed {
		ctx, cancel := context.WithTimeout(context.Background(), unsubscribeTimeout)
		// A failed unsubscribe leaves a subscription nobody reads; the bus drops
		// what it delivers there, so the only cost is traffic until it recovers.
		_ = h.bus.Unsubscribe(ctx, tp.id)
		cancel()
		tp.subscribed = false
	}
	h.mu.Lock()
	if tp.refs == 0 && h.topics[tp.id] == tp {
		delete(h.topics, tp.id)
	}
	h.mu.Unlock()
}

// Drain ends every watcher, present and future: Next returns what each has
// buffered, then ErrDraining. One call ends them all, with no goroutine or
// context per watcher.
func (h *Hub) Drain() {
	h.mu.Lock()
	h.draining = true
	topics := make([]*topic, 0, len(h.topics))
	for _, tp := range h.topics {
		topics = append(topics, tp)
	}
	h.mu.Unlock()
	for _, tp := range topics {
		tp.mu.Lock()
		for _, w := range tp.watchers {
			w.drain()
		}
		tp.mu.Unlock()
	}
}

// Watching lists the requests this hub has subscriptions for.
func (h *Hub) Watching() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.topics))
	for id := range h.topics {
		ids = append(ids, id)
	}
	return ids
}

// Describe records the deployment and owner of a watched request, as its
// watcher read them, so that the request can be rebuilt (Watched) if its
// record is lost while it is watched. The first description stays, except
// that an owner fills one that had none (a watcher that saw the request
// before it was claimed).
func (h *Hub) Describe(requestID, deploymentID, owner string, ownerAttached bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	tp := h.topics[requestID]
	switch {
	case tp == nil:
	case tp.dep == "":
		tp.dep, tp.owner, tp.attached = deploymentID, owner, ownerAttached
	case tp.owner == "" && tp.dep == deploymentID:
		tp.owner, tp.attached = owner, ownerAttached
	}
}

// Watched lists the described requests this hub has watchers of.
func (h *Hub) Watched() []WatchedRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]WatchedRequest, 0, len(h.topics))
	for id, tp := range h.topics {
		if tp.dep != "" {
			out = append(out, WatchedRequest{RequestID: id, DeploymentID: tp.dep, Owner: tp.owner, OwnerAttached: tp.attached})
		}
	}
	return out
}

// IsWatching reports whether this hub has watchers of requestID.
func (h *Hub) IsWatching(requestID string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.topics[requestID] != nil
}

// Redeliver hands rec to the watchers of its request, as if the bus had. It is
// how a replica catches its watchers up after the bus lost messages (a
// reconnect): watchers skip what they have already sent by seq.
func (h *Hub) Redeliver(rec *Record) {
	h.mu.Lock()
	tp := h.topics[rec.RequestID]
	h.mu.Unlock()
	if tp != nil {
		tp.deliver(rec)
	}
}

// Resync reads the current record of every watched request (or of those of
// only that are watched) from store and redelivers it. A bus calls it after
// its connection came back, since messages published meanwhile are lost:
// watchers take from the snapshot whatever they had not seen (by seq) and
// ignore the rest. A bus with several connections (one per Redis Cluster
// shard) names the requests of the one that came back.
func (h *Hub) Resync(ctx context.Context, store Store, only ...string) error {
	ids := only
	if len(only) == 0 {
		ids = h.Watching()
	}
	var errs []error
	for _, id := range ids {
		rec, err := store.Get(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			errs = append(errs, fmt.Errorf("resync request %s: %w", id, err))
		default:
			h.Redeliver(rec)
		}
	}
	return errors.Join(errs...)
}

// Watcher receives the records published for one request. Records arrive in
// publish order; when the watcher falls more than its buffer behind, the newest
// buffered record is replaced by the newer one, so intermediate states may be
// skipped (seq jumps) but the terminal record, always the last, never is.
type Watcher struct {
	hub    *Hub
	topic  *topic
	max    int
	notify chan struct{}

	mu          sync.Mutex
	queue       []*Record
	last        Position // of the last record pushed
	lastUpdated time.Time
	coalesced   int
	closed      bool
	drained     bool // the hub drains: Next ends with ErrDraining

	// watched is the ctx Next waits under, and ended is set once it is
	// done: its end wakes the watcher through notify (context.AfterFunc),
	// so that Next waits on one channel. A select on the ctx's Done as well
	// cost a sixth of a replica's CPU per delivery when a thousand watchers
	// follow one request, and finding Done walks a stream's ctx, a chain of
	// a dozen values. stopWatch unregisters the AfterFunc.
	watched   context.Context
	ended     bool
	stopWatch func() bool
}

// waitUnder makes ctx the one whose end wakes Next, unless it already is;
// w.mu is held. Watch does it for its own ctx, the one a caller usually waits
// under too: the registration's call chain then runs on the caller that
// starts the watch, not at the bottom of the stack that waits (see
// WatchRequest, whose idle streams keep their goroutines' stacks small).
func (w *Watcher) waitUnder(ctx context.Context) {
	if w.watched == ctx {
		return
	}
	if w.stopWatch != nil {
		w.stopWatch()
	}
	w.watched, w.ended = ctx, false
	w.stopWatch = context.AfterFunc(ctx, func() { w.ctxEnded(ctx) })
}

func (w *Watcher) drain() {
	w.mu.Lock()
	w.drained = true
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *Watcher) push(rec *Record) {
	w.mu.Lock()
	if rec.Epoch == w.last.Epoch && rec.Seq <= w.last.Seq && !rec.UpdatedAt.After(w.lastUpdated) {
		// Older than what the watcher already holds or has read (a Redeliver
		// of a snapshot read before the latest publish): it says nothing new,
		// and in a full buffer it would displace a newer record, perhaps the
		// terminal one. A record of another epoch, or one written later at a
		// seq already seen (the store went back within its epoch), always
		// goes through: only the store can tell what is current (Follower).
		w.mu.Unlock()
		return
	}
	w.last, w.lastUpdated = rec.Position(), rec.UpdatedAt
	if n := len(w.queue); n < w.max || !follows(rec, w.queue[n-1]) {
		// A record that does not simply follow the newest buffered one
		// (another epoch, or a seq not above it) is kept even in a full
		// buffer: which of the two is current is decided when they are read
		// (Follower), so neither may displace the other. This happens only
		// when a record is lost or goes back, so it stays small.
		w.queue = append(w.queue, rec)
	} else {
		w.queue[len(w.queue)-1] = rec
		w.coalesced++
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// follows reports whether rec comes after prev in one incarnation of a
// record: same epoch, greater seq.
func follows(rec, prev *Record) bool {
	return rec.Epoch == prev.Epoch && rec.Seq > prev.Seq
}

// Next returns the records received since the previous call, waiting for at
// least one; or ctx's error; or, once the hub drains and nothing is left
// buffered, ErrDraining. One goroutine at a time may call it.
func (w *Watcher) Next(ctx context.Context) ([]*Record, error) {
	for {
		w.mu.Lock()
		if q := w.queue; len(q) > 0 {
			w.queue = nil
			w.mu.Unlock()
			return q, nil
		}
		drained := w.drained
		w.waitUnder(ctx)
		ended := w.ended
		w.mu.Unlock()
		if drained {
			return nil, ErrDraining
		}
		if ended {
			return nil, ctx.Err()
		}
		<-w.notify
	}
}

// ctxEnded wakes Next when ctx, which it waits under, is done; a ctx it
// no longer waits under changes nothing.
func (w *Watcher) ctxEnded(ctx context.Context) {
	w.mu.Lock()
	if w.watched == ctx {
		w.ended = true
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Buffered is how many records wait for Next.
func (w *Watcher) Buffered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// Coalesced counts records this watcher skipped because it fell behind.
func (w *Watcher) Coalesced() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.coalesced
}

// Close stops delivery to the watcher and releases its share of the
// subscription. It is safe to call more than once.
func (w *Watcher) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	if w.stopWatch != nil {
		w.stopWatch()
	}
	w.mu.Unlock()
	w.topic.remove(w)
	w.hub.release(w.topic)
}
