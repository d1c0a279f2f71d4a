package memory

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/comfygate/comfygate/state"
)

// outbox is the memory backend's state.Outbox: what Redis keeps in streams,
// hashes and a sorted set, in maps under the backend's lock. It is lost with
// the process, like every record of this backend.
type outbox struct {
	events     map[string][]*state.Event
	deliveries map[string]map[string]*state.Delivery
	expires    map[string]time.Time // of a request's events and deliveries
	queue      []state.Job          // jobs not yet taken, in order
	taken      map[string]takenJob  // by job id
	lastID     int64
	retries    map[string]time.Time
	leases     map[string]lease
	// added is closed (and replaced) when jobs are queued, waking Take.
	added chan struct{}
}

type takenJob struct {
	job      state.Job
	consumer string
	since    time.Time
}

func newOutbox() outbox {
	return outbox{
		events:     make(map[string][]*state.Event),
		deliveries: make(map[string]map[string]*state.Delivery),
		expires:    make(map[string]time.Time),
		taken:      make(map[string]takenJob),
		retries:    make(map[string]time.Time),
		leases:     make(map[string]lease),
		added:      make(chan struct{}),
	}
}

// push queues a job for requestID; the caller holds the backend's lock.
func (o *outbox) push(requestID string) {
	o.lastID++
	o.queue = append(o.queue, state.Job{ID: strconv.FormatInt(o.lastID, 10), RequestID: requestID})
	close(o.added)
	o.added = make(chan struct{})
}

func (o *outbox) sweep(now time.Time) {
	for id, at := range o.expires {
		if !now.Before(at) {
			delete(o.events, id)
			delete(o.deliveries, id)
			delete(o.expires, id)
		}
	}
	for id, l := range o.leases {
		if !now.Before(l.expires) {
			delete(o.leases, id)
		}
	}
}

// SaveWithEvent implements state.OutboxSaver: the record, its schedule
// change and its event under one lock.
func (b *Backend) SaveWithEvent(ctx context.Context, rec *state.Record, ttl time.Duration, due time.Time, forget bool, ev *state.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !due.IsZero() {
		b.due[rec.RequestID] = due
	}
	err := b.saveLocked(rec, ttl)
	if forget {
		delete(b.due, rec.RequestID)
	}
	if err != nil || ev == nil {
		return err
	}
	e := *ev
	e.Targets = slices.Clone(ev.Targets)
	e.Record = ev.Record.Clone()
	o := &b.out
	o.events[rec.RequestID] = append(o.events[rec.RequestID], &e)
	o.expires[rec.RequestID] = b.now().Add(ttl)
	o.push(rec.RequestID)
	return nil
}

// Take implements state.Outbox.
func (b *Backend) Take(ctx context.Context, consumer string, n int, block time.Duration) ([]state.Job, error) {
	timer := time.NewTimer(block)
	defer timer.Stop()
	for {
		b.mu.Lock()
		o := &b.out
		if len(o.queue) > 0 {
			k := min(n, len(o.queue))
			jobs := slices.Clone(o.queue[:k])
			o.queue = slices.Delete(o.queue, 0, k)
			now := b.now()
			for _, j := range jobs {
				o.taken[j.ID] = takenJob{job: j, consumer: consumer, since: now}
			}
			b.mu.Unlock()
			return jobs, nil
		}
		added := o.added
		b.mu.Unlock()
		select {
		case <-added:
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Reclaim implements state.Outbox.
func (b *Backend) Reclaim(ctx context.Context, consumer string, minIdle time.Duration, n int) ([]state.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var idle []takenJob
	for _, t := range b.out.taken {
		if now.Sub(t.since) >= minIdle {
			idle = append(idle, t)
		}
	}
	slices.SortFunc(idle, func(a, c takenJob) int { return a.since.Compare(c.since) })
	var jobs []state.Job
	for _, t := range idle[:min(n, len(idle))] {
		b.out.taken[t.job.ID] = takenJob{job: t.job, consumer: consumer, since: now}
		jobs = append(jobs, t.job)
	}
	return jobs, nil
}

// HandBack implements state.Outbox.
func (b *Backend) HandBack(ctx context.Context, consumer string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var mine []takenJob
	for _, t := range b.out.taken {
		if t.consumer == consumer {
			mine = append(mine, t)
		}
	}
	// In the order they were taken, as they were queued.
	slices.SortFunc(mine, func(a, c takenJob) int { return cmp.Compare(jobNumber(a.job), jobNumber(c.job)) })
	for _, t := range mine {
		delete(b.out.taken, t.job.ID)
		b.out.push(t.job.RequestID)
	}
	return len(mine), nil
}

// jobNumber is the rank of a job in the queue, from its id.
func jobNumber(j state.Job) int64 {
	n, _ := strconv.ParseInt(j.ID, 10, 64)
	return n
}

// Done implements state.Outbox.
func (b *Backend) Done(ctx context.Context, jobs ...state.Job) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, j := range jobs {
		delete(b.out.taken, j.ID)
	}
	return nil
}

// Wake implements state.Outbox.
func (b *Backend) Wake(ctx context.Context, requestID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.out.push(requestID)
	return nil
}

// Events implements state.Outbox.
func (b *Backend) Events(ctx context.Context, requestID string) ([]*state.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.live(requestID) {
		return nil, nil
	}
	out := make([]*state.Event, 0, len(b.out.events[requestID]))
	for _, e := range b.out.events[requestID] {
		c := *e
		c.Targets = slices.Clone(e.Targets)
		c.Record = e.Record.Clone()
		out = append(out, &c)
	}
	return out, nil
}

// live reports whether requestID's outbox has not expired; b.mu is held.
func (b *Backend) live(requestID string) bool {
	at, ok := b.out.expires[requestID]
	return ok && b.now().Before(at)
}

// Deliveries implements state.Outbox.
func (b *Backend) Deliveries(ctx context.Context, requestID string) ([]*state.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.live(requestID) {
		return nil, nil
	}
	var out []*state.Delivery
	for _, d := range b.out.deliveries[requestID] {
		c := *d
		c.Attempts = slices.Clone(d.Attempts)
		out = append(out, &c)
	}
	return out, nil
}

// PutDelivery implements state.Outbox.
func (b *Backend) PutDelivery(ctx context.Context, requestID string, d *state.Delivery, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := *d
	c.Attempts = slices.Clone(d.Attempts)
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.out.deliveries[requestID]
	if m == nil {
		m = make(map[string]*state.Delivery)
		b.out.deliveries[requestID] = m
	}
	m[c.Key()] = &c
	b.out.expires[requestID] = b.now().Add(ttl)
	return nil
}

// LeaseOutbox implements state.Outbox.
func (b *Backend) LeaseOutbox(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if l, ok := b.out.leases[requestID]; ok && now.Before(l.expires) && l.owner != owner {
		return false, nil
	}
	b.out.leases[requestID] = lease{owner: owner, expires: now.Add(ttl)}
	return true, nil
}

// ReleaseOutbox implements state.Outbox.
func (b *Backend) ReleaseOutbox(ctx context.Context, requestID, owner string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.out.leases[requestID]; ok && l.owner == owner {
		delete(b.out.leases, requestID)
	}
	return nil
}

// RetryAt implements state.Outbox.
func (b *Backend) RetryAt(ctx context.Context, requestID string, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.out.retries[requestID]; !ok || at.Before(cur) {
		b.out.retries[requestID] = at
	}
	return nil
}

// WakeDue implements state.Outbox.
func (b *Backend) WakeDue(ctx context.Context, now time.Time, n int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	type item struct {
		id string
		at time.Time
	}
	var due []item
	for id, at := range b.out.retries {
		if !at.After(now) {
			due = append(due, item{id, at})
		}
	}
	slices.SortFunc(due, func(a, c item) int { return a.at.Compare(c.at) })
	due = due[:min(n, len(due))]
	for _, it := range due {
		delete(b.out.retries, it.id)
		b.out.push(it.id)
	}
	return len(due), nil
}

// Depth implements state.Outbox.
func (b *Backend) Depth(ctx context.Context) (jobs, retries int64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return int64(len(b.out.queue) + len(b.out.taken)), int64(len(b.out.retries)), nil
}

var _ state.Outbox = (*Backend)(nil)
