package hooks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/comfygate/comfygate/state"
)

// ErrBusy: a deliverer kept the request's outbox lease for longer than
// Redeliver waits; the caller may try again shortly.
var ErrBusy = errors.New("deliveries of this request are in progress")

// Redeliver's wait for the lease: a deliverer holds it for one round of
// attempts, usually milliseconds, at worst a few attempt timeouts.
const (
	redeliverWait     = 2 * time.Second
	redeliverRetryMin = 20 * time.Millisecond
	redeliverRetryMax = 200 * time.Millisecond
)

// List returns every delivery of requestID's events: one per event and
// target, those not tried yet as pending placeholders without attempts (so a
// tenant sees what is still to come), sorted by (epoch, seq, endpoint).
func (d *Deliverer) List(ctx context.Context, requestID string) ([]*state.Delivery, error) {
	events, err := d.out.Events(ctx, requestID)
	if err != nil {
		return nil, fmt.Errorf("listing deliveries of %s: loading events: %w", requestID, err)
	}
	stored, err := d.out.Deliveries(ctx, requestID)
	if err != nil {
		return nil, fmt.Errorf("listing deliveries of %s: %w", requestID, err)
	}
	byKey := make(map[string]*state.Delivery, len(stored))
	for _, s := range stored {
		byKey[s.Key()] = s
	}
	var out []*state.Delivery
	seen := make(map[string]bool)
	for _, ev := range events {
		for _, ep := range ev.Targets {
			key := state.DeliveryKey(ev.ID, ep)
			if seen[key] {
				continue
			}
			seen[key] = true
			if s, ok := byKey[key]; ok {
				out = append(out, s)
			} else {
				out = append(out, placeholder(ev, ep))
			}
		}
	}
	// Deliveries of events no longer kept are still worth showing.
	for _, s := range stored {
		if !seen[s.Key()] {
			out = append(out, s)
		}
	}
	sortDeliveries(out)
	return out, nil
}

func sortDeliveries(ds []*state.Delivery) {
	slices.SortFunc(ds, func(a, b *state.Delivery) int {
		return cmp.Or(cmp.Compare(a.Epoch, b.Epoch), cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.Endpoint, b.Endpoint))
	})
}

// Redeliver sends event eventID of requestID again to each of its endpoints,
// whatever became of it: its deliveries become pending with their attempts
// kept, and the retry horizon starts again at the next attempt. It returns
// those deliveries, or an error wrapping state.ErrNoEvent when the request
// has no such event. It holds the request's outbox lease while it writes, so
// that it never races a deliverer writing the same deliveries, and wraps
// ErrBusy when it could not get the lease in about two seconds.
func (d *Deliverer) Redeliver(ctx context.Context, requestID, eventID string) ([]*state.Delivery, error) {
	events, err := d.out.Events(ctx, requestID)
	if err != nil {
		return nil, fmt.Errorf("redelivering %s of %s: loading events: %w", eventID, requestID, err)
	}
	i := slices.IndexFunc(events, func(ev *state.Event) bool { return ev.ID == eventID })
	if i < 0 {
		return nil, fmt.Errorf("redelivering %s of %s: %w", eventID, requestID, state.ErrNoEvent)
	}
	ev := events[i]

	owner := d.consumer + "/redeliver"
	if err := d.leaseWithin(ctx, requestID, owner, redeliverWait); err != nil {
		return nil, fmt.Errorf("redelivering %s of %s: %w", eventID, requestID, err)
	}
	out, err := d.reset(ctx, requestID, ev)
	// Released before the wake, so the deliverer that takes the job finds
	// the lease free.
	rctx, cancel := finishContext(ctx)
	defer cancel()
	if rerr := d.out.ReleaseOutbox(rctx, requestID, owner); rerr != nil {
		d.log.Debug("webhook outbox: release failed", "request_id", requestID, "error", rerr)
	}
	if err != nil {
		return nil, fmt.Errorf("redelivering %s of %s: %w", eventID, requestID, err)
	}
	if err := d.out.Wake(ctx, requestID); err != nil {
		return nil, fmt.Errorf("redelivering %s of %s: queueing the delivery: %w", eventID, requestID, err)
	}
	return out, nil
}

// reset makes ev's deliveries pending again, for Redeliver.
func (d *Deliverer) reset(ctx context.Context, requestID string, ev *state.Event) ([]*state.Delivery, error) {
	stored, err := d.out.Deliveries(ctx, requestID)
	if err != nil {
		return nil, fmt.Errorf("loading deliveries: %w", err)
	}
	byKey := make(map[string]*state.Delivery, len(stored))
	for _, s := range stored {
		byKey[s.Key()] = s
	}
	var out []*state.Delivery
	for _, ep := range ev.Targets {
		del, ok := byKey[state.DeliveryKey(ev.ID, ep)]
		if !ok {
			del = placeholder(ev, ep)
		}
		del.State = state.DeliveryPending
		del.FirstAttempt = time.Time{}
		del.NextAt = time.Time{}
		if del.CreatedAt.IsZero() {
			del.CreatedAt = d.now()
		}
		if err := d.out.PutDelivery(ctx, requestID, del, d.retention); err != nil {
			return nil, fmt.Errorf("saving delivery: %w", err)
		}
		out = append(out, del)
	}
	sortDeliveries(out)
	return out, nil
}

// leaseWithin takes requestID's lease for owner, trying again while another
// holds it, for at most patience; ErrBusy when it never came.
func (d *Deliverer) leaseWithin(ctx context.Context, requestID, owner string, patience time.Duration) error {
	deadline := time.NewTimer(patience)
	defer deadline.Stop()
	pause := redeliverRetryMin
	for {
		ok, err := d.out.LeaseOutbox(ctx, requestID, owner, d.lease)
		if err != nil {
			return fmt.Errorf("taking the outbox lease: %w", err)
		}
		if ok {
			return nil
		}
		retry := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			retry.Stop()
			return ctx.Err()
		case <-deadline.C:
			retry.Stop()
			return ErrBusy
		case <-retry.C:
		}
		pause = min(2*pause, redeliverRetryMax)
	}
}
