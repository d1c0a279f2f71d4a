package state

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

var (
	t1  = time.Date(2026, 4, 1, 10, 0, 0, 0, time.UTC)
	t2  = t1.Add(time.Minute)
	t3  = t1.Add(2 * time.Minute)
	now = t1.Add(time.Hour) // the clock merge is given
)

func ptr[T any](v T) *T { return &v }

// TestMergeStates is every (current state × update state) pair for updates
// that carry nothing but their state: the state machine of invariant 1.
func TestMergeStates(t *testing.T) {
	const (
		A = Applied
		D = Duplicate
		S = Stale
		U = Unknown
	)
	updates := []runcomfy.State{
		runcomfy.StateUnknown, runcomfy.StateQueued, runcomfy.StateRunning,
		runcomfy.StateSucceeded, runcomfy.StateFailed, runcomfy.StateCancelled,
	}
	// Rows: the current record's state; columns: updates, in the order above.
	tests := []struct {
		name string
		cur  *runcomfy.State // nil: no record yet
		want [6]Outcome
	}{
		{"no record", nil, [6]Outcome{U, A, A, A, A, A}},
		// A record cannot be stored with an unknown state; if one were, any
		// known state repairs it.
		{"unknown", ptr(runcomfy.StateUnknown), [6]Outcome{U, A, A, A, A, A}},
		{"queued", ptr(runcomfy.StateQueued), [6]Outcome{U, D, A, A, A, A}},
		{"running", ptr(runcomfy.StateRunning), [6]Outcome{U, S, D, A, A, A}},
		{"succeeded", ptr(runcomfy.StateSucceeded), [6]Outcome{U, S, S, D, S, S}},
		{"failed", ptr(runcomfy.StateFailed), [6]Outcome{U, S, S, S, D, S}},
		{"cancelled", ptr(runcomfy.StateCancelled), [6]Outcome{U, S, S, S, S, D}},
	}
	for _, tt := range tests {
		for i, us := range updates {
			t.Run(fmt.Sprintf("%s<-%v", tt.name, us), func(t *testing.T) {
				var cur *Record
				if tt.cur != nil {
					cur = &Record{RequestID: "req-1", DeploymentID: "dep-1", State: *tt.cur, CreatedAt: t1, UpdatedAt: t1, Seq: 3}
				}
				u := &Update{RequestID: "req-1", DeploymentID: "dep-1", State: us}
				next, got := mergeChecked(t, cur, u)
				if want := tt.want[i]; got != want {
					t.Fatalf("merge(%s, %v) = %v, want %v", tt.name, us, got, want)
				}
				if got != Applied {
					return
				}
				wantSeq := int64(1)
				if cur != nil {
					wantSeq = cur.Seq + 1
				}
				if next.State != us || next.Seq != wantSeq || !next.UpdatedAt.Equal(now) {
					t.Errorf("applied record is %v seq %d updated %v, want %v seq %d updated %v", next.State, next.Seq, next.UpdatedAt, us, wantSeq, now)
				}
			})
		}
	}
}

// TestMergeFields pins how an update's fields combine with the record's.
func TestMergeFields(t *testing.T) {
	queued := &Record{
		RequestID: "req-1", DeploymentID: "dep-1", State: runcomfy.StateQueued, UpstreamStatus: "in_queue",
		QueuePosition: ptr[int64](5), CreatedAt: t1, UpdatedAt: t1, Seq: 2,
	}
	running := &Record{
		RequestID: "req-1", DeploymentID: "dep-1", Owner: "tenant-a", State: runcomfy.StateRunning, UpstreamStatus: "in_progress",
		InstanceID: "inst-1", CreatedAt: t1, StartedAt: t2, UpdatedAt: t2, Seq: 4,
	}
	bare := &Record{RequestID: "req-1", State: runcomfy.StateRunning, CreatedAt: t1, UpdatedAt: t1, Seq: 1}
	succeeded := &Record{
		RequestID: "req-1", DeploymentID: "dep-1", State: runcomfy.StateSucceeded, UpstreamStatus: "succeeded",
		CreatedAt: t1, FinishedAt: t2, UpdatedAt: t2, Seq: 3,
	}
	failed := &Record{
		RequestID: "req-1", DeploymentID: "dep-1", State: runcomfy.StateFailed, UpstreamStatus: "failed",
		CreatedAt: t1, FinishedAt: t2, UpdatedAt: t2, Seq: 3,
	}
	outputs := json.RawMessage(`{"9":{"images":[{"url":"https://cdn.example/a.png"}]}}`)
	urls := []string{"https://cdn.example/a.png"}
	jobErr := &runcomfy.JobError{Type: "oom", Message: "out of memory", Code: "500"}

	attachedBy := func(tenant string) *Record {
		r := running.Clone()
		r.Owner, r.OwnerAttached = tenant, true
		return r
	}
	upd := func(s runcomfy.State, mods ...func(*Update)) *Update {
		u := &Update{RequestID: "req-1", State: s}
		for _, m := range mods {
			m(u)
		}
		return u
	}

	tests := []struct {
		name string
		cur  *Record
		u    *Update
		want Outcome
		// edit turns a copy of cur (or an empty record with the update's ids,
		// when cur is nil) into the expected record, apart from Seq and
		// UpdatedAt which merge always sets on an applied update.
		edit func(r *Record)
		// unsynced: the update, older than the record's state, does not
		// confirm it (SyncedAt stays).
		unsynced bool
	}{
		// Upstream status.
		{
			name: "advance replaces the upstream status",
			cur:  queued, u: upd(runcomfy.StateRunning, func(u *Update) { u.UpstreamStatus = "in_progress" }),
			want: Applied, edit: func(r *Record) {
				r.State, r.UpstreamStatus, r.QueuePosition = runcomfy.StateRunning, "in_progress", nil
				r.StartedAt = now // first seen running, as no report said when
			},
		},
		{
			name: "same rank fills an empty upstream status",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.UpstreamStatus = "running" }),
			want: Applied, edit: func(r *Record) { r.UpstreamStatus = "running" },
		},
		{
			name: "same rank keeps the upstream status",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.UpstreamStatus = "running" }),
			want: Duplicate,
		},

		// Instance id.
		{
			name: "same rank fills an empty instance id",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.InstanceID = "inst-9" }),
			want: Applied, edit: func(r *Record) { r.InstanceID = "inst-9" },
		},
		{
			name: "same rank keeps the instance id",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.InstanceID = "inst-9" }),
			want: Duplicate,
		},
		{
			name: "advance replaces the instance id",
			cur:  running, u: upd(runcomfy.StateFailed, func(u *Update) { u.InstanceID = "inst-9" }),
			want: Applied, edit: func(r *Record) {
				r.UpstreamStatus = ""
				r.State, r.InstanceID, r.FinishedAt = runcomfy.StateFailed, "inst-9", now
			},
		},
		{
			name: "advance without an instance id keeps it",
			cur:  running, u: upd(runcomfy.StateFailed),
			want: Applied, edit: func(r *Record) { r.UpstreamStatus = ""; r.State, r.FinishedAt = runcomfy.StateFailed, now },
		},

		// Owner and deployment are set once.
		{
			name: "owner is set when unknown",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source = "tenant-b", "callback" }),
			want: Applied, edit: func(r *Record) { r.Owner = "tenant-b" },
		},
		{
			name: "an owner by attaching is set as taken on trust",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source = "tenant-b", "attach" }),
			want: Applied, edit: func(r *Record) { r.Owner, r.OwnerAttached = "tenant-b", true },
		},
		{
			name: "a proven owner takes a request owned on trust",
			cur:  attachedBy("tenant-b"), u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source = "tenant-a", "callback" }),
			want: Applied, edit: func(r *Record) { r.Owner, r.OwnerAttached = "tenant-a", false },
		},
		{
			name: "the owner on trust's own callback changes nothing",
			cur:  attachedBy("tenant-b"), u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source = "tenant-b", "callback" }),
			want: Duplicate,
		},
		{
			name: "a claim is taken on trust and confirms nothing (synced_at stays)",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source, u.InstanceID = "tenant-b", "claim", "inst-7" }),
			want: Applied, edit: func(r *Record) { r.Owner, r.OwnerAttached, r.InstanceID = "tenant-b", true, "inst-7" },
		},
		{
			name: "another attach does not take a request owned on trust",
			cur:  attachedBy("tenant-b"), u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source = "tenant-c", "attach" }),
			want: Foreign,
		},
		{
			name: "an attach does not take a proven owner's request",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner, u.Source = "tenant-b", "attach" }),
			want: Foreign,
		},
		{
			name: "another owner's update is refused at the same rank",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.Owner = "tenant-b" }),
			want: Foreign,
		},
		{
			name: "another owner's update is refused on advance",
			cur:  running, u: upd(runcomfy.StateCancelled, func(u *Update) { u.Owner = "tenant-b" }),
			want: Foreign,
		},
		{
			name: "the owner's own update advances",
			cur:  running, u: upd(runcomfy.StateCancelled, func(u *Update) { u.Owner = "tenant-a" }),
			want: Applied, edit: func(r *Record) { r.UpstreamStatus = ""; r.State, r.FinishedAt = runcomfy.StateCancelled, now },
		},
		{
			name: "deployment is set when unknown",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.DeploymentID = "dep-2" }),
			want: Applied, edit: func(r *Record) { r.DeploymentID = "dep-2" },
		},
		{
			name: "another deployment's update is refused",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.DeploymentID = "dep-2" }),
			want: Stale,
		},
		{
			name: "another deployment's update cannot finish the request",
			cur:  running, u: upd(runcomfy.StateFailed, func(u *Update) { u.DeploymentID = "dep-2" }),
			want: Stale,
		},

		// Timestamps: the first report wins; terminal records get a FinishedAt,
		// and records that enter running a StartedAt, when no report gave one.
		{
			name: "a record seen running for the first time started then",
			cur:  queued, u: upd(runcomfy.StateRunning),
			want: Applied, edit: func(r *Record) {
				r.UpstreamStatus = ""
				r.State, r.QueuePosition, r.StartedAt = runcomfy.StateRunning, nil, now
			},
		},
		{
			name: "a record first seen running is stamped at creation",
			cur:  nil, u: upd(runcomfy.StateRunning, func(u *Update) { u.CreatedAt = t1 }),
			want: Applied, edit: func(r *Record) { r.State, r.CreatedAt, r.StartedAt = runcomfy.StateRunning, t1, now },
		},
		{
			name: "a record running before it had times is not stamped later",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.InstanceID = "inst-3" }),
			want: Applied, edit: func(r *Record) { r.InstanceID = "inst-3" },
		},
		{
			name: "a request cancelled in the queue never started",
			cur:  queued, u: upd(runcomfy.StateCancelled),
			want: Applied, edit: func(r *Record) {
				r.UpstreamStatus = ""
				r.State, r.QueuePosition, r.FinishedAt = runcomfy.StateCancelled, nil, now
			},
		},
		{
			name: "created_at is kept",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.CreatedAt = t3 }),
			want: Duplicate,
		},
		{
			name: "started_at is filled at the same rank",
			cur:  bare, u: upd(runcomfy.StateRunning, func(u *Update) { u.StartedAt = t3 }),
			want: Applied, edit: func(r *Record) { r.StartedAt = t3 },
		},
		{
			name: "started_at is kept on advance",
			cur:  running, u: upd(runcomfy.StateFailed, func(u *Update) { u.StartedAt, u.FinishedAt = t3, t3 }),
			want: Applied, edit: func(r *Record) { r.UpstreamStatus = ""; r.State, r.FinishedAt = runcomfy.StateFailed, t3 },
		},
		{
			name: "finished_at defaults to now on a terminal update",
			cur:  queued, u: upd(runcomfy.StateCancelled),
			want: Applied, edit: func(r *Record) {
				r.UpstreamStatus = ""
				r.State, r.QueuePosition, r.FinishedAt = runcomfy.StateCancelled, nil, now
			},
		},

		// Queue position: only while queued, and only downwards.
		{
			name: "queue position is taken when none is known",
			cur:  &Record{RequestID: "req-1", State: runcomfy.StateQueued, CreatedAt: t1, UpdatedAt: t1, Seq: 1},
			u:    upd(runcomfy.StateQueued, func(u *Update) { u.QueuePosition = ptr[int64](9) }),
			want: Applied, edit: func(r *Record) { r.QueuePosition = ptr[int64](9) },
		},
		{
			name: "queue position goes down",
			cur:  queued, u: upd(runcomfy.StateQueued, func(u *Update) { u.QueuePosition = ptr[int64](0) }),
			want: Applied, edit: func(r *Record) { r.QueuePosition = ptr[int64](0) },
		},
		{
			name: "a larger queue position is a late report",
			cur:  queued, u: upd(runcomfy.StateQueued, func(u *Update) { u.QueuePosition = ptr[int64](6) }),
			want: Duplicate,
		},
		{
			name: "the same queue position is a duplicate",
			cur:  queued, u: upd(runcomfy.StateQueued, func(u *Update) { u.QueuePosition = ptr[int64](5) }),
			want: Duplicate,
		},
		{
			name: "queue position is cleared when leaving queued",
			cur:  queued, u: upd(runcomfy.StateRunning),
			want: Applied, edit: func(r *Record) {
				r.UpstreamStatus = ""
				r.State, r.QueuePosition, r.StartedAt = runcomfy.StateRunning, nil, now
			},
		},
		{
			name: "queue position is cleared even if the advancing update has one",
			cur:  queued, u: upd(runcomfy.StateRunning, func(u *Update) { u.QueuePosition = ptr[int64](1) }),
			want: Applied, edit: func(r *Record) {
				r.UpstreamStatus = ""
				r.State, r.QueuePosition, r.StartedAt = runcomfy.StateRunning, nil, now
			},
		},
		{
			name: "a running record takes no queue position",
			cur:  running, u: upd(runcomfy.StateRunning, func(u *Update) { u.QueuePosition = ptr[int64](1) }),
			want: Duplicate,
		},

		// Outputs and errors.
		{
			name: "success takes outputs and urls",
			cur:  running, u: upd(runcomfy.StateSucceeded, func(u *Update) {
				u.Outputs, u.OutputURLs, u.FinishedAt, u.UpstreamStatus = outputs, urls, t3, "succeeded"
			}),
			want: Applied, edit: func(r *Record) {
				r.State, r.Outputs, r.OutputURLs, r.FinishedAt, r.UpstreamStatus = runcomfy.StateSucceeded, outputs, urls, t3, "succeeded"
			},
		},
		{
			name: "failure takes the error",
			cur:  running, u: upd(runcomfy.StateFailed, func(u *Update) { u.Error, u.UpstreamStatus = jobErr, "failed" }),
			want: Applied, edit: func(r *Record) {
				r.State, r.Error, r.UpstreamStatus, r.FinishedAt = runcomfy.StateFailed, jobErr, "failed", now
			},
		},

		// A terminal record never changes, even to gain information.
		{
			name: "a repeated success with outputs",
			cur:  succeeded, u: upd(runcomfy.StateSucceeded, func(u *Update) { u.Outputs, u.OutputURLs, u.InstanceID = outputs, urls, "inst-9" }),
			want: Duplicate,
		},
		{
			name: "a repeated failure with an error",
			cur:  failed, u: upd(runcomfy.StateFailed, func(u *Update) { u.Error = jobErr }),
			want: Duplicate,
		},

		// A first record.
		{
			name: "new record defaults created_at to now",
			u: upd(runcomfy.StateQueued, func(u *Update) {
				u.DeploymentID, u.UpstreamStatus, u.QueuePosition = "dep-1", "in_queue", ptr[int64](0)
			}),
			want: Applied, edit: func(r *Record) {
				r.DeploymentID, r.State, r.UpstreamStatus, r.QueuePosition, r.CreatedAt = "dep-1", runcomfy.StateQueued, "in_queue", ptr[int64](0), now
			},
		},
		{
			name: "new record keeps the reported times",
			u: upd(runcomfy.StateRunning, func(u *Update) {
				u.DeploymentID, u.Owner, u.InstanceID, u.CreatedAt, u.StartedAt = "dep-1", "tenant-a", "inst-1", t1, t2
				u.Source = "submit"
				u.QueuePosition = ptr[int64](3) // not queued: ignored
			}),
			want: Applied, edit: func(r *Record) {
				r.DeploymentID, r.Owner, r.State, r.InstanceID, r.CreatedAt, r.StartedAt = "dep-1", "tenant-a", runcomfy.StateRunning, "inst-1", t1, t2
			},
		},
		{
			name: "new terminal record defaults finished_at to now",
			u:    upd(runcomfy.StateFailed, func(u *Update) { u.Error = jobErr }),
			want: Applied, edit: func(r *Record) {
				r.State, r.Error, r.CreatedAt, r.FinishedAt = runcomfy.StateFailed, jobErr, now, now
			},
		},
		{
			name: "new terminal record keeps the reported finished_at",
			u:    upd(runcomfy.StateSucceeded, func(u *Update) { u.Outputs, u.OutputURLs, u.CreatedAt, u.FinishedAt = outputs, urls, t1, t3 }),
			want: Applied, edit: func(r *Record) {
				r.State, r.Outputs, r.OutputURLs, r.CreatedAt, r.FinishedAt = runcomfy.StateSucceeded, outputs, urls, t1, t3
			},
		},

		// Deadlines.
		{
			name: "the submit's answer sets the deadlines",
			cur:  queued, u: upd(runcomfy.StateQueued, func(u *Update) { u.Source, u.MaxQueue, u.MaxRun = "submit", time.Minute, time.Hour }),
			want: Applied, edit: func(r *Record) { r.MaxQueue, r.MaxRun = time.Minute, time.Hour },
		},
		{
			name: "the submit's answer after a callback moved it on still sets them",
			cur:  running, u: upd(runcomfy.StateQueued, func(u *Update) { u.Source, u.MaxRun = "submit", time.Hour }),
			want: Applied, edit: func(r *Record) { r.MaxRun = time.Hour }, unsynced: true,
		},
		{
			name: "only a submit sets deadlines",
			cur:  queued, u: upd(runcomfy.StateQueued, func(u *Update) { u.Source, u.MaxQueue = "callback", time.Minute }),
			want: Duplicate,
		},
		{
			name: "deadlines are set once",
			cur:  func() *Record { r := queued.Clone(); r.MaxRun = time.Hour; return r }(),
			u:    upd(runcomfy.StateQueued, func(u *Update) { u.Source, u.MaxQueue = "submit", time.Minute }),
			want: Duplicate,
		},
		{
			name: "a finished request takes no deadline",
			cur:  succeeded, u: upd(runcomfy.StateQueued, func(u *Update) { u.Source, u.MaxQueue = "submit", time.Minute }),
			want: Stale,
		},
		{
			name: "a deadline being kept is recorded",
			cur:  queued, u: upd(runcomfy.StateQueued, func(u *Update) { u.Source, u.Expired = "cancel", ErrorTypeMaxQueueDuration }),
			want: Applied, edit: func(r *Record) { r.Expired = ErrorTypeMaxQueueDuration },
		},
		{
			name: "a cancellation reported after the deadline's cancel carries its error",
			cur: func() *Record {
				r := queued.Clone()
				r.MaxQueue, r.Expired = time.Minute, ErrorTypeMaxQueueDuration
				return r
			}(),
			u:    upd(runcomfy.StateCancelled, func(u *Update) { u.Source, u.UpstreamStatus = "callback", "cancelled" }),
			want: Applied, edit: func(r *Record) {
				r.State, r.UpstreamStatus, r.QueuePosition, r.FinishedAt = runcomfy.StateCancelled, "cancelled", nil, now
				r.Error = &runcomfy.JobError{Type: ErrorTypeMaxQueueDuration, Message: "cancelled by the gateway: still queued after 1m0s"}
			},
		},
		{
			name: "a request that succeeded meanwhile keeps no deadline error",
			cur: func() *Record {
				r := running.Clone()
				r.MaxRun, r.Expired = time.Minute, ErrorTypeMaxRunDuration
				return r
			}(),
			u:    upd(runcomfy.StateSucceeded, func(u *Update) { u.Outputs, u.OutputURLs = outputs, urls }),
			want: Applied, edit: func(r *Record) {
				r.State, r.UpstreamStatus, r.Outputs, r.OutputURLs, r.FinishedAt = runcomfy.StateSucceeded, "", outputs, urls, now
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next, got := mergeChecked(t, tt.cur, tt.u)
			if got != tt.want {
				t.Fatalf("outcome = %v, want %v", got, tt.want)
			}
			if got != Applied {
				return
			}
			want := &Record{RequestID: tt.u.RequestID}
			if tt.cur != nil {
				want = tt.cur.Clone()
			}
			if tt.edit != nil {
				tt.edit(want)
			}
			want.Seq, want.UpdatedAt = 1, now
			if tt.u.Source != "claim" && !tt.unsynced {
				want.SyncedAt = now
			}
			if tt.cur != nil {
				want.Seq = tt.cur.Seq + 1
			}
			if !reflect.DeepEqual(next, want) {
				t.Errorf("merged record:\n got  %+v\n want %+v", next, want)
			}
		})
	}
}

// mergeChecked runs merge and checks what holds for every call: it is pure (cur
// and u unchanged), its result shares no memory with either, and it returns a
// record exactly when the outcome is Applied.
func mergeChecked(t *testing.T, cur *Record, u *Update) (*Record, Outcome) {
	t.Helper()
	var curBefore *Record
	if cur != nil {
		curBefore = cur.Clone()
	}
	uBefore := cloneUpdate(u)
	next, outcome := merge(cur, u, now)
	if (next != nil) != (outcome == Applied) {
		t.Fatalf("merge returned record %v with outcome %v; want a record exactly when Applied", next, outcome)
	}
	if !reflect.DeepEqual(u, uBefore) {
		t.Errorf("merge changed the update: %+v, was %+v", u, uBefore)
	}
	if !reflect.DeepEqual(cur, curBefore) {
		t.Errorf("merge changed the current record: %+v, was %+v", cur, curBefore)
	}
	if next == nil {
		return nil, outcome
	}
	result := next.Clone()
	scribble(next)
	if !reflect.DeepEqual(cur, curBefore) {
		t.Errorf("the merged record shares memory with the current one: %+v, was %+v", cur, curBefore)
	}
	if !reflect.DeepEqual(u, uBefore) {
		t.Errorf("the merged record shares memory with the update: %+v, was %+v", u, uBefore)
	}
	return result, outcome
}

func cloneUpdate(u *Update) *Update {
	c := *u
	c.Outputs = append(json.RawMessage(nil), u.Outputs...)
	c.OutputURLs = append([]string(nil), u.OutputURLs...)
	if u.QueuePosition != nil {
		c.QueuePosition = ptr(*u.QueuePosition)
	}
	if u.Error != nil {
		c.Error = ptr(*u.Error)
	}
	return &c
}

// scribble overwrites everything r points to.
func scribble(r *Record) {
	for i := range r.Outputs {
		r.Outputs[i] = 'x'
	}
	for i := range r.OutputURLs {
		r.OutputURLs[i] = "scribbled"
	}
	if r.QueuePosition != nil {
		*r.QueuePosition = -1
	}
	if r.Error != nil {
		r.Error.Message = "scribbled"
	}
}

func TestCloneIsDeep(t *testing.T) {
	tests := []struct {
		name string
		rec  *Record
	}{
		{"every field set", &Record{
			RequestID: "req-1", DeploymentID: "dep-1", Owner: "tenant-a", State: runcomfy.StateFailed,
			UpstreamStatus: "failed", QueuePosition: ptr[int64](2), InstanceID: "inst-1",
			Outputs: json.RawMessage(`{"9":{}}`), OutputURLs: []string{"https://a", "https://b"},
			Error:     &runcomfy.JobError{Type: "oom", Message: "out of memory", Code: "500"},
			CreatedAt: t1, StartedAt: t2, FinishedAt: t3, UpdatedAt: t3, Seq: 7,
		}},
		{"nothing optional set", &Record{RequestID: "req-2", State: runcomfy.StateQueued, Seq: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := json.Marshal(tt.rec)
			if err != nil {
				t.Fatal(err)
			}
			c := tt.rec.Clone()
			if c == tt.rec {
				t.Fatal("Clone returned the same pointer")
			}
			if !reflect.DeepEqual(c, tt.rec) {
				t.Fatalf("Clone = %+v, want %+v", c, tt.rec)
			}
			scribble(c)
			c.Seq, c.State, c.InstanceID, c.CreatedAt = 99, runcomfy.StateCancelled, "changed", t3

			after, err := json.Marshal(tt.rec)
			if err != nil {
				t.Fatalf("original no longer encodes after changing the clone: %v", err)
			}
			if string(after) != string(before) {
				t.Errorf("original changed with the clone:\n got  %s\n want %s", after, before)
			}
		})
	}
}

func TestOutcomeString(t *testing.T) {
	tests := []struct {
		o    Outcome
		want string
	}{
		{Applied, "applied"},
		{Duplicate, "duplicate"},
		{Stale, "stale"},
		{Unknown, "unknown"},
		{Foreign, "foreign"},
		{0, "invalid"},
	}
	for _, tt := range tests {
		if got := tt.o.String(); got != tt.want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(tt.o), got, tt.want)
		}
	}
}

func TestAdvanceTakesTheNewUpstreamStatus(t *testing.T) {
	now := time.Date(2026, 4, 1, 11, 0, 0, 0, time.UTC)
	cur := &Record{RequestID: "r", DeploymentID: "d", State: runcomfy.StateQueued, UpstreamStatus: "in_queue", Seq: 1}
	next, outcome := merge(cur, &Update{RequestID: "r", State: runcomfy.StateRunning, UpstreamStatus: "in_progress"}, now)
	if outcome != Applied || next.UpstreamStatus != "in_progress" {
		t.Fatalf("got %v %q, want applied with in_progress", outcome, next.UpstreamStatus)
	}
	// Same rank: the first text stays.
	_, outcome = merge(next, &Update{RequestID: "r", State: runcomfy.StateRunning, UpstreamStatus: "running"}, now)
	if outcome != Duplicate {
		t.Errorf("same-rank status text: got %v, want duplicate", outcome)
	}
}

func TestOwnerIsSetOnAFinishedRecordNobodyOwns(t *testing.T) {
	now := time.Date(2026, 4, 1, 11, 0, 0, 0, time.UTC)
	cur := &Record{RequestID: "r", DeploymentID: "d", State: runcomfy.StateSucceeded, Seq: 3}
	next, outcome := merge(cur, &Update{RequestID: "r", DeploymentID: "d", State: runcomfy.StateQueued, Owner: "tenant-a"}, now)
	if outcome != Applied || next.Owner != "tenant-a" || next.State != runcomfy.StateSucceeded || next.Seq != 4 {
		t.Fatalf("got %v %+v, want the owner set, the state kept, seq 4", outcome, next)
	}
	// Set once: another owner's update is refused.
	if _, outcome := merge(next, &Update{RequestID: "r", State: runcomfy.StateSucceeded, Owner: "tenant-b"}, now); outcome != Foreign {
		t.Errorf("second owner: got %v, want foreign", outcome)
	}
}
