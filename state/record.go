// Package state keeps the lifecycle of every tracked request: the Record, the one
// writer (Tracker.Apply) that moves it forward, and the Hub that fans published
// records out to this replica's watchers.
//
// Every change goes through Apply, whatever its source (submit answer, callback,
// poll, cancel answer). Apply enforces the invariants of the design notes:
// monotonic state (queued < running < terminal, terminal is final), a per-request
// seq assigned atomically with the write and the publish, and duplicates and
// stale updates ignored and counted.
package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/comfygate/comfygate/internal/status"
	"github.com/comfygate/comfygate/runcomfy"
)

// Record is everything the gateway knows about one request. It is stored and
// published whole, so a watcher that missed events can always catch up from the
// latest record alone.
type Record struct {
	RequestID    string `json:"request_id"`
	DeploymentID string `json:"deployment_id"`
	// Owner is the tenant that submitted the request (empty until tenants exist).
	Owner string `json:"owner,omitempty"`
	// OwnerAttached: Owner was taken on trust (an attach, a claim, a
	// rebuild for its watchers), not proven (the submit, a callback URL
	// issued to the tenant). A proven owner takes the request from it: after
	// a record was lost, a tenant with the attach permission may have
	// attached it before the owner's callback came.
	OwnerAttached  bool           `json:"owner_attached,omitempty"`
	State          runcomfy.State `json:"state"`
	UpstreamStatus string         `json:"upstream_status,omitempty"`
	QueuePosition  *int64         `json:"queue_position,omitempty"`
	InstanceID     string         `json:"instance_id,omitempty"`
	// Outputs is the per-node outputs document exactly as upstream sent it.
	Outputs    json.RawMessage    `json:"outputs,omitempty"`
	OutputURLs []string           `json:"output_urls,omitempty"`
	Error      *runcomfy.JobError `json:"error,omitempty"`
	CreatedAt  time.Time          `json:"created_at,omitzero"`
	StartedAt  time.Time          `json:"started_at,omitzero"`
	FinishedAt time.Time          `json:"finished_at,omitzero"`
	UpdatedAt  time.Time          `json:"updated_at,omitzero"`
	// Seq is 1 for the first write and grows by one with every applied update.
	Seq int64 `json:"seq"`
	// Epoch names this incarnation of the record: it is chosen when the record
	// is created in the store (seq 1) and kept by every later write, so a
	// record that was lost (a Redis restarted empty, an eviction) and created
	// again is told apart from the one before, whose seqs it repeats. A state
	// is identified by (Epoch, Seq).
	Epoch int64 `json:"epoch,omitempty"`
	// SyncedAt is when RunComfy last confirmed this state: the last applied
	// update, or a later observation that found nothing new (Toucher).
	SyncedAt time.Time `json:"synced_at,omitzero"`
	// Webhooks are the endpoints the request's events go to, set by its
	// submit (the caller's webhook and the tenant's defaults) and kept.
	Webhooks []WebhookTarget `json:"webhooks,omitempty"`
	// Storage is the copy of the outputs to the operator's object storage,
	// once the request succeeded; nil without storage.
	Storage *Storage `json:"storage,omitempty"`
	// MaxQueue and MaxRun are the request's deadlines, set by its submit
	// and kept: the reconciler cancels a request still queued MaxQueue
	// after its creation, or still running MaxRun after its start. Zero:
	// none.
	MaxQueue time.Duration `json:"max_queue,omitempty"`
	MaxRun   time.Duration `json:"max_run,omitempty"`
	// Expired is the deadline (an ErrorTypeMax* type) at which the gateway
	// is cancelling the request, recorded before the cancel is sent: the
	// request's cancellation, whichever source reports it first (the
	// cancel's answer, RunComfy's callback), ends it with that error.
	Expired string `json:"expired,omitempty"`
	// Cancelling: RunComfy answered a cancel of the unfinished request (a
	// caller's, or the gateway's at a deadline); it ends when RunComfy says
	// so, and no deadline sends another.
	Cancelling bool `json:"cancelling,omitempty"`
}

// The error types of a request the gateway cancelled at a deadline.
const (
	ErrorTypeMaxQueueDuration = "max_queue_duration_exceeded"
	ErrorTypeMaxRunDuration   = "max_run_duration_exceeded"
)

// deadlineError is the error of a request cancelled at its deadline kind.
func deadlineError(r *Record, kind string) *runcomfy.JobError {
	st, limit := "queued", r.MaxQueue
	if kind == ErrorTypeMaxRunDuration {
		st, limit = "running", r.MaxRun
	}
	return &runcomfy.JobError{Type: kind, Message: fmt.Sprintf("cancelled by the gateway: still %s after %s", st, limit)}
}

// Deadline is when r is cancelled if it is still in its state, and the
// error type it then ends with; kind is empty when no deadline applies (no
// limit for its state, or it has finished). A deadline that passed and is
// being kept (Expired) stays r's until it ends, whatever its state: a job
// that started before its queue deadline's cancel took effect is still
// cancelled.
func (r *Record) Deadline() (at time.Time, kind string) {
	switch {
	case r.Terminal():
	case r.Expired == ErrorTypeMaxQueueDuration:
		return r.CreatedAt.Add(r.MaxQueue), r.Expired
	case r.Expired == ErrorTypeMaxRunDuration:
		return r.StartedAt.Add(r.MaxRun), r.Expired
	case r.State == runcomfy.StateQueued && r.MaxQueue > 0 && !r.CreatedAt.IsZero():
		return r.CreatedAt.Add(r.MaxQueue), ErrorTypeMaxQueueDuration
	case r.State == runcomfy.StateRunning && r.MaxRun > 0 && !r.StartedAt.IsZero():
		return r.StartedAt.Add(r.MaxRun), ErrorTypeMaxRunDuration
	}
	return time.Time{}, ""
}

// Position is a point in a request's history: the (epoch, seq) of a state.
type Position struct {
	Epoch, Seq int64
}

// Position returns where r stands in its request's history.
func (r *Record) Position() Position { return Position{Epoch: r.Epoch, Seq: r.Seq} }

// Terminal reports whether the request has finished.
func (r *Record) Terminal() bool { return r.State.Terminal() }

// Final reports whether the record will change no more: the request has
// finished, and the copy of its outputs, when there is one, has ended. A
// watch ends at the final state.
func (r *Record) Final() bool {
	return r.Terminal() && (r.Storage == nil || r.Storage.State != StoragePending)
}

// Clone returns a deep copy. Stores hand out and keep copies, so that a record
// held by a caller never changes under it, as with one that went through Redis.
func (r *Record) Clone() *Record {
	c := *r
	c.Outputs = slices.Clone(r.Outputs)
	if r.QueuePosition != nil {
		p := *r.QueuePosition
		c.QueuePosition = &p
	}
	c.OutputURLs = slices.Clone(r.OutputURLs)
	c.Webhooks = slices.Clone(r.Webhooks)
	c.Storage = r.Storage.Clone()
	if r.Error != nil {
		e := *r.Error
		c.Error = &e
	}
	return &c
}

// Update is one observation of a request, from any source. Zero fields mean "not
// observed", never "cleared".
type Update struct {
	RequestID    string
	DeploymentID string
	// Source names where the observation came from. It decides whether the
	// update proves its owner and whether it confirms the state (SyncedAt).
	Source         Source
	State          runcomfy.State
	UpstreamStatus string
	QueuePosition  *int64
	InstanceID     string
	Outputs        json.RawMessage
	OutputURLs     []string
	Error          *runcomfy.JobError
	CreatedAt      time.Time
	StartedAt      time.Time
	FinishedAt     time.Time
	Owner          string
	// Webhooks, from a submit, are the request's webhook targets; a record
	// takes them once.
	Webhooks []WebhookTarget
	// Storage, from the copier (SourceStorage), is where the copy of the
	// outputs stands.
	Storage *Storage
	// MaxQueue and MaxRun, from a submit, are the request's deadlines; a
	// record takes them once.
	MaxQueue, MaxRun time.Duration
	// Expired, from the reconciler, says it is cancelling the request at
	// that deadline (Record.Expired).
	Expired string
	// Cancelling, from a cancel's answer, says RunComfy took the cancel
	// (Record.Cancelling).
	Cancelling bool
	// ObservedAt is when RunComfy said what the update says, for one
	// applied later than that (kept while the store was down): the record's
	// SyncedAt, so that a read does not take an old word for a fresh one.
	// Zero: when it is applied.
	ObservedAt time.Time
}

// syncedAt is the SyncedAt a record that u confirms takes, applied at now.
func (u *Update) syncedAt(now time.Time) time.Time {
	if !u.ObservedAt.IsZero() && u.ObservedAt.Before(now) {
		return u.ObservedAt
	}
	return now
}

// Source is where an observation of a request came from.
type Source string

// The sources of updates.
const (
	// SourceSubmit: RunComfy's answer to the submit.
	SourceSubmit Source = "submit"
	// SourceCallback: a RunComfy callback, to a URL issued to the owner.
	SourceCallback Source = "callback"
	// SourcePoll: the reconciler's read of RunComfy.
	SourcePoll Source = "poll"
	// SourceCancel: RunComfy's answer to a cancel.
	SourceCancel Source = "cancel"
	// SourceStatus and SourceResult: a client's read, passed through.
	SourceStatus Source = "status"
	SourceResult Source = "result"
	// SourceClaim: a tenant that may attach claims a record nobody owns.
	SourceClaim Source = "claim"
	// SourceAttach: a read of a request the gateway had no record of, by a
	// tenant that may attach it.
	SourceAttach Source = "attach"
	// SourceRebuild: a read of RunComfy that makes a lost record again, for
	// an owner the gateway held on trust (or none).
	SourceRebuild Source = "rebuild"
	// SourceRestore: the same, for an owner the gateway had proven: its own
	// description of the request (its watchers', its schedule's) is the
	// proof, as good as the record it was taken from.
	SourceRestore Source = "restore"
	// SourceStorage: the copier's report on the copy of the outputs; the
	// gateway's own work, not RunComfy's word.
	SourceStorage Source = "storage"
)

// proves reports whether u's owner is proven: the submit's tenant, or the
// tenant a signed callback URL was issued to. Every other owner an update
// names (an attach, a claim, a rebuild for watchers) is taken on trust.
func (u *Update) proves() bool {
	return u.Source == SourceSubmit || u.Source == SourceCallback || u.Source == SourceRestore
}

// ownerChange is the owner u gives the record r: a record nobody owns takes
// u's owner; one owned on trust is taken by another, proven owner. ok is
// false when r's owner stays as it is.
func ownerChange(r *Record, u *Update) (owner string, attached, ok bool) {
	switch {
	case u.Owner == "":
		return "", false, false
	case r.Owner == "":
		return u.Owner, !u.proves(), true
	case r.OwnerAttached && u.proves() && u.Owner != r.Owner:
		return u.Owner, false, true
	}
	return "", false, false
}

// webhooksChange reports whether u sets r's webhook targets: only the
// submit's answer names them, or a rebuild of a lost record from the
// gateway's own description of it (SourceRestore), and a record takes them
// once (the submit's answer may come after a callback created the record).
func webhooksChange(r *Record, u *Update) bool {
	return len(u.Webhooks) > 0 && len(r.Webhooks) == 0 && namesSubmit(u)
}

// deadlinesChange reports whether u sets r's deadlines: as with webhooks,
// only the submit's answer names them, or a rebuild, once.
func deadlinesChange(r *Record, u *Update) bool {
	return (u.MaxQueue > 0 || u.MaxRun > 0) && r.MaxQueue == 0 && r.MaxRun == 0 && namesSubmit(u)
}

// namesSubmit reports whether u may carry what the submit set: the submit's
// answer itself, or the gateway's description of the request when it
// restores a lost record.
func namesSubmit(u *Update) bool { return u.Source == SourceSubmit || u.Source == SourceRestore }

// confirms reports whether u is RunComfy's word on the request now, which
// makes the record fresh (SyncedAt): not an owner claim, which only repeats
// the stored state.
func (u *Update) confirms() bool { return u.Source != SourceClaim && u.Source != SourceStorage }

// reads reports whether u is an answer RunComfy gave to a read just made (a
// poll, a status or result read), the only kind of observation that confirms
// an unchanged state: a duplicate callback may be a late retry of an old one.
func (u *Update) reads() bool {
	switch u.Source {
	case SourcePoll, SourceStatus, SourceResult, SourceRebuild, SourceRestore, SourceAttach:
		return true
	}
	return false
}

// Outcome says what Apply did with an update.
type Outcome int

// Outcomes of Apply.
const (
	// Applied: the record changed; it was stored with the next seq and published.
	Applied Outcome = iota + 1
	// Duplicate: the update says nothing the record does not already say.
	Duplicate
	// Stale: the update would move the request backwards, change a finished one,
	// or names another deployment than the request's.
	Stale
	// Unknown: the update carries no state the gateway understands; nothing stored.
	Unknown
	// Foreign: the update names an owner other than the request's (a callback
	// whose URL was issued to another tenant, an attach racing the owner's
	// own record): nothing stored.
	Foreign
)

// String names the outcome for logs and metrics labels.
func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Duplicate:
		return "duplicate"
	case Stale:
		return "stale"
	case Unknown:
		return "unknown"
	case Foreign:
		return "foreign"
	default:
		return "invalid"
	}
}

// Rank orders states: an update may only keep or raise the rank of a record. The
// three terminal states share the top rank, so the first terminal state wins.
// Stores may check it again when they write (the Redis script does).
func Rank(s runcomfy.State) int { return status.Of(s).Rank }

// advances reports whether u would move cur to a higher rank (or create it); the
// tracker uses it to decide whether fetching missing outputs is worth a call.
func advances(cur *Record, u *Update) bool {
	return cur == nil || Rank(u.State) > Rank(cur.State)
}

// merge computes the record that u makes of cur (nil: no record yet). It is pure:
// the tracker stores what it returns only when the outcome is Applied.
func merge(cur *Record, u *Update, now time.Time) (*Record, Outcome) {
	ur := Rank(u.State)
	if ur == 0 {
		return nil, Unknown
	}
	if cur == nil {
		next := &Record{RequestID: u.RequestID, DeploymentID: u.DeploymentID}
		apply(next, u, true)
		next.Seq = 1
		next.UpdatedAt = now
		if u.confirms() {
			next.SyncedAt = u.syncedAt(now)
		}
		if next.CreatedAt.IsZero() {
			next.CreatedAt = now
		}
		stamp(next, now, true)
		return next, Applied
	}
	cr := Rank(cur.State)
	switch {
	case u.Owner != "" && cur.Owner != "" && u.Owner != cur.Owner && !(cur.OwnerAttached && u.proves()):
		// Ownership is set once, by whoever proves it first (the submit,
		// or a callback URL issued to the tenant); another tenant's
		// observation must not touch the request. Only an owner by
		// attaching gives way, to a proven one.
		return nil, Foreign
	case u.DeploymentID != "" && cur.DeploymentID != "" && u.DeploymentID != cur.DeploymentID:
		// A request belongs to one deployment: an observation made under another
		// (a callback URL of another deployment) must not touch it.
		return nil, Stale
	case cur.Terminal() || ur < cr:
		// The state stays as it is. Ownership is not state: an update that
		// names the owner of a request nobody owns yet still sets it (the
		// submit's answer can arrive after the request's last callback).
		owner, attached, ok := ownerChange(cur, u)
		hooks, stored, limits := webhooksChange(cur, u), storageChange(cur, u), !cur.Terminal() && deadlinesChange(cur, u)
		if ok || hooks || stored || limits {
			next := cur.Clone()
			if ok {
				next.Owner, next.OwnerAttached = owner, attached
			}
			if hooks {
				next.Webhooks = slices.Clone(u.Webhooks)
			}
			if stored {
				next.Storage = u.Storage.Clone()
			}
			if limits {
				next.MaxQueue, next.MaxRun = u.MaxQueue, u.MaxRun
			}
			next.Seq = cur.Seq + 1
			next.UpdatedAt = now
			return next, Applied
		}
		if cur.Terminal() && u.State == cur.State {
			return nil, Duplicate
		}
		return nil, Stale
	}
	next := cur.Clone()
	changed := apply(next, u, ur > cr)
	if !changed {
		return nil, Duplicate
	}
	next.Seq = cur.Seq + 1
	next.UpdatedAt = now
	if u.confirms() {
		next.SyncedAt = u.syncedAt(now)
	}
	stamp(next, now, ur > cr)
	return next, Applied
}

// stamp sets the times of the states r has reached that no report gave:
// a request that has just entered running (entered: a record that was
// running before it had times is left without) started no later than now,
// and one seen final finished no later than now. (The first time each was
// seen, whichever source saw it: later observations keep them.)
func stamp(r *Record, now time.Time, entered bool) {
	if entered && r.State == runcomfy.StateRunning && r.StartedAt.IsZero() {
		r.StartedAt = now
	}
	if r.Terminal() && r.FinishedAt.IsZero() {
		r.FinishedAt = now
	}
}

// apply copies what u observed into r and reports whether anything changed. With
// advance set, u moves r to u's state; otherwise u has r's rank and only adds
// information (a queue position that went down, an instance id, a timestamp).
func apply(r *Record, u *Update, advance bool) bool {
	changed := false
	if advance {
		r.State = u.State
		changed = true
		if u.State != runcomfy.StateQueued {
			r.QueuePosition = nil
		}
		if r.Terminal() {
			r.Cancelling = false // it ended
		}
	}
	// The raw status describes the state: a move to a new state takes the new
	// one's text, even none (the in_queue callback has none), so a running record
	// never keeps "in_queue".
	switch {
	case advance:
		r.UpstreamStatus = u.UpstreamStatus
	case u.UpstreamStatus != "" && r.UpstreamStatus == "":
		r.UpstreamStatus = u.UpstreamStatus
		changed = true
	}
	if r.DeploymentID == "" && u.DeploymentID != "" {
		r.DeploymentID = u.DeploymentID
		changed = true
	}
	if owner, attached, ok := ownerChange(r, u); ok {
		r.Owner, r.OwnerAttached = owner, attached
		changed = true
	}
	if webhooksChange(r, u) {
		r.Webhooks = slices.Clone(u.Webhooks)
		changed = true
	}
	if deadlinesChange(r, u) {
		r.MaxQueue, r.MaxRun = u.MaxQueue, u.MaxRun
		changed = true
	}
	if u.Expired != "" && r.Expired == "" && !r.Terminal() {
		r.Expired = u.Expired
		changed = true
	}
	if u.Cancelling && !r.Cancelling && !r.Terminal() {
		r.Cancelling = true
		changed = true
	}
	if advance && r.State == runcomfy.StateCancelled && r.Expired != "" && r.Error == nil {
		// The deadline's error, rather than anything RunComfy says of a
		// cancellation the gateway asked for.
		r.Error = deadlineError(r, r.Expired)
	}
	// A queue position only goes down: a larger one is an older observation that
	// arrived late.
	if r.State == runcomfy.StateQueued && u.QueuePosition != nil &&
		(r.QueuePosition == nil || *u.QueuePosition < *r.QueuePosition) {
		p := *u.QueuePosition
		r.QueuePosition = &p
		changed = true
	}
	if u.InstanceID != "" && u.InstanceID != r.InstanceID && (advance || r.InstanceID == "") {
		r.InstanceID = u.InstanceID
		changed = true
	}
	if len(u.Outputs) > 0 && len(r.Outputs) == 0 {
		r.Outputs = slices.Clone(u.Outputs) // like every other field: merge shares no memory with u
		r.OutputURLs = slices.Clone(u.OutputURLs)
		changed = true
	}
	if u.Error != nil && r.Error == nil {
		e := *u.Error
		r.Error = &e
		changed = true
	}
	changed = setTime(&r.CreatedAt, u.CreatedAt) || changed
	changed = setTime(&r.StartedAt, u.StartedAt) || changed
	changed = setTime(&r.FinishedAt, u.FinishedAt) || changed
	return changed
}

// setTime fills an unset timestamp; a set one is kept (the first report wins).
func setTime(dst *time.Time, v time.Time) bool {
	if v.IsZero() || !dst.IsZero() {
		return false
	}
	*dst = v
	return true
}
