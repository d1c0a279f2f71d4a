package statetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Loser is a backend that can lose a record, as a Redis restarted empty or
// an eviction does.
type Loser interface {
	Delete(ctx context.Context, requestID string) error
}

func epochCases() []testCase {
	return []testCase{
		{"SaveComparesEpochs", testSaveComparesEpochs},
		{"NewEpochMidWatch", testNewEpochMidWatch},
		{"ResumeFromStaleEpoch", testResumeFromStaleEpoch},
		{"LostRecordRebuiltUnderWatch", testLostRecordRebuilt},
		{"LostRecordGoneUpstreamEnds", testLostRecordGoneUpstream},
		{"Touch", testTouch},
		{"RollbackWithinEpoch", testRollbackWithinEpoch},
		{"LostRecordRebuildPaced", testLostRecordRebuildPaced},
	}
}

func mustLose(t *testing.T, b Backend, id string) {
	t.Helper()
	l, ok := b.(Loser)
	if !ok {
		t.Fatalf("%T cannot lose a record (no Delete)", b)
	}
	if err := l.Delete(testContext(t), id); err != nil {
		t.Fatalf("Delete(%s): %v", id, err)
	}
}

// testSaveComparesEpochs: a writer that still holds a lost incarnation of a
// record conflicts with the new one, even where the seqs agree.
func testSaveComparesEpochs(t *testing.T, b Backend) {
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	id := "req-epoch-save"
	old := mustApply(t, tr, queued(id, 3))
	if old.Epoch == 0 {
		t.Fatalf("new record has no epoch: %+v", old)
	}
	mustLose(t, b, id)
	// Another writer (a second tracker: its own memory of the request) creates
	// the record again.
	other := newTracker(t, b, &fakeResults{})
	renewed := mustApply(t, other, running(id, "inst-1"))
	if renewed.Seq != 1 || renewed.Epoch == old.Epoch {
		t.Fatalf("record created again = epoch %d seq %d, want seq 1 in an epoch other than %d", renewed.Epoch, renewed.Seq, old.Epoch)
	}

	stale := old.Clone()
	stale.Seq, stale.State = 2, runcomfy.StateRunning
	err := b.Save(ctx, stale, longTTL)
	if !errors.Is(err, state.ErrConflict) {
		t.Fatalf("Save at (old epoch, seq 2) over (new epoch, seq 1) = %v, want a conflict", err)
	}
	if got := mustGet(t, b, id); got.Epoch != renewed.Epoch || got.Seq != 1 {
		t.Errorf("after the refused save: epoch %d seq %d, want %d 1", got.Epoch, got.Seq, renewed.Epoch)
	}

	// The first tracker still remembers the old incarnation: its next update
	// merges with the new one instead.
	rec, outcome, err := tr.Apply(ctx, succeeded(id))
	if err != nil || outcome != state.Applied {
		t.Fatalf("Apply after the loss = %v, %v; want Applied", outcome, err)
	}
	if rec.Epoch != renewed.Epoch || rec.Seq != 2 {
		t.Errorf("record = epoch %d seq %d, want epoch %d seq 2", rec.Epoch, rec.Seq, renewed.Epoch)
	}
}

// follower reads w as the server's watch does: every record through a
// Follower, collecting what would be sent.
type follower struct {
	t    *testing.T
	b    Backend
	w    *state.Watcher
	f    *state.Follower
	sent []*state.Record
}

func newFollowerOf(t *testing.T, b Backend, h *state.Hub, id string, after state.Position) *follower {
	t.Helper()
	w := watch(t, h, id)
	fl := &follower{t: t, b: b, w: w, f: state.NewFollower(b, after)}
	snap, err := b.Get(testContext(t), id)
	switch {
	case err == nil:
		if fl.f.First(snap) {
			fl.sent = append(fl.sent, snap)
		}
	case !errors.Is(err, state.ErrNotFound):
		t.Fatalf("Get snapshot: %v", err)
	}
	return fl
}

// until reads until done says so about the last record sent, and returns
// what was sent meanwhile.
func (fl *follower) until(done func(last *state.Record) bool) []*state.Record {
	fl.t.Helper()
	from := len(fl.sent)
	ctx := testContext(fl.t)
	for len(fl.sent) == 0 || !done(fl.sent[len(fl.sent)-1]) {
		recs, err := fl.w.Next(ctx)
		if err != nil {
			fl.t.Fatalf("Next after %s: %v", positions(fl.sent), err)
		}
		for _, r := range recs {
			s, err := fl.f.Next(ctx, r)
			if err != nil {
				fl.t.Fatalf("Follower.Next(%d/%d): %v", r.Epoch, r.Seq, err)
			}
			if s != nil {
				fl.sent = append(fl.sent, s)
			}
		}
	}
	return fl.sent[from:]
}

func positions(recs []*state.Record) string {
	s := "["
	for i, r := range recs {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%d/%d:%s", r.Epoch, r.Seq, r.State)
	}
	return s + "]"
}

// testNewEpochMidWatch: a record lost and created again under an open watch
// reaches the watcher as the new incarnation's full state, after which the
// watcher follows the new epoch; a late record of the lost incarnation is not
// sent, and the terminal state is.
func testNewEpochMidWatch(t *testing.T, b Backend) {
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	id := "req-epoch-watch"
	a1 := mustApply(t, tr, queued(id, 2))
	fl := newFollowerOf(t, b, hub, id, state.Position{})
	if len(fl.sent) != 1 || fl.sent[0].Position() != a1.Position() {
		t.Fatalf("snapshot sent %s, want %d/1", positions(fl.sent), a1.Epoch)
	}
	a2 := mustApply(t, tr, queued(id, 1))
	fl.until(func(r *state.Record) bool { return r.Position() == a2.Position() })

	mustLose(t, b, id)
	b1 := mustApply(t, tr, running(id, "inst-1"))
	if b1.Epoch == a1.Epoch || b1.Seq != 1 {
		t.Fatalf("recreated record at %d/%d, want seq 1 of a new epoch", b1.Epoch, b1.Seq)
	}
	got := fl.until(func(r *state.Record) bool { return r.Epoch == b1.Epoch })
	if len(got) != 1 || got[0].State != runcomfy.StateRunning || got[0].DeploymentID != deployment || got[0].InstanceID != "inst-1" {
		t.Fatalf("after the loss the watcher got %s, want the new full state (running on inst-1)", positions(got))
	}

	// A record of the lost incarnation arriving late (a resync read before
	// the loss, delivered after) is not news.
	late := a2.Clone()
	late.Seq, late.State = 3, runcomfy.StateRunning
	hub.Redeliver(late)
	mustApply(t, tr, succeeded(id))
	got = fl.until(func(r *state.Record) bool { return r.Terminal() })
	for _, r := range got {
		if r.Epoch != b1.Epoch {
			t.Errorf("sent %d/%d after moving to epoch %d", r.Epoch, r.Seq, b1.Epoch)
		}
	}
	if last := got[len(got)-1]; last.State != runcomfy.StateSucceeded || len(last.Outputs) == 0 {
		t.Errorf("last record %+v, want the success with its outputs", last)
	}
}

// testResumeFromStaleEpoch: a resume point of another epoch than the record's
// gets the current state first, whatever the seqs; one of the record's epoch
// compares seqs.
func testResumeFromStaleEpoch(t *testing.T, b Backend) {
	tr := newTracker(t, b, &fakeResults{})
	id := "req-epoch-resume"
	mustApply(t, tr, queued(id, 2))
	a2 := mustApply(t, tr, queued(id, 1))
	mustLose(t, b, id)
	b1 := mustApply(t, tr, running(id, "inst-1"))
	tests := []struct {
		name  string
		after state.Position
		want  bool
	}{
		{"stale epoch, later seq", a2.Position(), true},
		{"stale epoch, same seq", state.Position{Epoch: a2.Epoch, Seq: 1}, true},
		{"current epoch, same seq", b1.Position(), false},
		{"current epoch, earlier seq", state.Position{Epoch: b1.Epoch}, true},
		{"no resume point", state.Position{}, true},
		// Without an epoch, below the resume point: only a record made
		// again can be there, and it is sent.
		{"seq only, later", state.Position{Seq: 2}, true},
		{"seq only, same", state.Position{Seq: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := state.NewFollower(b, tt.after)
			if got := f.First(mustGet(t, b, id)); got != tt.want {
				t.Fatalf("First after %+v = %v, want %v", tt.after, got, tt.want)
			}
			if tt.want && f.Position() != b1.Position() {
				t.Errorf("position after sending = %+v, want %+v", f.Position(), b1.Position())
			}
		})
	}
}

// fakeUpstream answers status and result reads for one request and counts
// them.
type fakeUpstream struct {
	mu       sync.Mutex
	status   *runcomfy.StatusResponse
	result   *runcomfy.ResultResponse
	err      error
	statuses int
}

func (f *fakeUpstream) Status(_ context.Context, _, requestID string) (*runcomfy.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses++
	if f.err != nil {
		return nil, f.err
	}
	st := *f.status
	st.RequestID = requestID
	return &st, nil
}

func (f *fakeUpstream) Result(_ context.Context, _, requestID string) (*runcomfy.ResultResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if f.result == nil {
		return nil, errors.New("no result")
	}
	r := *f.result
	r.RequestID = requestID
	return &r, nil
}

func (f *fakeUpstream) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.statuses
}

// runReconciler runs a reconciler on b until the test ends.
func runReconciler(t *testing.T, b Backend, tr *state.Tracker, up state.Upstream, hub *state.Hub, interval time.Duration) *state.Reconciler {
	t.Helper()
	sched, ok := b.(state.Schedule)
	if !ok {
		t.Fatalf("%T is not a schedule", b)
	}
	rc, err := state.NewReconciler(state.ReconcilerConfig{
		Schedule: sched, Tracker: tr, Upstream: up,
		Watching: hub.IsWatching, Watched: hub.Watched,
		Interval: interval, Owner: "replica-1",
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("NewReconciler: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rc.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return rc
}

func scheduledTracker(t *testing.T, b Backend, interval time.Duration) *state.Tracker {
	t.Helper()
	sched, ok := b.(state.Schedule)
	if !ok {
		t.Fatalf("%T is not a schedule", b)
	}
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: &fakeResults{}, Schedule: sched, PollInterval: interval})
	if err != nil {
		t.Fatalf("NewTracker: %v", err)
	}
	return tr
}

// testLostRecordRebuilt: a watched request whose record is lost, and for
// which no callback comes, is rebuilt from RunComfy under a new epoch with
// its owner, and its watcher gets its end.
func testLostRecordRebuilt(t *testing.T, b Backend) {
	const interval = 100 * time.Millisecond
	tr := scheduledTracker(t, b, interval)
	hub := newHub(t, b, 0)
	id := "req-epoch-rebuild"
	u := queued(id, 1)
	u.Owner = "tenant-b"
	a1 := mustApply(t, tr, u)
	fl := newFollowerOf(t, b, hub, id, state.Position{})
	hub.Describe(id, deployment, "tenant-b", false)
	mustLose(t, b, id)

	up := &fakeUpstream{
		status: &runcomfy.StatusResponse{Status: "completed", State: runcomfy.StateSucceeded},
		result: &runcomfy.ResultResponse{Status: "completed", State: runcomfy.StateSucceeded, Outputs: []byte(sampleOutputs), OutputURLs: sampleURLs},
	}
	rc := runReconciler(t, b, tr, up, hub, interval)
	got := fl.until(func(r *state.Record) bool { return r.Terminal() })
	last := got[len(got)-1]
	if n := countOnceDone(t, rc.Rebuilt); n != 1 {
		t.Errorf("Rebuilt = %d, want 1", n)
	}
	if last.Epoch == a1.Epoch || last.State != runcomfy.StateSucceeded || last.Owner != "tenant-b" || last.OwnerAttached || len(last.Outputs) == 0 {
		t.Fatalf("after the loss the watcher got %s, last %+v; want the success in a new epoch, owned by tenant-b, with outputs", positions(got), last)
	}
	if stored := mustGet(t, b, id); stored.Position() != last.Position() {
		t.Errorf("stored %d/%d, watcher ended at %d/%d", stored.Epoch, stored.Seq, last.Epoch, last.Seq)
	}
	if up.calls() == 0 {
		t.Error("RunComfy was never asked")
	}
}

// testLostRecordGoneUpstream: a lost watched record that RunComfy no longer
// knows either ends FAILED (upstream_lost), and its watcher gets that end.
func testLostRecordGoneUpstream(t *testing.T, b Backend) {
	const interval = 100 * time.Millisecond
	tr := scheduledTracker(t, b, interval)
	hub := newHub(t, b, 0)
	id := "req-epoch-gone"
	u := queued(id, 1)
	u.Owner = "tenant-b"
	mustApply(t, tr, u)
	fl := newFollowerOf(t, b, hub, id, state.Position{})
	hub.Describe(id, deployment, "tenant-b", false)
	mustLose(t, b, id)

	up := &fakeUpstream{err: fmt.Errorf("status: %w", runcomfy.ErrNotFound)}
	rc := runReconciler(t, b, tr, up, hub, interval)
	got := fl.until(func(r *state.Record) bool { return r.Terminal() })
	last := got[len(got)-1]
	if n := countOnceDone(t, rc.LostUpstream); n != 1 {
		t.Errorf("LostUpstream = %d, want 1", n)
	}
	if last.State != runcomfy.StateFailed || last.Error == nil || last.Error.Type != state.ErrorTypeUpstreamLost || last.Owner != "tenant-b" {
		t.Fatalf("watcher ended with %+v, want FAILED %s owned by tenant-b", last, state.ErrorTypeUpstreamLost)
	}
	if n := up.calls(); n < 2 {
		t.Errorf("RunComfy asked %d times, want at least 2 (a single not-found is not an end)", n)
	}
}

// testTouch: Touch moves SyncedAt of the record at its position only, and
// only forward; nothing is published.
func testTouch(t *testing.T, b Backend) {
	tc, ok := b.(state.Toucher)
	if !ok {
		t.Fatalf("%T is not a Toucher", b)
	}
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	id := "req-touch"
	rec := mustApply(t, tr, queued(id, 2))
	w := watch(t, hub, id)
	base := rec.SyncedAt.Truncate(time.Millisecond)
	later := base.Add(time.Minute)
	tests := []struct {
		name string
		pos  state.Position
		at   time.Time
		want time.Time
	}{
		{"another seq", state.Position{Epoch: rec.Epoch, Seq: 2}, later, rec.SyncedAt},
		{"another epoch", state.Position{Epoch: rec.Epoch + 1, Seq: 1}, later, rec.SyncedAt},
		{"its position", rec.Position(), later, later},
		{"backwards", rec.Position(), base, later},
	}
	for _, tt := range tests {
		if err := tc.Touch(ctx, id, tt.pos, tt.at); err != nil {
			t.Fatalf("%s: Touch: %v", tt.name, err)
		}
		got := mustGet(t, b, id)
		if !got.SyncedAt.Equal(tt.want) || got.Position() != rec.Position() {
			t.Errorf("%s: record at %d/%d synced %v, want %d/%d synced %v", tt.name, got.Epoch, got.Seq, got.SyncedAt, rec.Epoch, rec.Seq, tt.want)
		}
	}
	if p := pending(w); len(p) != 0 {
		t.Errorf("touches published %s", positions(p))
	}
	// The next save carries its own sync time.
	next := mustApply(t, tr, queued(id, 1))
	if got := mustGet(t, b, id); !got.SyncedAt.Equal(next.SyncedAt) {
		t.Errorf("after a save: synced %v, want the save's %v", got.SyncedAt, next.SyncedAt)
	}
}

// countOnceDone reads a counter the reconciler moves just after what the test
// saw happen: it waits until the counter is not zero (or the wait limit).
func countOnceDone(t *testing.T, count func() int64) int64 {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for count() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return count()
}

// testRollbackWithinEpoch: the store comes back with an older copy of the
// record in the same epoch (a failover to a replica that lagged, the last
// second of an AOF lost), and the next write, by a replica that never saw
// the lost seqs, repeats a seq the watcher has seen, with the final state.
// The watcher gets it.
func testRollbackWithinEpoch(t *testing.T, b Backend) {
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	id := "req-epoch-rollback"
	r1 := mustApply(t, tr, queued(id, 2))
	r2 := mustApply(t, tr, running(id, ""))
	fl := newFollowerOf(t, b, hub, id, state.Position{})
	mustApply(t, tr, running(id, "inst-1")) // seq 3, seen by the watcher
	fl.until(func(r *state.Record) bool { return r.Seq == 3 })

	// The lagging copy: seqs 1 and 2 only, republished as a restore would.
	mustLose(t, b, id)
	for _, r := range []*state.Record{r1, r2} {
		if err := b.Save(ctx, r.Clone(), longTTL); err != nil {
			t.Fatalf("restore seq %d: %v", r.Seq, err)
		}
	}
	other := newTracker(t, b, &fakeResults{})
	fin := mustApply(t, other, succeeded(id))
	if fin.Epoch != r1.Epoch || fin.Seq != 3 {
		t.Fatalf("the success stored at %d/%d, want %d/3 (the seq the watcher saw)", fin.Epoch, fin.Seq, r1.Epoch)
	}
	got := fl.until(func(r *state.Record) bool { return r.Terminal() })
	if last := got[len(got)-1]; last.State != runcomfy.StateSucceeded {
		t.Errorf("after the rollback the watcher got %s, want the success", positions(got))
	}
	for _, r := range got {
		if state.Rank(r.State) < state.Rank(runcomfy.StateRunning) {
			t.Errorf("after the rollback the watcher went back to %s (%s)", r.State, positions(got))
		}
	}
}

// testLostRecordRebuildPaced: while RunComfy fails every read, a lost watched
// record is asked for at the pace of a failing poll of a watched request (half
// the interval), whether its schedule entry survived (an eviction) or not (a
// Redis restarted empty): never in a loop.
func testLostRecordRebuildPaced(t *testing.T, b Backend) {
	const interval = 100 * time.Millisecond
	for _, scheduled := range []bool{true, false} {
		t.Run(fmt.Sprintf("scheduled=%v", scheduled), func(t *testing.T) {
			tr := scheduledTracker(t, b, interval)
			hub := newHub(t, b, 0)
			id := fmt.Sprintf("req-epoch-paced-%v", scheduled)
			u := queued(id, 1)
			u.Owner = "tenant-b"
			mustApply(t, tr, u)
			newFollowerOf(t, b, hub, id, state.Position{})
			hub.Describe(id, deployment, "tenant-b", false)
			mustLose(t, b, id)
			if !scheduled {
				if err := b.(state.Schedule).Forget(testContext(t), id); err != nil {
					t.Fatal(err)
				}
			}
			up := &fakeUpstream{err: &runcomfy.APIError{Op: "status", HTTPStatus: 500, Code: 500001}}
			runReconciler(t, b, tr, up, hub, interval)
			time.Sleep(20 * interval)
			n := up.calls()
			t.Logf("status calls in 20 intervals: %d", n)
			// Half the interval: about 40. A loop makes thousands.
			if n > 60 {
				t.Errorf("%d status calls in 20 intervals, want about 40 (every half interval)", n)
			}
			if n == 0 {
				t.Error("the lost record was never asked for")
			}
		})
	}
}
