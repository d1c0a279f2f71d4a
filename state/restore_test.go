package state_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// lossClock is a clock the tests move by hand, shared by the store (its
// expiry) and the trackers (UpdatedAt, retention, epochs).
type lossClock struct {
	mu sync.Mutex
	t  time.Time
}

func newLossClock() *lossClock {
	return &lossClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *lossClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *lossClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lossStore is the memory backend, shared by replicas, that can lose its
// data as a Redis restarted empty does: lose deletes every record it saved
// and the copies queued for them. Each replica sees it through a lossView,
// the state.LossDetector. It counts the reads and writes of records, and
// can fail the next read of a request.
type lossStore struct {
	*memory.Backend
	copies state.WorkQueue

	mu         sync.Mutex
	ids        map[string]bool // every request saved
	generation int             // how many losses were reported
	failGet    map[string]error
	afterGet   map[string]func()
	gets       int
	saves      int
}

func newLossStore(clock *lossClock) *lossStore {
	b := memory.New(clock.now)
	return &lossStore{Backend: b, copies: b.Queue("copies"), ids: map[string]bool{}, failGet: map[string]error{}, afterGet: map[string]func(){}}
}

func (s *lossStore) Get(ctx context.Context, requestID string) (*state.Record, error) {
	s.mu.Lock()
	s.gets++
	err, fail := s.failGet[requestID]
	delete(s.failGet, requestID)
	after := s.afterGet[requestID]
	delete(s.afterGet, requestID)
	s.mu.Unlock()
	if fail {
		return nil, err
	}
	rec, err := s.Backend.Get(ctx, requestID)
	if after != nil {
		after()
	}
	return rec, err
}

// afterNextGet runs fn once the next Get of requestID has read the record,
// before that Get returns what it read: what fn changes comes between the
// read and whatever its caller does next.
func (s *lossStore) afterNextGet(requestID string, fn func()) {
	s.mu.Lock()
	s.afterGet[requestID] = fn
	s.mu.Unlock()
}

func (s *lossStore) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	s.saved(rec.RequestID)
	return s.Backend.Save(ctx, rec, ttl)
}

func (s *lossStore) SaveWithEvent(ctx context.Context, rec *state.Record, ttl time.Duration, due time.Time, forget bool, ev *state.Event) error {
	s.saved(rec.RequestID)
	return s.Backend.SaveWithEvent(ctx, rec, ttl, due, forget, ev)
}

func (s *lossStore) saved(requestID string) {
	s.mu.Lock()
	s.ids[requestID] = true
	s.saves++
	s.mu.Unlock()
}

// lose deletes every record and queued copy; with report, the replicas'
// next Lost says so (a loss the store cannot tell is reported by nobody).
func (s *lossStore) lose(ctx context.Context, t *testing.T, report bool) {
	t.Helper()
	s.mu.Lock()
	ids := make([]string, 0, len(s.ids))
	for id := range s.ids {
		ids = append(ids, id)
	}
	if report {
		s.generation++
	}
	s.mu.Unlock()
	for _, id := range ids {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := s.copies.Done(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// failNextGet makes the next Get of requestID fail with err.
func (s *lossStore) failNextGet(requestID string, err error) {
	s.mu.Lock()
	s.failGet[requestID] = err
	s.mu.Unlock()
}

// calls is how many records were read and written so far.
func (s *lossStore) calls() (gets, saves int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets, s.saves
}

// lossView is one replica's view of a lossStore: a state.LossDetector that,
// as the Redis backend does, answers false on its first call and true once
// for each loss since its previous call.
type lossView struct {
	*lossStore
	asked   bool
	seen    int
	answers []bool
}

func (s *lossStore) replica() *lossView { return &lossView{lossStore: s} }

func (v *lossView) Lost(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	lost := v.asked && v.seen != v.generation
	v.asked, v.seen = true, v.generation
	v.answers = append(v.answers, lost)
	return lost, nil
}

// lostAnswers are the answers Lost gave so far.
func (v *lossView) lostAnswers() []bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.answers)
}

var _ state.LossDetector = (*lossView)(nil)

// lossOutputs are the outputs of the requests that succeed here, also what
// upstream's result answers.
var lossOutputs = []byte(`{"9":{"images":[{"url":"https://x/a.png"}]}}`)

// restoreResults answers every result read with a success and lossOutputs.
type restoreResults struct{}

func (restoreResults) Result(_ context.Context, _, requestID string) (*runcomfy.ResultResponse, error) {
	return &runcomfy.ResultResponse{RequestID: requestID, Status: "succeeded", State: runcomfy.StateSucceeded, Outputs: lossOutputs, OutputURLs: []string{"https://x/a.png"}}, nil
}

var (
	hooksAll = []state.WebhookTarget{{URL: "https://hooks.example/all", Kinds: state.KindQueued | state.KindRunning | state.KindOutput | state.KindTerminal}}
	hooksEnd = []state.WebhookTarget{{URL: "https://hooks.example/end", Kinds: state.KindTerminal}}
)

const lossRetention = time.Hour

// newLossTracker is a replica's Tracker on store, with the store's copy
// queue, clock's time and lossRetention.
func newLossTracker(t *testing.T, store state.Store, s *lossStore, clock *lossClock) *state.Tracker {
	t.Helper()
	tr, err := state.NewTracker(state.TrackerConfig{Store: store, Results: restoreResults{}, Copies: s.copies, Retention: lossRetention, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// mustApply applies u and returns the record and outcome.
func mustApply(ctx context.Context, t *testing.T, tr *state.Tracker, u state.Update) (*state.Record, state.Outcome) {
	t.Helper()
	rec, outcome, err := tr.Apply(ctx, u)
	if err != nil {
		t.Fatalf("Apply %s %s: %v", u.RequestID, u.State, err)
	}
	return rec, outcome
}

// submitHooked records the submit of requestID by team, with hooks and a
// run deadline.
func submitHooked(ctx context.Context, t *testing.T, tr *state.Tracker, requestID string, hooks []state.WebhookTarget) *state.Record {
	t.Helper()
	rec, _ := mustApply(ctx, t, tr, state.Update{RequestID: requestID, DeploymentID: "dep-restore", Source: state.SourceSubmit,
		State: runcomfy.StateQueued, Owner: "team", Webhooks: hooks, MaxRun: 30 * time.Minute})
	return rec
}

// storedSuccess moves requestID to succeeded, with lossOutputs, by a
// callback, and then its copy to stored.
func storedSuccess(ctx context.Context, t *testing.T, tr *state.Tracker, requestID, owner string) *state.Record {
	t.Helper()
	return storedSuccessFrom(ctx, t, tr, state.SourceCallback, requestID, owner)
}

// storedSuccessFrom is storedSuccess with the success reported by source.
func storedSuccessFrom(ctx context.Context, t *testing.T, tr *state.Tracker, source state.Source, requestID, owner string) *state.Record {
	t.Helper()
	mustApply(ctx, t, tr, state.Update{RequestID: requestID, DeploymentID: "dep-restore", Source: source, State: runcomfy.StateSucceeded, Outputs: lossOutputs, Owner: owner})
	rec, _ := mustApply(ctx, t, tr, state.Update{RequestID: requestID, Source: state.SourceStorage, State: runcomfy.StateSucceeded,
		Storage: &state.Storage{State: state.StorageStored, Objects: []state.StoredObject{{Node: "9", File: "a.png", Key: "k/a.png", Size: 3, SHA256: "ab"}}}})
	if rec.Storage == nil || rec.Storage.State != state.StorageStored {
		t.Fatalf("%s's storage = %+v, want stored", requestID, rec.Storage)
	}
	return rec
}

// mustGetRecord returns requestID's stored record, read past the
// lossStore's counts and failures.
func mustGetRecord(ctx context.Context, t *testing.T, s *lossStore, requestID string) *state.Record {
	t.Helper()
	rec, err := s.Backend.Get(ctx, requestID)
	if err != nil {
		t.Fatalf("Get %s: %v", requestID, err)
	}
	return rec
}

// epochEvents are the events queued for requestID in epoch, in order.
func epochEvents(ctx context.Context, t *testing.T, s *lossStore, requestID string, epoch int64) []*state.Event {
	t.Helper()
	all, err := s.Events(ctx, requestID)
	if err != nil {
		t.Fatal(err)
	}
	var out []*state.Event
	for _, ev := range all {
		if ev.Epoch == epoch {
			out = append(out, ev)
		}
	}
	return out
}

// settle lets the time a restore holds its events back pass, and has each
// tracker look for a loss again, which queues the events due.
func settle(ctx context.Context, t *testing.T, clock *lossClock, trackers ...*state.Tracker) {
	t.Helper()
	clock.advance(state.RestoreSettle)
	for _, tr := range trackers {
		if _, err := tr.RestoreLost(ctx); err != nil {
			t.Fatalf("RestoreLost after the settle: %v", err)
		}
	}
}

// confirm has a poll of RunComfy confirm the state each request's stored
// record stands in (a duplicate, which marks the record synced), then, a
// settle later (an unconfirmed record is looked at again no sooner), has tr
// look for a loss again: the held event of an unfinished record put back is
// queued only once RunComfy confirmed its state.
func confirm(ctx context.Context, t *testing.T, clock *lossClock, s *lossStore, tr *state.Tracker, ids ...string) {
	t.Helper()
	for _, id := range ids {
		polled(ctx, t, tr, id, mustGetRecord(ctx, t, s, id).State)
	}
	clock.advance(state.RestoreSettle)
	if _, err := tr.RestoreLost(ctx); err != nil {
		t.Fatalf("RestoreLost after the poll: %v", err)
	}
}

// polled applies a poll of RunComfy that confirms st, the state requestID's
// record stands in: a duplicate, which marks the record synced.
func polled(ctx context.Context, t *testing.T, tr *state.Tracker, requestID string, st runcomfy.State) {
	t.Helper()
	if _, outcome := mustApply(ctx, t, tr, state.Update{RequestID: requestID, Source: state.SourcePoll, State: st}); outcome != state.Duplicate {
		t.Fatalf("%s: the confirming poll was %v, want a duplicate", requestID, outcome)
	}
}

// eventTypes names each event by its type and seq.
func eventTypes(evs []*state.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s@%d", ev.Type, ev.Seq)
	}
	return out
}

// queuedCopies are the requests whose copy is queued.
func queuedCopies(ctx context.Context, t *testing.T, s *lossStore, clock *lossClock) []string {
	t.Helper()
	ids, err := s.copies.Due(ctx, clock.now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

// TestRestoreLostPutsBackWhatTheStoreLost pins RestoreLost after the store
// reports a loss: every record the tracker remembers and the store lost is
// saved again as it stood (state, outputs, error, owner, webhooks,
// deadline) as seq 1 of a new epoch, with the event of its state queued for
// its webhooks (a finished one's by its final type); a succeeded one whose
// copy was pending has it queued again, one whose outputs were stored keeps
// them (the object store lost nothing) and is not copied again. The loss is reported
// once: the next call does nothing, and the restored records go on as
// usual.
func TestRestoreLostPutsBackWhatTheStoreLost(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	tr := newLossTracker(t, s.replica(), s, clock)

	submitHooked(ctx, t, tr, "req-queued", hooksAll)
	submitHooked(ctx, t, tr, "req-failed", hooksEnd)
	mustApply(ctx, t, tr, state.Update{RequestID: "req-failed", Source: state.SourceCallback, State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "oom", Message: "out of memory"}})
	submitHooked(ctx, t, tr, "req-ok", hooksAll)
	storedSuccess(ctx, t, tr, "req-ok", "team")
	submitHooked(ctx, t, tr, "req-copying", hooksAll)
	mustApply(ctx, t, tr, state.Update{RequestID: "req-copying", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
	if _, err := tr.RestoreLost(ctx); err != nil { // the first Lost: nothing lost yet
		t.Fatal(err)
	}
	before := map[string]*state.Record{}
	for _, id := range []string{"req-queued", "req-failed", "req-ok", "req-copying"} {
		before[id] = mustGetRecord(ctx, t, s, id)
	}

	clock.advance(time.Minute)
	s.lose(ctx, t, true)
	n, err := tr.RestoreLost(ctx)
	if err != nil || n != 4 {
		t.Fatalf("RestoreLost = %d, %v; want 4 restored", n, err)
	}
	// Each event waits until the other replicas have had time to put back,
	// or move on, what they remembered; nothing did here.
	for _, id := range []string{"req-queued", "req-failed", "req-ok", "req-copying"} {
		if rec := mustGetRecord(ctx, t, s, id); len(epochEvents(ctx, t, s, id, rec.Epoch)) != 0 {
			t.Errorf("%s: an event was queued with the restore, before the settle", id)
		}
	}
	clock.advance(state.RestoreSettle)
	if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
		t.Fatalf("RestoreLost after the settle = %d, %v; want 0 restored", n, err)
	}
	settledAt := clock.now()
	// The final ones' went after the settle; the unfinished one's once a
	// poll confirmed its state.
	if rec := mustGetRecord(ctx, t, s, "req-queued"); rec.Seq != 1 {
		t.Errorf("req-queued at seq %d before a poll confirmed it, want its event still held", rec.Seq)
	}
	confirm(ctx, t, clock, s, tr, "req-queued")

	tests := []struct {
		id          string
		wantEvent   string
		wantStorage *state.Storage
	}{
		{"req-queued", "request.queued", nil},
		{"req-failed", "request.failed", nil},
		{"req-ok", "request.succeeded", before["req-ok"].Storage},
		{"req-copying", "request.succeeded", &state.Storage{State: state.StoragePending}},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			was, rec := before[tt.id], mustGetRecord(ctx, t, s, tt.id)
			if rec.Seq != 2 || rec.Epoch <= was.Epoch {
				t.Errorf("at epoch %d seq %d, want seq 2 (put back, then its event) of an epoch after %d", rec.Epoch, rec.Seq, was.Epoch)
			}
			queuedAt := clock.now()
			if rec.Terminal() {
				queuedAt = settledAt
			}
			if !rec.UpdatedAt.Equal(queuedAt) || rec.Terminal() && !rec.SyncedAt.Equal(was.SyncedAt) {
				t.Errorf("UpdatedAt = %v, SyncedAt %v; want the time its event was queued, %v, and a final one synced when it was before", rec.UpdatedAt, rec.SyncedAt, queuedAt)
			}
			if rec.State != was.State || rec.Owner != "team" || rec.OwnerAttached || !slices.Equal(rec.Webhooks, was.Webhooks) ||
				rec.MaxRun != was.MaxRun || string(rec.Outputs) != string(was.Outputs) || fmt.Sprint(rec.Error) != fmt.Sprint(was.Error) {
				t.Errorf("restored %+v,\nwant it as it stood: %+v", rec, was)
			}
			if fmt.Sprint(rec.Storage) != fmt.Sprint(tt.wantStorage) {
				t.Errorf("storage %+v, want %+v", rec.Storage, tt.wantStorage)
			}
			evs := epochEvents(ctx, t, s, tt.id, rec.Epoch)
			if len(evs) != 1 {
				t.Fatalf("events of the new epoch: %v, want one", eventTypes(evs))
			}
			ev := evs[0]
			if ev.Type != tt.wantEvent || ev.Seq != 2 || ev.ID != state.EventID(tt.id, rec.Epoch, 2) || ev.Owner != "team" ||
				len(ev.Targets) != 1 || ev.Targets[0] != rec.Webhooks[0].URL || !slices.Equal(ev.Record.Webhooks, rec.Webhooks) {
				t.Errorf("event %+v, want %s at seq 2 to %s", ev, tt.wantEvent, rec.Webhooks[0].URL)
			}
		})
	}
	if got := queuedCopies(ctx, t, s, clock); !slices.Equal(got, []string{"req-copying"}) {
		t.Errorf("queued copies = %v, want req-copying's again, and req-ok's outputs left stored", got)
	}

	// The loss was reported once: nothing more to do, and nothing read.
	gets, saves := s.calls()
	if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
		t.Errorf("RestoreLost again = %d, %v; want 0, nil", n, err)
	}
	if g, sv := s.calls(); g != gets || sv != saves {
		t.Errorf("RestoreLost with nothing lost read %d and wrote %d records", g-gets, sv-saves)
	}

	// The restored records go on in their new epoch.
	restored := mustGetRecord(ctx, t, s, "req-queued")
	rec, outcome := mustApply(ctx, t, tr, state.Update{RequestID: "req-queued", Source: state.SourceCallback, State: runcomfy.StateRunning})
	if outcome != state.Applied || rec.Epoch != restored.Epoch || rec.Seq != 3 || !slices.Equal(rec.Webhooks, hooksAll) {
		t.Errorf("the next callback: %v, epoch %d seq %d, webhooks %v; want applied at seq 3 of epoch %d with the webhooks", outcome, rec.Epoch, rec.Seq, rec.Webhooks, restored.Epoch)
	}
	if got := eventTypes(epochEvents(ctx, t, s, "req-queued", restored.Epoch)); !slices.Equal(got, []string{"request.queued@2", "request.running@3"}) {
		t.Errorf("events = %v", got)
	}
}

// TestRestoreLostGivesBackTheWebhooksOfARecordMadeAgain pins adopt: a
// record made again after the loss by a replica that did not remember it
// (a callback: no webhooks, another epoch) gets the webhooks, and the owner
// when it has none, that this replica remembers, at its next seq, with the
// event of its state once the restore settled: a succeeded one's is
// request.succeeded (carrying the storage as it stands), not
// request.outputs_stored.
func TestRestoreLostGivesBackTheWebhooksOfARecordMadeAgain(t *testing.T) {
	tests := []struct {
		name string
		// source and owner are those of the success that makes it again.
		source       state.Source
		owner        string
		wantAttached bool // the owner it has then is taken on trust
		// readFirst: this replica reads the record made again (a duplicate
		// callback) before its pass, so that the last record it remembers
		// of the request has no webhooks.
		readFirst bool
	}{
		{"made again by a callback", state.SourceCallback, "team", false, false},
		{"made again by a poll, without an owner", state.SourcePoll, "", false, false},
		{"made again by a callback, read here before the pass", state.SourceCallback, "team", false, true},
		// The submitter's proven owner takes the request back from one an
		// attach claimed, as merge lets it: the events go out under it.
		{"made again by another tenant's attach", state.SourceAttach, "other", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			a := newLossTracker(t, s.replica(), s, clock)
			submitHooked(ctx, t, a, "req-hooks", hooksAll)
			storedSuccess(ctx, t, a, "req-hooks", "")
			if _, err := a.RestoreLost(ctx); err != nil {
				t.Fatal(err)
			}

			clock.advance(time.Minute)
			s.lose(ctx, t, true)
			// Another replica, which never saw the request, hears of it first.
			b := newLossTracker(t, s.replica(), s, clock)
			storedSuccessFrom(ctx, t, b, tt.source, "req-hooks", tt.owner)
			made := mustGetRecord(ctx, t, s, "req-hooks")
			if len(made.Webhooks) != 0 || made.Owner != tt.owner || made.OwnerAttached != tt.wantAttached || made.Seq != 2 {
				t.Fatalf("made again: %+v; want seq 2 without webhooks, owned by %q (attached %v)", made, tt.owner, tt.wantAttached)
			}

			clock.advance(time.Second)
			wantN := 1
			if tt.readFirst {
				// The update reads the record made again, and gives the
				// webhooks back at once (Apply's catch-up); the pass then
				// has nothing left to do.
				if _, outcome := mustApply(ctx, t, a, state.Update{RequestID: "req-hooks", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs}); outcome != state.Duplicate {
					t.Fatalf("the duplicate callback: %v, want duplicate", outcome)
				}
				wantN = 0
			}
			n, err := a.RestoreLost(ctx)
			if err != nil || n != wantN {
				t.Fatalf("RestoreLost = %d, %v; want %d", n, err, wantN)
			}
			rec := mustGetRecord(ctx, t, s, "req-hooks")
			if rec.Epoch != made.Epoch || rec.Seq != made.Seq+1 {
				t.Errorf("adopted at epoch %d seq %d, want epoch %d seq %d", rec.Epoch, rec.Seq, made.Epoch, made.Seq+1)
			}
			if !slices.Equal(rec.Webhooks, hooksAll) || rec.Owner != "team" || rec.OwnerAttached {
				t.Errorf("adopted webhooks %v, owner %q (attached %v); want %v, proven team", rec.Webhooks, rec.Owner, rec.OwnerAttached, hooksAll)
			}
			if rec.State != runcomfy.StateSucceeded || rec.Storage == nil || rec.Storage.State != state.StorageStored || string(rec.Outputs) != string(lossOutputs) {
				t.Errorf("adopted %+v; want the record made again, succeeded and stored", rec)
			}
			if !rec.UpdatedAt.Equal(clock.now()) {
				t.Errorf("UpdatedAt = %v, want %v", rec.UpdatedAt, clock.now())
			}
			// The event, held back, goes once the restore settled, at the
			// next seq.
			settle(ctx, t, clock, a)
			evs := epochEvents(ctx, t, s, "req-hooks", made.Epoch)
			if len(evs) != 1 {
				t.Fatalf("events of the epoch made again: %v, want one", eventTypes(evs))
			}
			ev := evs[0]
			if ev.Type != "request.succeeded" || ev.Seq != rec.Seq+1 || ev.ID != state.EventID("req-hooks", rec.Epoch, rec.Seq+1) || ev.Owner != "team" {
				t.Errorf("event %s at seq %d (owner %q), want request.succeeded at seq %d", ev.Type, ev.Seq, ev.Owner, rec.Seq+1)
			}
			if ev.Record == nil || ev.Record.Storage == nil || ev.Record.Storage.State != state.StorageStored || !slices.Equal(ev.Record.Webhooks, hooksAll) {
				t.Errorf("event's record %+v, want the adopted one (stored, with its webhooks)", ev.Record)
			}
			if n, err := a.RestoreLost(ctx); n != 0 || err != nil {
				t.Errorf("RestoreLost again = %d, %v; want 0, nil", n, err)
			}
		})
	}
}

// TestRestoreLostLeavesWhatAnotherReplicaRestored pins that a record
// another replica put back first (another epoch, with its webhooks) is
// left as it is: one restore, one event.
func TestRestoreLostLeavesWhatAnotherReplicaRestored(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	a, b := newLossTracker(t, s.replica(), s, clock), newLossTracker(t, s.replica(), s, clock)
	submitHooked(ctx, t, a, "req-both", hooksAll)
	// b remembers it too: it read it for a duplicate callback.
	if _, outcome := mustApply(ctx, t, b, state.Update{RequestID: "req-both", Source: state.SourceCallback, State: runcomfy.StateQueued}); outcome != state.Duplicate {
		t.Fatalf("b's callback: %v, want duplicate", outcome)
	}
	for _, tr := range []*state.Tracker{a, b} {
		if _, err := tr.RestoreLost(ctx); err != nil {
			t.Fatal(err)
		}
	}
	clock.advance(time.Minute)
	s.lose(ctx, t, true)
	if n, err := a.RestoreLost(ctx); n != 1 || err != nil {
		t.Fatalf("a's RestoreLost = %d, %v; want 1", n, err)
	}
	restored := mustGetRecord(ctx, t, s, "req-both")
	if n, err := b.RestoreLost(ctx); n != 0 || err != nil {
		t.Errorf("b's RestoreLost = %d, %v; want 0: a restored it", n, err)
	}
	if rec := mustGetRecord(ctx, t, s, "req-both"); rec.Position() != restored.Position() {
		t.Errorf("b changed the restored record: %v, was %v", rec.Position(), restored.Position())
	}
	settle(ctx, t, clock, a, b)
	confirm(ctx, t, clock, s, a, "req-both")
	if got := eventTypes(epochEvents(ctx, t, s, "req-both", restored.Epoch)); !slices.Equal(got, []string{"request.queued@2"}) {
		t.Errorf("events = %v, want the restore's alone", got)
	}
}

// scheduledView is a lossView that writes a record's schedule change with
// the record (state.ScheduledSaver), as the Redis backend does: a refused
// final save takes the request off the schedule too.
type scheduledView struct{ *lossView }

func (v scheduledView) SaveScheduled(ctx context.Context, rec *state.Record, ttl time.Duration, due time.Time, forget bool) error {
	return v.SaveWithEvent(ctx, rec, ttl, due, forget, nil)
}

var _ state.ScheduledSaver = scheduledView{}

// newScheduledLossTracker is a replica's Tracker on s seen through a
// scheduledView, with s as its poll schedule.
func newScheduledLossTracker(t *testing.T, s *lossStore, clock *lossClock) *state.Tracker {
	t.Helper()
	tr, err := state.NewTracker(state.TrackerConfig{Store: scheduledView{s.replica()}, Results: restoreResults{}, Copies: s.copies,
		Schedule: s, PollInterval: time.Minute, Retention: lossRetention, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestRestoreLostKeepsARestoredRecordScheduled pins the race of two
// restores: a replica whose restore of a finished request is refused,
// because another replica that remembered it unfinished put it back first,
// reads it again and moves it on to the final state it remembers, in the
// same pass; its refused save took the request off the schedule (the
// schedule change goes with the save, taken or not), and the final one keeps
// it off. And when the replica that knew more applies an update instead
// (Apply puts a lost record back first), its refused restore leaves the
// request due for a poll: the record put back is not final, and only a poll
// brings it to its end, and the watchers with it.
func TestRestoreLostKeepsARestoredRecordScheduled(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	replica := func() *state.Tracker { return newScheduledLossTracker(t, s, clock) }
	a, b := replica(), replica()
	submitHooked(ctx, t, a, "req-race", hooksAll)
	mustApply(ctx, t, a, state.Update{RequestID: "req-race", Source: state.SourceCallback, State: runcomfy.StateRunning})
	// b records the success: it remembers the request finished, a running.
	mustApply(ctx, t, b, state.Update{RequestID: "req-race", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
	for _, tr := range []*state.Tracker{a, b} {
		if _, err := tr.RestoreLost(ctx); err != nil {
			t.Fatal(err)
		}
	}
	clock.advance(time.Minute)
	s.lose(ctx, t, true)
	// a puts it back between b's read (nothing there) and b's save.
	s.afterNextGet("req-race", func() {
		if n, err := a.RestoreLost(ctx); n != 1 || err != nil {
			t.Errorf("a's RestoreLost = %d, %v; want 1", n, err)
		}
	})
	if n, err := b.RestoreLost(ctx); n != 1 || err != nil {
		t.Fatalf("b's RestoreLost = %d, %v; want 1: a restored it first, b moved it on", n, err)
	}
	rec := mustGetRecord(ctx, t, s, "req-race")
	if rec.State != runcomfy.StateSucceeded || rec.Seq != 2 || string(rec.Outputs) != string(lossOutputs) {
		t.Fatalf("stored %s at seq %d with outputs %s, want b's success at seq 2 of a's epoch", rec.State, rec.Seq, rec.Outputs)
	}
	settle(ctx, t, clock, a, b)
	if got := eventTypes(epochEvents(ctx, t, s, "req-race", rec.Epoch)); !slices.Equal(got, []string{"request.succeeded@3"}) {
		t.Errorf("events = %v, want b's success alone, held back too: the record moved on from the running state a put back", got)
	}
	if isDue(ctx, t, s, clock, "req-race") {
		t.Errorf("req-race is due for a poll, want it off the schedule: it ended")
	}

	// The same race when b puts a record back before applying an update: c
	// knew req-late running, b finished; the store loses it without saying
	// so, and c puts it back (for a running callback) between b's read and
	// b's save (for a late running callback). b's refused restore reads c's
	// record and brings it up to the success b knew before the update is
	// merged (stale then), which takes it off the schedule.
	c := replica()
	mustApply(ctx, t, c, state.Update{RequestID: "req-late", DeploymentID: "dep-restore", Source: state.SourceSubmit,
		State: runcomfy.StateQueued, Owner: "team", Webhooks: hooksAll, MaxRun: 30 * time.Minute})
	running := state.Update{RequestID: "req-late", Source: state.SourceCallback, State: runcomfy.StateRunning}
	mustApply(ctx, t, c, running)
	mustApply(ctx, t, b, state.Update{RequestID: "req-late", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
	clock.advance(time.Minute)
	s.lose(ctx, t, false)
	s.afterNextGet("req-late", func() {
		if _, _, err := c.Apply(ctx, running); err != nil {
			t.Errorf("c's update: %v", err)
		}
	})
	if _, outcome := mustApply(ctx, t, b, running); outcome == state.Applied {
		t.Fatalf("b's late running callback was applied")
	}
	late := mustGetRecord(ctx, t, s, "req-late")
	if late.State != runcomfy.StateSucceeded || string(late.Outputs) != string(lossOutputs) || !slices.Equal(late.Webhooks, hooksAll) {
		t.Fatalf("stored %s with outputs %s and webhooks %v, want b's success on c's record", late.State, late.Outputs, late.Webhooks)
	}
	settle(ctx, t, clock, b, c)
	if got := eventTypes(epochEvents(ctx, t, s, "req-late", late.Epoch)); !slices.Equal(got, []string{"request.succeeded@3"}) {
		t.Errorf("events = %v, want b's success alone, held back too: the record moved on from the running state c put back", got)
	}
	if isDue(ctx, t, s, clock, "req-late") {
		t.Errorf("req-late is due for a poll, want it off the schedule: it ended")
	}
}

// isDue reports whether requestID is due for a poll within the hour.
func isDue(ctx context.Context, t *testing.T, s *lossStore, clock *lossClock, requestID string) bool {
	t.Helper()
	due, err := s.Due(ctx, clock.now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(due, requestID)
}

// TestRestoreLostWithoutALossDoesNothing pins that RestoreLost neither reads
// nor writes a record unless the store reports a loss: not while the store
// keeps its records, not when records went without the store saying so
// (expired, evicted: the callbacks and polls deal with those), and never
// with a store that cannot tell (no state.LossDetector).
func TestRestoreLostWithoutALossDoesNothing(t *testing.T) {
	tests := []struct {
		name       string
		detector   bool // the store is a LossDetector
		lose       bool // the records go, unreported
		wantStored bool
	}{
		{"nothing lost", true, false, true},
		{"records gone, no loss reported", true, true, false},
		{"a store that cannot tell", false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			var store state.Store = s
			if tt.detector {
				store = s.replica()
			}
			tr := newLossTracker(t, store, s, clock)
			submitHooked(ctx, t, tr, "req-1", hooksAll)
			submitHooked(ctx, t, tr, "req-2", hooksEnd)
			for range 2 { // the first Lost, and a later one
				if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
					t.Fatalf("RestoreLost = %d, %v; want 0, nil", n, err)
				}
			}
			if tt.lose {
				s.lose(ctx, t, false)
			}
			gets, saves := s.calls()
			if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
				t.Errorf("RestoreLost = %d, %v; want 0, nil", n, err)
			}
			if g, sv := s.calls(); g != gets || sv != saves {
				t.Errorf("RestoreLost read %d and wrote %d records, want none", g-gets, sv-saves)
			}
			for _, id := range []string{"req-1", "req-2"} {
				_, err := s.Backend.Get(ctx, id)
				if stored := err == nil; stored != tt.wantStored {
					t.Errorf("%s stored: %v (%v), want %v", id, stored, err, tt.wantStored)
				}
			}
		})
	}
}

// TestRestoreLostGoesOnAfterAFailedPass pins that a pass the store fails
// (unavailable: the pass stops; another error: the pass goes on without
// that record) is continued by the next call although Lost then answers
// false, until every record is back, each restored once; after a complete
// pass, calls do nothing again.
func TestRestoreLostGoesOnAfterAFailedPass(t *testing.T) {
	ids := []string{"req-a", "req-b", "req-c", "req-d"}
	tests := []struct {
		name string
		err  error
		// wantFirst is how many the failed pass restores; -1: any fewer
		// than all (the pass stops where the store failed, in no
		// particular order).
		wantFirst int
	}{
		{"store unavailable", fmt.Errorf("redis get: %w", state.ErrUnavailable), -1},
		{"another error", errors.New("state: record unreadable"), len(ids) - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			v := s.replica()
			tr := newLossTracker(t, v, s, clock)
			for _, id := range ids {
				submitHooked(ctx, t, tr, id, hooksAll)
			}
			if _, err := tr.RestoreLost(ctx); err != nil {
				t.Fatal(err)
			}
			clock.advance(time.Minute)
			s.lose(ctx, t, true)
			s.failNextGet("req-c", tt.err)

			first, err := tr.RestoreLost(ctx)
			if !errors.Is(err, tt.err) {
				t.Fatalf("the failed pass: %v, want %v", err, tt.err)
			}
			if tt.wantFirst >= 0 && first != tt.wantFirst || first >= len(ids) {
				t.Errorf("the failed pass restored %d, want %d", first, tt.wantFirst)
			}
			if _, err := s.Backend.Get(ctx, "req-c"); !errors.Is(err, state.ErrNotFound) {
				t.Errorf("req-c after the failed pass: %v, want it still lost", err)
			}

			second, err := tr.RestoreLost(ctx)
			if err != nil || first+second != len(ids) {
				t.Errorf("the next pass = %d, %v; want the %d left", second, err, len(ids)-first)
			}
			if got, want := v.lostAnswers(), []bool{false, true, false}; !slices.Equal(got, want) {
				t.Errorf("Lost answered %v, want %v (the next pass went on although it answered false)", got, want)
			}
			settle(ctx, t, clock, tr)
			confirm(ctx, t, clock, s, tr, ids...)
			for _, id := range ids {
				rec := mustGetRecord(ctx, t, s, id)
				if got := eventTypes(epochEvents(ctx, t, s, id, rec.Epoch)); rec.Seq != 2 || !slices.Equal(rec.Webhooks, hooksAll) || !slices.Equal(got, []string{"request.queued@2"}) {
					t.Errorf("%s: seq %d, webhooks %v, events %v; want restored once, then its event once", id, rec.Seq, rec.Webhooks, got)
				}
			}

			gets, saves := s.calls()
			if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
				t.Errorf("after the complete pass: RestoreLost = %d, %v; want 0, nil", n, err)
			}
			if g, sv := s.calls(); g != gets || sv != saves {
				t.Errorf("after the complete pass, RestoreLost read %d and wrote %d records, want none", g-gets, sv-saves)
			}
		})
	}
}

// TestRestoreLostSkipsRecordsPastTheirRetention pins that a remembered
// record last written the retention ago or more is not put back (it
// expired rather than being lost), by RestoreLost or by Apply, while one
// younger than that is.
func TestRestoreLostSkipsRecordsPastTheirRetention(t *testing.T) {
	tests := []struct {
		name         string
		age          time.Duration
		wantRestored bool
	}{
		{"fresh", 0, true},
		{"just within the retention", lossRetention - time.Second, true},
		{"at the retention", lossRetention, false},
		{"long past it", 3 * lossRetention, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr := newLossTracker(t, s.replica(), s, clock)
			if _, err := tr.RestoreLost(ctx); err != nil {
				t.Fatal(err)
			}
			submitHooked(ctx, t, tr, "req-aged", hooksAll)
			clock.advance(tt.age)
			submitHooked(ctx, t, tr, "req-fresh", hooksAll)
			s.lose(ctx, t, true)

			want := 1
			if tt.wantRestored {
				want = 2
			}
			if n, err := tr.RestoreLost(ctx); n != want || err != nil {
				t.Errorf("RestoreLost = %d, %v; want %d", n, err, want)
			}
			mustGetRecord(ctx, t, s, "req-fresh")
			_, err := s.Backend.Get(ctx, "req-aged")
			if restored := err == nil; restored != tt.wantRestored {
				t.Fatalf("req-aged restored: %v (%v), want %v", restored, err, tt.wantRestored)
			}
			if tt.wantRestored {
				return
			}
			// Nor does a callback bring back what the tracker remembers.
			rec, _ := mustApply(ctx, t, tr, state.Update{RequestID: "req-aged", Source: state.SourceCallback, State: runcomfy.StateRunning})
			if rec.Seq != 1 || len(rec.Webhooks) != 0 || rec.Owner != "" {
				t.Errorf("after a callback: seq %d, webhooks %v, owner %q; want a record made from the callback alone", rec.Seq, rec.Webhooks, rec.Owner)
			}
		})
	}
}

// TestApplyRestoresALostRecordFirst pins Apply for a request whose record
// the store lost (no loss reported) but this tracker remembers: the record
// is put back, in a new epoch, with what the update does not carry
// (webhooks, owner, deadline); an update that moves the request on is in it
// already (a success with its outputs, fetched first when it has none), so
// the only event of the new epoch is the update's state (once the restore
// settled, or with the restore for a final state), and no earlier state is
// announced again.
func TestApplyRestoresALostRecordFirst(t *testing.T) {
	tests := []struct {
		name        string
		u           state.Update
		wantOutcome state.Outcome
		wantState   runcomfy.State
		wantSeq     int64
		wantEvents  []string
	}{
		{"running callback", state.Update{Source: state.SourceCallback, State: runcomfy.StateRunning},
			state.Applied, runcomfy.StateRunning, 1, []string{"request.running@2"}},
		{"failed callback", state.Update{Source: state.SourceCallback, State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "oom"}},
			state.Applied, runcomfy.StateFailed, 1, []string{"request.failed@1"}},
		{"poll of a success with its outputs", state.Update{Source: state.SourcePoll, State: runcomfy.StateSucceeded, Outputs: lossOutputs},
			state.Applied, runcomfy.StateSucceeded, 1, []string{"request.succeeded@1"}},
		{"success whose outputs are fetched", state.Update{Source: state.SourceCallback, State: runcomfy.StateSucceeded},
			state.Applied, runcomfy.StateSucceeded, 1, []string{"request.succeeded@1"}},
		{"duplicate of the remembered state", state.Update{Source: state.SourceCallback, State: runcomfy.StateQueued},
			state.Duplicate, runcomfy.StateQueued, 1, []string{"request.queued@2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr := newLossTracker(t, s.replica(), s, clock)
			was := submitHooked(ctx, t, tr, "req-1", hooksAll)
			clock.advance(time.Minute)
			s.lose(ctx, t, false)

			u := tt.u
			u.RequestID, u.DeploymentID = "req-1", "dep-restore"
			got, outcome := mustApply(ctx, t, tr, u)
			rec := mustGetRecord(ctx, t, s, "req-1")
			if outcome != tt.wantOutcome || got == nil || got.Position() != rec.Position() {
				t.Errorf("Apply = %v, %+v; want %v and the stored record", outcome, got, tt.wantOutcome)
			}
			if rec.State != tt.wantState || rec.Seq != tt.wantSeq || rec.Epoch <= was.Epoch {
				t.Errorf("stored %v at epoch %d seq %d; want %v at seq %d of an epoch after %d", rec.State, rec.Epoch, rec.Seq, tt.wantState, tt.wantSeq, was.Epoch)
			}
			if !slices.Equal(rec.Webhooks, hooksAll) || rec.Owner != "team" || rec.OwnerAttached || rec.MaxRun != was.MaxRun {
				t.Errorf("stored webhooks %v, owner %q (attached %v), max run %v; want the remembered %v, team, %v", rec.Webhooks, rec.Owner, rec.OwnerAttached, rec.MaxRun, hooksAll, was.MaxRun)
			}
			// An unfinished state's event waits for the other replicas to
			// put back, or move on, what they remember, then goes with a
			// save of its own. A final state RunComfy reports is behind
			// nothing: its event goes with the restore, so that a replica
			// stopped within the settle does not take it along.
			withRestore := eventTypes(epochEvents(ctx, t, s, "req-1", rec.Epoch))
			if want := tt.wantEvents; !rec.Terminal() && len(withRestore) != 0 || rec.Terminal() && !slices.Equal(withRestore, want) {
				t.Errorf("events with the restore = %v, want %v", withRestore, map[bool][]string{true: want}[rec.Terminal()])
			}
			settle(ctx, t, clock, tr)
			if !rec.Terminal() {
				confirm(ctx, t, clock, s, tr, "req-1")
			}
			if got := eventTypes(epochEvents(ctx, t, s, "req-1", rec.Epoch)); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %v, want %v", got, tt.wantEvents)
			}
		})
	}
}

// TestApplyRestoresOnlyWhatUpdatesCannotBringBack pins that Apply puts a
// lost record back first only when it holds what no update from RunComfy
// brings back (webhooks, deadlines): a remembered record with neither is
// made again from the update alone, as seq 1 of a new epoch.
func TestApplyRestoresOnlyWhatUpdatesCannotBringBack(t *testing.T) {
	tests := []struct {
		name    string
		submit  state.Update
		wantSeq int64 // 1: restored with the update in it, or made again from it
	}{
		{"webhooks", state.Update{Webhooks: hooksEnd}, 1},
		{"a queue deadline", state.Update{MaxQueue: time.Hour}, 1},
		{"a run deadline", state.Update{MaxRun: time.Hour}, 1},
		{"neither", state.Update{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr := newLossTracker(t, s.replica(), s, clock)
			sub := tt.submit
			sub.RequestID, sub.DeploymentID, sub.Source, sub.State, sub.Owner = "req-1", "dep-restore", state.SourceSubmit, runcomfy.StateQueued, "team"
			was, _ := mustApply(ctx, t, tr, sub)
			clock.advance(time.Minute)
			s.lose(ctx, t, false)

			rec, outcome := mustApply(ctx, t, tr, state.Update{RequestID: "req-1", DeploymentID: "dep-restore", Source: state.SourceCallback, State: runcomfy.StateRunning, Owner: "team"})
			if outcome != state.Applied || rec.State != runcomfy.StateRunning || rec.Seq != tt.wantSeq || rec.Epoch <= was.Epoch {
				t.Fatalf("Apply = %v, %v at epoch %d seq %d; want applied, running at seq %d of an epoch after %d", outcome, rec.State, rec.Epoch, rec.Seq, tt.wantSeq, was.Epoch)
			}
			if !slices.Equal(rec.Webhooks, was.Webhooks) || rec.MaxQueue != was.MaxQueue || rec.MaxRun != was.MaxRun || rec.Owner != "team" {
				t.Errorf("stored webhooks %v, deadlines %v/%v, owner %q; want those of the submit: %v, %v/%v, team",
					rec.Webhooks, rec.MaxQueue, rec.MaxRun, rec.Owner, was.Webhooks, was.MaxQueue, was.MaxRun)
			}
		})
	}
}

// TestRestoreLostMovesTheStoredRecordOn pins catchUp: after a loss, a
// replica that finds the request's record already back in the store (put
// back by another replica that remembered an older state, or made again by a
// late callback on a replica that remembered nothing) and remembers a
// further state moves the record on to it within its pass: one save at the
// stored record's next seq in its epoch, keeping its webhooks and owner (or
// giving back those it lacks), with the event of the state, the copy of a
// success's outputs queued unless they were stored, and a final state off
// the poll schedule. A state of the same rank, or a final one, is left as
// it is. The event of the state the other replica put back, held back, is
// never queued once the record moved on from it.
func TestRestoreLostMovesTheStoredRecordOn(t *testing.T) {
	const id = "req-on"
	running := func(instance string) state.Update {
		return state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceCallback, State: runcomfy.StateRunning, Owner: "team", InstanceID: instance}
	}
	tests := []struct {
		name string
		// remember tells tr, the replica whose pass is checked, and other
		// what they remember of the request before the loss.
		remember func(ctx context.Context, t *testing.T, tr, other *state.Tracker)
		// first writes the record after the loss, before tr's pass: other's
		// pass, or a callback to fresh, a replica that remembers nothing.
		first func(ctx context.Context, t *testing.T, tr, other, fresh *state.Tracker)

		wantN      int // what tr's pass reports
		wantState  runcomfy.State
		wantEvents []string // of the record's epoch
		wantCopies bool     // the copy of its outputs is queued
		wantDue    bool
		check      func(t *testing.T, rec *state.Record)
	}{
		{
			name: "a late running callback made it again; this replica knew it succeeded",
			remember: func(ctx context.Context, t *testing.T, tr, _ *state.Tracker) {
				submitHooked(ctx, t, tr, id, hooksAll)
				storedSuccess(ctx, t, tr, id, "team")
			},
			first: func(ctx context.Context, t *testing.T, _, _, fresh *state.Tracker) {
				mustApply(ctx, t, fresh, running(""))
			},
			wantN: 1, wantState: runcomfy.StateSucceeded, wantEvents: []string{"request.succeeded@3"},
			check: func(t *testing.T, rec *state.Record) {
				if rec.Storage == nil || rec.Storage.State != state.StorageStored {
					t.Errorf("storage %+v, want the stored outputs this replica remembers", rec.Storage)
				}
			},
		},
		{
			name: "another replica put back the queued state; this one knew it running",
			remember: func(ctx context.Context, t *testing.T, tr, other *state.Tracker) {
				submitHooked(ctx, t, other, id, hooksAll)
				mustApply(ctx, t, tr, running("i-1"))
			},
			first: func(ctx context.Context, t *testing.T, _, other, _ *state.Tracker) {
				if n, err := other.RestoreLost(ctx); n != 1 || err != nil {
					t.Fatalf("other's RestoreLost = %d, %v; want 1", n, err)
				}
			},
			wantN: 1, wantState: runcomfy.StateRunning, wantEvents: []string{"request.running@3"}, wantDue: true,
			check: func(t *testing.T, rec *state.Record) {
				if rec.InstanceID != "i-1" || rec.StartedAt.IsZero() || rec.QueuePosition != nil || rec.MaxRun != 30*time.Minute {
					t.Errorf("instance %q, started %v, queue position %v, max run %v; want what this replica knew, and the deadline kept",
						rec.InstanceID, rec.StartedAt, rec.QueuePosition, rec.MaxRun)
				}
			},
		},
		{
			name: "another replica put back the running state; this one knew it succeeded, its copy pending",
			remember: func(ctx context.Context, t *testing.T, tr, other *state.Tracker) {
				submitHooked(ctx, t, other, id, hooksAll)
				mustApply(ctx, t, other, running(""))
				mustApply(ctx, t, tr, state.Update{RequestID: id, Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
			},
			first: func(ctx context.Context, t *testing.T, _, other, _ *state.Tracker) {
				if n, err := other.RestoreLost(ctx); n != 1 || err != nil {
					t.Fatalf("other's RestoreLost = %d, %v; want 1", n, err)
				}
			},
			wantN: 1, wantState: runcomfy.StateSucceeded, wantEvents: []string{"request.succeeded@3"}, wantCopies: true,
			check: func(t *testing.T, rec *state.Record) {
				if rec.Storage == nil || rec.Storage.State != state.StoragePending {
					t.Errorf("storage %+v, want the copy pending again", rec.Storage)
				}
			},
		},
		{
			name: "made again by a late callback, which reached this replica too",
			remember: func(ctx context.Context, t *testing.T, tr, _ *state.Tracker) {
				submitHooked(ctx, t, tr, id, hooksAll)
				storedSuccess(ctx, t, tr, id, "team")
			},
			first: func(ctx context.Context, t *testing.T, tr, _, fresh *state.Tracker) {
				mustApply(ctx, t, fresh, running(""))
				// The same callback here reads the record made again and
				// brings it up to the success first: it is then stale,
				// and the pass has nothing left to do.
				if _, outcome := mustApply(ctx, t, tr, running("")); outcome != state.Stale {
					t.Fatalf("the late running callback here: %v, want stale", outcome)
				}
			},
			wantN: 0, wantState: runcomfy.StateSucceeded, wantEvents: []string{"request.succeeded@3"},
			check: func(t *testing.T, rec *state.Record) {
				if rec.Storage == nil || rec.Storage.State != state.StorageStored {
					t.Errorf("storage %+v, want the stored outputs this replica remembers", rec.Storage)
				}
			},
		},
		{
			name: "made again at the same rank: only the webhooks come back",
			remember: func(ctx context.Context, t *testing.T, tr, _ *state.Tracker) {
				submitHooked(ctx, t, tr, id, hooksAll)
				mustApply(ctx, t, tr, running("i-1"))
			},
			first: func(ctx context.Context, t *testing.T, _, _, fresh *state.Tracker) {
				mustApply(ctx, t, fresh, running("i-2"))
			},
			wantN: 1, wantState: runcomfy.StateRunning, wantEvents: []string{"request.running@3"}, wantDue: true,
			check: func(t *testing.T, rec *state.Record) {
				if rec.InstanceID != "i-2" {
					t.Errorf("instance %q, want the stored i-2: a state of the same rank is left as it is", rec.InstanceID)
				}
			},
		},
		{
			name: "made again final, another final state than this replica knew",
			remember: func(ctx context.Context, t *testing.T, tr, _ *state.Tracker) {
				submitHooked(ctx, t, tr, id, hooksAll)
				storedSuccess(ctx, t, tr, id, "team")
			},
			first: func(ctx context.Context, t *testing.T, _, _, fresh *state.Tracker) {
				mustApply(ctx, t, fresh, state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceCallback, State: runcomfy.StateCancelled, Owner: "team"})
			},
			wantN: 1, wantState: runcomfy.StateCancelled, wantEvents: []string{"request.cancelled@3"},
			check: func(t *testing.T, rec *state.Record) {
				if len(rec.Outputs) != 0 || rec.Storage != nil {
					t.Errorf("outputs %s, storage %+v; want the cancelled record's, none", rec.Outputs, rec.Storage)
				}
			},
		},
		{
			name: "another replica put back the queued state, then a late callback reached this one, which knew it succeeded",
			remember: func(ctx context.Context, t *testing.T, tr, other *state.Tracker) {
				submitHooked(ctx, t, other, id, hooksAll)
				storedSuccess(ctx, t, tr, id, "team")
			},
			first: func(ctx context.Context, t *testing.T, tr, other, _ *state.Tracker) {
				if n, err := other.RestoreLost(ctx); n != 1 || err != nil {
					t.Fatalf("other's RestoreLost = %d, %v; want 1", n, err)
				}
				// Here, before this replica's pass: the callback reads
				// the queued record put back and brings it up to the
				// success first; it is then stale.
				if _, outcome := mustApply(ctx, t, tr, running("i-1")); outcome != state.Stale {
					t.Fatalf("the late running callback: %v, want stale", outcome)
				}
			},
			wantN: 0, wantState: runcomfy.StateSucceeded, wantEvents: []string{"request.succeeded@3"},
			check: func(t *testing.T, rec *state.Record) {
				if rec.Storage == nil || rec.Storage.State != state.StorageStored {
					t.Errorf("storage %+v, want the stored outputs this replica remembers", rec.Storage)
				}
			},
		},
		{
			name: "another replica put back a further state",
			remember: func(ctx context.Context, t *testing.T, tr, other *state.Tracker) {
				submitHooked(ctx, t, tr, id, hooksAll)
				mustApply(ctx, t, other, state.Update{RequestID: id, Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
			},
			first: func(ctx context.Context, t *testing.T, _, other, _ *state.Tracker) {
				if n, err := other.RestoreLost(ctx); n != 1 || err != nil {
					t.Fatalf("other's RestoreLost = %d, %v; want 1", n, err)
				}
			},
			// Nobody moved it on: other's event, held back, goes with
			// a save of its own once the restore settled.
			wantN: 0, wantState: runcomfy.StateSucceeded, wantEvents: []string{"request.succeeded@2"}, wantCopies: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr, other := newScheduledLossTracker(t, s, clock), newScheduledLossTracker(t, s, clock)
			tt.remember(ctx, t, tr, other)
			for _, r := range []*state.Tracker{tr, other} {
				if _, err := r.RestoreLost(ctx); err != nil { // the first Lost: nothing lost yet
					t.Fatal(err)
				}
			}
			clock.advance(time.Minute)
			s.lose(ctx, t, true)
			tt.first(ctx, t, tr, other, newScheduledLossTracker(t, s, clock))
			before := mustGetRecord(ctx, t, s, id)

			clock.advance(time.Second)
			if n, err := tr.RestoreLost(ctx); n != tt.wantN || err != nil {
				t.Fatalf("RestoreLost = %d, %v; want %d", n, err, tt.wantN)
			}
			rec := mustGetRecord(ctx, t, s, id)
			if rec.State != tt.wantState || rec.Epoch != before.Epoch || rec.Seq != before.Seq+int64(tt.wantN) {
				t.Errorf("stored %s at %d/%d, want %s at %d/%d (was %s)", rec.State, rec.Epoch, rec.Seq, tt.wantState, before.Epoch, before.Seq+int64(tt.wantN), before.State)
			}
			if !slices.Equal(rec.Webhooks, hooksAll) || rec.Owner != "team" || rec.OwnerAttached {
				t.Errorf("webhooks %v, owner %q (attached %v); want %v, proven team", rec.Webhooks, rec.Owner, rec.OwnerAttached, hooksAll)
			}
			if rec.MaxRun != 30*time.Minute {
				t.Errorf("max run %v, want the submit's 30m", rec.MaxRun)
			}
			if rec.State == runcomfy.StateSucceeded && string(rec.Outputs) != string(lossOutputs) {
				t.Errorf("succeeded with outputs %s, want %s", rec.Outputs, lossOutputs)
			}
			// The events once the restores settled: never one of a state
			// the record had been moved on from.
			settle(ctx, t, clock, tr, other)
			if !rec.Terminal() {
				confirm(ctx, t, clock, s, tr, id)
			}
			if got := eventTypes(epochEvents(ctx, t, s, id, rec.Epoch)); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %v, want %v", got, tt.wantEvents)
			}
			if got := queuedCopies(ctx, t, s, clock); slices.Contains(got, id) != tt.wantCopies {
				t.Errorf("queued copies %v, want %s's queued: %v", got, id, tt.wantCopies)
			}
			if got := isDue(ctx, t, s, clock, id); got != tt.wantDue {
				t.Errorf("due for a poll: %v, want %v", got, tt.wantDue)
			}
			if tt.check != nil {
				tt.check(t, rec)
			}
			if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
				t.Errorf("RestoreLost again = %d, %v; want 0, nil", n, err)
			}
		})
	}
}

// TestRestoreLostGivesBackTheDeadlinesOfARecordMadeAgain pins that a record
// made again after a loss by a replica that did not remember the request
// (from a callback, which carries no deadline) gets its submit's deadline
// back from a replica that remembers it, and with it a poll due by the
// deadline, where the reconciler cancels it: without it the job would run on
// past its deadline, billed. The request had no webhooks: what is kept apart
// for a record made again is any record that holds what updates cannot bring.
func TestRestoreLostGivesBackTheDeadlinesOfARecordMadeAgain(t *testing.T) {
	const id = "req-deadline"
	const limit = 10 * time.Second
	start := newLossClock().now()
	tests := []struct {
		name     string
		submit   state.Update // the submit and the update a replica that remembers nothing makes the record again from
		again    state.Update
		wantKind string
		wantAt   time.Time
	}{
		{
			name: "queued, with a queue deadline",
			submit: state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceSubmit, State: runcomfy.StateQueued,
				Owner: "team", MaxQueue: limit, CreatedAt: start},
			again:    state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceCallback, State: runcomfy.StateQueued, Owner: "team", CreatedAt: start},
			wantKind: state.ErrorTypeMaxQueueDuration, wantAt: start.Add(limit),
		},
		{
			name: "running, with a run deadline",
			submit: state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceSubmit, State: runcomfy.StateQueued,
				Owner: "team", MaxRun: limit, CreatedAt: start},
			again: state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceCallback, State: runcomfy.StateRunning, Owner: "team",
				CreatedAt: start, StartedAt: start.Add(time.Second)},
			wantKind: state.ErrorTypeMaxRunDuration, wantAt: start.Add(time.Second + limit),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr := newScheduledLossTracker(t, s, clock)
			mustApply(ctx, t, tr, tt.submit)
			if tt.again.State == runcomfy.StateRunning {
				mustApply(ctx, t, tr, tt.again)
			}
			if _, err := tr.RestoreLost(ctx); err != nil { // the first Lost: nothing lost yet
				t.Fatal(err)
			}
			clock.advance(2 * time.Second)
			s.lose(ctx, t, true)
			mustApply(ctx, t, newScheduledLossTracker(t, s, clock), tt.again)
			made := mustGetRecord(ctx, t, s, id)
			if _, kind := made.Deadline(); kind != "" {
				t.Fatalf("made again with a deadline (%s): the test needs a record without one", kind)
			}
			dueBy := func(at time.Time) bool {
				t.Helper()
				due, err := s.Due(ctx, at, 100)
				if err != nil {
					t.Fatal(err)
				}
				return slices.Contains(due, id)
			}
			if dueBy(tt.wantAt) {
				t.Fatalf("made again due by %v: the test needs the poll of a record without a deadline, later", tt.wantAt)
			}

			clock.advance(time.Second)
			if n, err := tr.RestoreLost(ctx); n != 1 || err != nil {
				t.Fatalf("RestoreLost = %d, %v; want 1", n, err)
			}
			rec := mustGetRecord(ctx, t, s, id)
			if rec.Epoch != made.Epoch || rec.Seq != made.Seq+1 || rec.State != made.State {
				t.Errorf("stored %s at %d/%d, want %s at %d/%d", rec.State, rec.Epoch, rec.Seq, made.State, made.Epoch, made.Seq+1)
			}
			if at, kind := rec.Deadline(); kind != tt.wantKind || !at.Equal(tt.wantAt) {
				t.Errorf("deadline %s at %v, want %s at %v", kind, at, tt.wantKind, tt.wantAt)
			}
			if !dueBy(tt.wantAt) {
				t.Errorf("not due by the deadline %v", tt.wantAt)
			}
			if n, err := tr.RestoreLost(ctx); n != 0 || err != nil {
				t.Errorf("RestoreLost again = %d, %v; want 0, nil", n, err)
			}
		})
	}
}

// TestApplyCatchesUpARecordMadeAgainElsewhere pins that a record lost
// without the store reporting it (evicted) and made again by a replica that
// did not remember it (a poll of the schedule, a callback) gets back, from
// the first update that reaches a replica that remembers the request, what
// that replica knew: the webhooks and owner, the deadlines, a further state.
// It is saved as the caught-up record first (the event of its whole state
// for the endpoints that missed it held back, as a restore's), then the
// update is applied on it.
func TestApplyCatchesUpARecordMadeAgainElsewhere(t *testing.T) {
	const id = "req-evicted"
	tests := []struct {
		name string
		// remember runs on tr, the replica that remembers; again on a fresh
		// one, after the loss; then u reaches tr.
		remember   func(ctx context.Context, t *testing.T, tr *state.Tracker)
		again, u   state.Update
		wantState  runcomfy.State
		wantEvents []string // of the new epoch
	}{
		{
			name:     "made again queued by a poll; a running callback here",
			remember: func(ctx context.Context, t *testing.T, tr *state.Tracker) { submitHooked(ctx, t, tr, id, hooksAll) },
			again:    state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceRestore, State: runcomfy.StateQueued, Owner: "team"},
			u:        state.Update{RequestID: id, Source: state.SourceCallback, State: runcomfy.StateRunning},
			// The record made again had no webhooks, so no event; the
			// event of its queued state, held back when it got them back,
			// is dropped: the callback moved it on at once.
			wantState: runcomfy.StateRunning, wantEvents: []string{"request.running@3"},
		},
		{
			name: "made again queued by a late callback; this replica knew it running, a duplicate running callback here",
			remember: func(ctx context.Context, t *testing.T, tr *state.Tracker) {
				submitHooked(ctx, t, tr, id, hooksAll)
				mustApply(ctx, t, tr, state.Update{RequestID: id, Source: state.SourceCallback, State: runcomfy.StateRunning, InstanceID: "i-1"})
			},
			again: state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceCallback, State: runcomfy.StateQueued, Owner: "team"},
			u:     state.Update{RequestID: id, Source: state.SourceCallback, State: runcomfy.StateRunning, InstanceID: "i-1"},
			// Caught up to running (seq 2), its event held back until a
			// poll confirmed it.
			wantState: runcomfy.StateRunning, wantEvents: []string{"request.running@3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr := newScheduledLossTracker(t, s, clock)
			tt.remember(ctx, t, tr)
			clock.advance(time.Minute)
			s.lose(ctx, t, false) // evicted: the store does not know
			mustApply(ctx, t, newScheduledLossTracker(t, s, clock), tt.again)
			made := mustGetRecord(ctx, t, s, id)
			if len(made.Webhooks) != 0 || made.MaxRun != 0 || made.Seq != 1 {
				t.Fatalf("made again: %+v; want seq 1 without webhooks or deadline", made)
			}

			clock.advance(time.Second)
			mustApply(ctx, t, tr, tt.u)
			rec := mustGetRecord(ctx, t, s, id)
			if rec.Epoch != made.Epoch || rec.State != tt.wantState {
				t.Errorf("stored %s at epoch %d, want %s at %d", rec.State, rec.Epoch, tt.wantState, made.Epoch)
			}
			if !slices.Equal(rec.Webhooks, hooksAll) || rec.Owner != "team" || rec.OwnerAttached || rec.MaxRun != 30*time.Minute {
				t.Errorf("webhooks %v, owner %q (attached %v), max run %v; want %v, proven team, 30m", rec.Webhooks, rec.Owner, rec.OwnerAttached, rec.MaxRun, hooksAll)
			}
			if at, kind := rec.Deadline(); kind != state.ErrorTypeMaxRunDuration || !at.Equal(rec.StartedAt.Add(30*time.Minute)) {
				t.Errorf("deadline %s at %v, want the run deadline", kind, at)
			}
			settle(ctx, t, clock, tr)
			confirm(ctx, t, clock, s, tr, id)
			if got := eventTypes(epochEvents(ctx, t, s, id, rec.Epoch)); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %v, want %v", got, tt.wantEvents)
			}
		})
	}
}

// TestRestoreLostHoldsTheEventsBack pins the held-back events of RestoreLost
// (RestoreSettle): none is queued with the restore; an unfinished record's is
// queued once the settle passed and a poll confirmed its state, with a save
// at the next seq, and held again while the store does not answer; one whose
// record moved on is dropped; ReleaseHeld, for a replica that stops, queues
// them before they are due, but drops those RunComfy has not confirmed; a
// record lost again meanwhile is left to the next restore.
func TestRestoreLostHoldsTheEventsBack(t *testing.T) {
	unavailable := fmt.Errorf("redis get: %w", state.ErrUnavailable)
	tests := []struct {
		name string
		// release queues the held events, and fails the test when it
		// cannot; it may advance the clock.
		release    func(ctx context.Context, t *testing.T, tr *state.Tracker, s *lossStore, clock *lossClock)
		wantEvents []string
	}{
		{
			name: "due, and confirmed by a poll",
			release: func(ctx context.Context, t *testing.T, tr *state.Tracker, s *lossStore, clock *lossClock) {
				clock.advance(state.RestoreSettle - time.Millisecond)
				if _, err := tr.RestoreLost(ctx); err != nil {
					t.Fatal(err)
				}
				if got := eventsOf(ctx, t, s, "req-held"); len(got) != 0 {
					t.Fatalf("events before the settle passed: %v", got)
				}
				settle(ctx, t, clock, tr)
				// Every replica may have remembered less than RunComfy
				// knows: an unfinished state waits for a poll.
				if got := eventsOf(ctx, t, s, "req-held"); len(got) != 0 {
					t.Fatalf("events before a poll confirmed the state: %v", got)
				}
				// An unconfirmed record is looked at again a settle
				// later, not at every look for a loss.
				gets, _ := s.calls()
				if _, err := tr.RestoreLost(ctx); err != nil {
					t.Fatal(err)
				}
				if g, _ := s.calls(); g != gets {
					t.Errorf("the unconfirmed record was read %d more times within a settle", g-gets)
				}
				confirm(ctx, t, clock, s, tr, "req-held")
			},
			wantEvents: []string{"request.running@2"},
		},
		{
			name: "the store did not answer, then did",
			release: func(ctx context.Context, t *testing.T, tr *state.Tracker, s *lossStore, clock *lossClock) {
				clock.advance(state.RestoreSettle)
				polled(ctx, t, tr, "req-held", runcomfy.StateRunning)
				s.failNextGet("req-held", unavailable)
				if _, err := tr.RestoreLost(ctx); !errors.Is(err, state.ErrUnavailable) {
					t.Fatalf("RestoreLost with the store down: %v, want unavailable", err)
				}
				if _, err := tr.RestoreLost(ctx); err != nil {
					t.Fatal(err)
				}
			},
			wantEvents: []string{"request.running@2"},
		},
		{
			name: "RunComfy moved it on",
			release: func(ctx context.Context, t *testing.T, tr *state.Tracker, _ *lossStore, clock *lossClock) {
				mustApply(ctx, t, tr, state.Update{RequestID: "req-held", Source: state.SourcePoll, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
				settle(ctx, t, clock, tr)
			},
			wantEvents: []string{"request.succeeded@2"},
		},
		{
			name: "the replica stops before the settle, the state confirmed",
			release: func(ctx context.Context, t *testing.T, tr *state.Tracker, _ *lossStore, clock *lossClock) {
				clock.advance(time.Second)
				polled(ctx, t, tr, "req-held", runcomfy.StateRunning)
				if err := tr.ReleaseHeld(ctx); err != nil {
					t.Fatal(err)
				}
			},
			wantEvents: []string{"request.running@2"},
		},
		{
			// Dropped: the request may have left that state, and what
			// this replica remembered may be all that is left of it.
			name: "the replica stops before a poll confirmed the state",
			release: func(ctx context.Context, t *testing.T, tr *state.Tracker, _ *lossStore, _ *lossClock) {
				if err := tr.ReleaseHeld(ctx); err != nil {
					t.Fatal(err)
				}
			},
			wantEvents: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clock := newLossClock()
			s := newLossStore(clock)
			tr := newLossTracker(t, s.replica(), s, clock)
			submitHooked(ctx, t, tr, "req-held", hooksAll)
			mustApply(ctx, t, tr, state.Update{RequestID: "req-held", Source: state.SourceCallback, State: runcomfy.StateRunning})
			loseAndRestore(ctx, t, clock, s, tr)
			if got := eventsOf(ctx, t, s, "req-held"); len(got) != 0 {
				t.Fatalf("events queued with the restore: %v, want none yet", got)
			}
			tt.release(ctx, t, tr, s, clock)
			if got := eventsOf(ctx, t, s, "req-held"); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %v, want %v", got, tt.wantEvents)
			}
			// Queued once: nothing is held any more.
			settle(ctx, t, clock, tr)
			if err := tr.ReleaseHeld(ctx); err != nil {
				t.Fatal(err)
			}
			if got := eventsOf(ctx, t, s, "req-held"); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events after more looks = %v, want %v", got, tt.wantEvents)
			}
		})
	}

	t.Run("lost again before the settle", func(t *testing.T) {
		ctx := ctxT(t)
		clock := newLossClock()
		s := newLossStore(clock)
		tr := newLossTracker(t, s.replica(), s, clock)
		submitHooked(ctx, t, tr, "req-held", hooksAll)
		loseAndRestore(ctx, t, clock, s, tr)
		first := mustGetRecord(ctx, t, s, "req-held")
		// Lost again, without a word: the held event finds nothing and
		// queues nothing, and writes nothing back.
		s.lose(ctx, t, false)
		settle(ctx, t, clock, tr)
		if _, err := s.Backend.Get(ctx, "req-held"); !errors.Is(err, state.ErrNotFound) {
			t.Errorf("after the settle: %v, want the record still lost", err)
		}
		if got := eventTypes(epochEvents(ctx, t, s, "req-held", first.Epoch)); len(got) != 0 {
			t.Errorf("events of the lost epoch: %v, want none", got)
		}
	})
}

// TestRestoreLostLooksForALossWhenAHeldEventFails pins that a held event
// that could not be queued for a reason other than the store being down
// does not keep the same look from finding a loss and putting back what it
// lost.
func TestRestoreLostLooksForALossWhenAHeldEventFails(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	tr := newLossTracker(t, s.replica(), s, clock)
	submitHooked(ctx, t, tr, "req-held", hooksAll)
	mustApply(ctx, t, tr, state.Update{RequestID: "req-held", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: lossOutputs})
	loseAndRestore(ctx, t, clock, s, tr)

	clock.advance(state.RestoreSettle)
	broken := errors.New("record does not decode")
	s.failNextGet("req-held", broken)
	s.lose(ctx, t, true)
	n, err := tr.RestoreLost(ctx)
	if !errors.Is(err, broken) {
		t.Errorf("RestoreLost = %v, want the held event's error", err)
	}
	if n != 1 {
		t.Fatalf("RestoreLost put back %d records, want 1 in the same look", n)
	}
	if got := mustGetRecord(ctx, t, s, "req-held"); got.State != runcomfy.StateSucceeded {
		t.Errorf("record put back as %v, want succeeded", got.State)
	}
	// The new epoch's event is held as any restore's, and queued a settle on.
	settle(ctx, t, clock, tr)
	if got, want := eventsOf(ctx, t, s, "req-held"), []string{"request.succeeded@2"}; !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
}

// TestLookupPutsBackALostRecord pins that a read of a request this replica
// remembers, whose record the store lost, puts it back at once (its webhook
// event held as any restore's) rather than answering it unknown until the
// next look for a loss; and that a request it does not remember, or whose
// retention ran out, is unknown still.
func TestLookupPutsBackALostRecord(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	tr := newLossTracker(t, s.replica(), s, clock)
	was := submitHooked(ctx, t, tr, "req-read", hooksAll)
	mustApply(ctx, t, tr, state.Update{RequestID: "req-read", Source: state.SourceCallback, State: runcomfy.StateRunning})
	submitHooked(ctx, t, tr, "req-old", hooksAll)
	if _, err := tr.RestoreLost(ctx); err != nil { // the first look: nothing lost
		t.Fatal(err)
	}
	clock.advance(time.Minute)
	s.lose(ctx, t, true)

	got, err := tr.Lookup(ctx, "req-read")
	if err != nil {
		t.Fatalf("Lookup of a lost request it remembers: %v", err)
	}
	if got.State != runcomfy.StateRunning || got.Seq != 1 || got.Epoch <= was.Epoch || !slices.Equal(got.Webhooks, hooksAll) {
		t.Errorf("Lookup = %v at epoch %d seq %d, webhooks %v; want running, put back at seq 1 of an epoch after %d, its webhooks kept",
			got.State, got.Epoch, got.Seq, got.Webhooks, was.Epoch)
	}
	if stored := mustGetRecord(ctx, t, s, "req-read"); stored.Position() != got.Position() {
		t.Errorf("stored %+v, want what Lookup returned", stored)
	}
	if evs := eventsOf(ctx, t, s, "req-read"); len(evs) != 0 {
		t.Errorf("events queued with the read: %v, want the restore's held", evs)
	}
	if _, err := tr.Lookup(ctx, "req-never"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Lookup of a request never seen = %v, want not found", err)
	}
	// The look for the loss finds the one the read put back; the read's
	// event goes once confirmed, as any restore's.
	if n, err := tr.RestoreLost(ctx); err != nil || n != 1 {
		t.Fatalf("RestoreLost = %d, %v; want only the request not read put back", n, err)
	}
	clock.advance(time.Second)
	confirm(ctx, t, clock, s, tr, "req-read")
	if got, want := eventsOf(ctx, t, s, "req-read"), []string{"request.running@2"}; !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}

	s.lose(ctx, t, false)
	clock.advance(lossRetention)
	if _, err := tr.Lookup(ctx, "req-old"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Lookup of a request past its retention = %v, want not found", err)
	}
}

// TestLookupGivesBackTheProvenOwner pins that a record made again after a
// loss, by another replica, for a tenant that attached it meanwhile, is
// given back to the owner this replica knows by proof (its submit came
// through here) at this replica's next read, as the owner's next callback
// would; a record of the epoch it knows is left as it is.
func TestLookupGivesBackTheProvenOwner(t *testing.T) {
	const id = "req-owned"
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	tr := newLossTracker(t, s.replica(), s, clock)
	mustApply(ctx, t, tr, state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team"})
	if got, err := tr.Lookup(ctx, id); err != nil || got.Owner != "team" || got.Seq != 1 {
		t.Fatalf("Lookup before the loss = %+v, %v; want seq 1, untouched", got, err)
	}
	clock.advance(time.Minute)
	s.lose(ctx, t, false) // evicted
	// A replica that never knew it: a tenant that may attach reads it.
	mustApply(ctx, t, newLossTracker(t, s.replica(), s, clock),
		state.Update{RequestID: id, DeploymentID: "dep-restore", Source: state.SourceAttach, State: runcomfy.StateQueued, Owner: "attacher"})
	if made := mustGetRecord(ctx, t, s, id); made.Owner != "attacher" || !made.OwnerAttached {
		t.Fatalf("made again as %q (attached %v), want the attacher's, on trust", made.Owner, made.OwnerAttached)
	}

	got, err := tr.Lookup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	stored := mustGetRecord(ctx, t, s, id)
	if got.Owner != "team" || got.OwnerAttached || stored.Position() != got.Position() || stored.Owner != "team" {
		t.Errorf("Lookup = owner %q (attached %v), stored %q; want team, by proof, stored", got.Owner, got.OwnerAttached, stored.Owner)
	}
	// Read again: nothing more to give back, nothing saved.
	_, saves := s.calls()
	if again, err := tr.Lookup(ctx, id); err != nil || again.Position() != got.Position() {
		t.Errorf("Lookup again = %+v, %v; want the same record", again, err)
	}
	if _, n := s.calls(); n != saves {
		t.Errorf("%d saves on a read with nothing to give back", n-saves)
	}
}

// eventsOf names the events queued for requestID in its stored record's
// epoch.
func eventsOf(ctx context.Context, t *testing.T, s *lossStore, requestID string) []string {
	t.Helper()
	return eventTypes(epochEvents(ctx, t, s, requestID, mustGetRecord(ctx, t, s, requestID).Epoch))
}

// TestReconcilerQueuesTheHeldEventsWhenItStops pins that a replica that
// stops before its restore settled queues the events it held back: no other
// replica would.
func TestReconcilerQueuesTheHeldEventsWhenItStops(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	s := newLossStore(clock)
	tr := newScheduledLossTracker(t, s, clock)
	submitHooked(ctx, t, tr, "req-stop", hooksAll)
	mustApply(ctx, t, tr, state.Update{RequestID: "req-stop", Source: state.SourceCallback, State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "oom"}})
	loseAndRestore(ctx, t, clock, s, tr)

	rec, err := state.NewReconciler(state.ReconcilerConfig{
		Schedule: s, Tracker: tr, Upstream: newUpstream(t, runcomfysim.Options{}, nil).client,
		Interval: time.Hour, Owner: "replica-stop", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rec.Run(runCtx) }()
	if got := eventsOf(ctx, t, s, "req-stop"); len(got) != 0 {
		t.Fatalf("events while it runs, before the settle: %v", got)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := eventsOf(ctx, t, s, "req-stop"), []string{"request.failed@2"}; !slices.Equal(got, want) {
		t.Errorf("events once it stopped = %v, want %v", got, want)
	}
}

// loseAndRestore has tr look for a loss (its first look: nothing lost), then,
// a minute on, has the store lose its data and say so, and tr put back the
// one request it remembers.
func loseAndRestore(ctx context.Context, t *testing.T, clock *lossClock, s *lossStore, tr *state.Tracker) {
	t.Helper()
	if _, err := tr.RestoreLost(ctx); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Minute)
	s.lose(ctx, t, true)
	if n, err := tr.RestoreLost(ctx); n != 1 || err != nil {
		t.Fatalf("RestoreLost = %d, %v; want 1", n, err)
	}
}
