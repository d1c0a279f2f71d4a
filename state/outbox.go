package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// EventKind is a kind of change a webhook can ask for. One applied update of a
// request is one event, which may be of several kinds at once (a success that
// brings the outputs is both output and terminal).
type EventKind uint8

// The kinds of EventKind.
const (
	KindQueued EventKind = 1 << iota
	KindRunning
	KindOutput
	KindTerminal
)

// kindNames are the public names of the kinds, in lifecycle order.
var kindNames = []struct {
	kind EventKind
	name string
}{{KindQueued, "queued"}, {KindRunning, "running"}, {KindOutput, "output"}, {KindTerminal, "terminal"}}

// ParseEventKinds reads a list of kind names (queued, running, output,
// terminal, any case); an empty list is terminal alone.
func ParseEventKinds(names []string) (EventKind, error) {
	if len(names) == 0 {
		return KindTerminal, nil
	}
	var k EventKind
	for _, n := range names {
		found := false
		for _, kn := range kindNames {
			if strings.EqualFold(strings.TrimSpace(n), kn.name) {
				if k&kn.kind != 0 {
					return 0, fmt.Errorf("event %q is listed twice", kn.name)
				}
				k |= kn.kind
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown event %q (want queued, running, output or terminal)", n)
		}
	}
	return k, nil
}

// Names lists the kinds in k, in lifecycle order.
func (k EventKind) Names() []string {
	var out []string
	for _, kn := range kindNames {
		if k&kn.kind != 0 {
			out = append(out, kn.name)
		}
	}
	return out
}

// WebhookTarget is an endpoint that receives a request's events, and the
// kinds it asked for. A request's targets are fixed when it is submitted and
// kept on its record, so that whichever replica records a change knows where
// it goes.
type WebhookTarget struct {
	URL   string    `json:"url"`
	Kinds EventKind `json:"kinds"`
}

// Event is one change of a request that webhooks are sent for. It is queued
// by the very save that records the change (OutboxSaver), so a change that is
// recorded is never lost before it is sent.
type Event struct {
	// ID is the event's webhook-id: derived from the request and the state's
	// (epoch, seq), so the same change always has the same id.
	ID string `json:"id"`
	// Type is "request.queued", "request.running", "request.output",
	// "request.succeeded", "request.failed" or "request.cancelled".
	Type      string    `json:"type"`
	Kinds     EventKind `json:"kinds"`
	RequestID string    `json:"request_id"`
	// Owner is the tenant the request belongs to, whose secrets sign it.
	Owner string `json:"owner,omitempty"`
	Epoch int64  `json:"epoch"`
	Seq   int64  `json:"seq"`
	// Targets are the endpoints the event goes to: those of the request's
	// targets that asked for one of its kinds.
	Targets []string  `json:"targets"`
	At      time.Time `json:"at"`
	// Record is the state the event carries.
	Record *Record `json:"record"`
}

// EventID is the webhook-id of a request's state (epoch, seq).
func EventID(requestID string, epoch, seq int64) string {
	h := sha256.Sum256([]byte(requestID + "\x00" + strconv.FormatInt(epoch, 10) + "\x00" + strconv.FormatInt(seq, 10)))
	return "msg_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:16]))
}

// EventFor is the event the change from prev to next makes, or nil when none
// of next's webhook targets asked for its kinds. A record that gains its
// targets (a submit's answer recorded after a callback had created the
// record) makes the event of everything it already is.
func EventFor(prev, next *Record) *Event {
	if len(next.Webhooks) == 0 {
		return nil
	}
	if prev != nil && len(prev.Webhooks) == 0 {
		prev = nil
	}
	var kinds EventKind
	if prev == nil || prev.State != next.State {
		switch {
		case next.State == runcomfy.StateQueued:
			kinds |= KindQueued
		case next.State == runcomfy.StateRunning:
			kinds |= KindRunning
		case next.Terminal():
			kinds |= KindTerminal
		}
	}
	if len(next.Outputs) > 0 && (prev == nil || !bytes.Equal(prev.Outputs, next.Outputs)) {
		kinds |= KindOutput
	}
	stored := storageKinds(prev, next)
	kinds |= stored
	if kinds == 0 {
		return nil
	}
	var targets []string
	for _, t := range next.Webhooks {
		if t.Kinds&kinds != 0 && !slices.Contains(targets, t.URL) {
			targets = append(targets, t.URL)
		}
	}
	if len(targets) == 0 {
		return nil
	}
	typ := "request.output"
	switch {
	case stored != 0 && next.Storage.State == StorageStored:
		typ = "request.outputs_stored"
	case stored != 0:
		typ = "request.outputs_not_stored"
	case next.Terminal():
		typ = "request." + terminalWord(next.State)
	case kinds&KindOutput != 0:
	case next.State == runcomfy.StateRunning:
		typ = "request.running"
	case next.State == runcomfy.StateQueued:
		typ = "request.queued"
	}
	return &Event{
		ID: EventID(next.RequestID, next.Epoch, next.Seq), Type: typ, Kinds: kinds,
		RequestID: next.RequestID, Owner: next.Owner, Epoch: next.Epoch, Seq: next.Seq,
		Targets: targets, At: next.UpdatedAt, Record: next.Clone(),
	}
}

func terminalWord(s runcomfy.State) string {
	switch s {
	case runcomfy.StateSucceeded:
		return "succeeded"
	case runcomfy.StateCancelled:
		return "cancelled"
	default:
		return "failed"
	}
}

// DeliveryState is where one event's delivery to one endpoint stands.
type DeliveryState string

// The delivery states.
const (
	DeliveryPending   DeliveryState = "pending"
	DeliveryDelivered DeliveryState = "delivered"
	DeliveryFailed    DeliveryState = "failed"
	DeliveryGone      DeliveryState = "gone"
)

// MaxAttemptsKept bounds the attempts a Delivery lists (the latest ones).
const MaxAttemptsKept = 20

// Attempt is one try to send an event to an endpoint.
type Attempt struct {
	At         time.Time     `json:"at"`
	HTTPStatus int           `json:"status,omitempty"`
	Error      string        `json:"error,omitempty"`
	Duration   time.Duration `json:"duration"`
}

// Delivery is one event sent to one endpoint: its attempts and outcome.
type Delivery struct {
	EventID  string        `json:"event_id"`
	Type     string        `json:"type"`
	Epoch    int64         `json:"epoch"`
	Seq      int64         `json:"seq"`
	Endpoint string        `json:"endpoint"`
	State    DeliveryState `json:"state"`
	Attempts []Attempt     `json:"attempts,omitempty"`
	// AttemptCount counts every attempt, also those Attempts no longer lists.
	AttemptCount int `json:"attempt_count,omitempty"`
	// FirstAttempt starts the retry horizon; a redelivery starts it again.
	FirstAttempt time.Time `json:"first_attempt,omitzero"`
	// NextAt is when a pending delivery that failed is tried again.
	NextAt    time.Time `json:"next_at,omitzero"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Key is the delivery's key among its request's deliveries.
func (d *Delivery) Key() string { return DeliveryKey(d.EventID, d.Endpoint) }

// DeliveryKey names the delivery of event eventID to endpoint.
func DeliveryKey(eventID, endpoint string) string { return eventID + " " + endpoint }

// Record adds attempt a, keeping the latest MaxAttemptsKept.
func (d *Delivery) Record(a Attempt) {
	d.AttemptCount++
	d.Attempts = append(d.Attempts, a)
	if n := len(d.Attempts); n > MaxAttemptsKept {
		d.Attempts = slices.Delete(d.Attempts, 0, n-MaxAttemptsKept)
	}
}

// OutboxSaver is a Store that queues a change's event in the same atomic
// step that saves the change: both happen or neither does.
type OutboxSaver interface {
	// SaveWithEvent is SaveScheduled (or Save, with due zero and forget
	// false) that also appends ev to the request's outbox and wakes a
	// deliverer, when the save succeeds. ev nil queues nothing.
	SaveWithEvent(ctx context.Context, rec *Record, ttl time.Duration, due time.Time, forget bool, ev *Event) error
}

// Job is a request whose outbox has work, handed to one deliverer at a time.
type Job struct {
	// ID identifies the job in the queue (a stream entry id in Redis).
	ID        string
	RequestID string
}

// ErrNoEvent: the outbox holds no event with that id.
var ErrNoEvent = errors.New("state: no such event")

// Outbox is the durable queue of webhook events: each request's events in
// order, their deliveries, and a shared queue of jobs ("this request has
// work") that replicas consume as a group: each job is handed to one
// deliverer, and a job whose deliverer died (not done within an idle time)
// is taken over by another.
type Outbox interface {
	OutboxSaver
	// Take waits up to block for at most n new jobs for consumer.
	Take(ctx context.Context, consumer string, n int, block time.Duration) ([]Job, error)
	// Reclaim hands consumer at most n jobs taken by others (or itself) and
	// not done for at least minIdle.
	Reclaim(ctx context.Context, consumer string, minIdle time.Duration, n int) ([]Job, error)
	// Done removes finished jobs from the queue.
	Done(ctx context.Context, jobs ...Job) error
	// HandBack queues again, as new jobs, every job consumer took and has
	// not done, and forgets consumer; it returns how many. A deliverer that
	// stops calls it, so that the jobs it will not finish are taken by
	// another at once rather than once idle for the takeover time.
	HandBack(ctx context.Context, consumer string) (int, error)
	// Wake queues a job for requestID.
	Wake(ctx context.Context, requestID string) error
	// Events returns requestID's events, oldest first.
	Events(ctx context.Context, requestID string) ([]*Event, error)
	// Deliveries returns requestID's deliveries, in no particular order.
	Deliveries(ctx context.Context, requestID string) ([]*Delivery, error)
	// PutDelivery stores d among requestID's deliveries; they expire ttl
	// after this write.
	PutDelivery(ctx context.Context, requestID string, d *Delivery, ttl time.Duration) error
	// LeaseOutbox takes requestID's delivery lease for owner for ttl (or
	// extends it when owner holds it); false while another holds it.
	LeaseOutbox(ctx context.Context, requestID, owner string, ttl time.Duration) (bool, error)
	// ReleaseOutbox gives up owner's delivery lease, if owner holds it.
	ReleaseOutbox(ctx context.Context, requestID, owner string) error
	// RetryAt makes requestID due for delivery work at at, or earlier when
	// it already is.
	RetryAt(ctx context.Context, requestID string, at time.Time) error
	// WakeDue queues a job for each of at most n requests due at or before
	// now, and removes them from the retry schedule; it returns how many.
	WakeDue(ctx context.Context, now time.Time, n int) (int, error)
	// Depth is the number of jobs queued and not done, and of requests
	// waiting for a retry.
	Depth(ctx context.Context) (jobs, retries int64, err error)
}
