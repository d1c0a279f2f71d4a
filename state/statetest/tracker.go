package statetest

// This file holds the cases of the Tracker's: the one writer and its invariants.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

func trackerCases() []testCase {
	return []testCase{
		{"MonotonicState", testMonotonicState},
		{"Duplicates", testDuplicates},
		{"ReversedOrder", testReversedOrder},
		{"SameRankInformation", testSameRankInformation},
		{"SuccessWithoutOutputs", testSuccessWithoutOutputs},
		{"UnknownState", testUnknownState},
		{"Stats", testStats},
		{"ReplicasTakeTurns", testReplicasTakeTurns},
		{"RoundTrips", testRoundTrips},
		{"ScheduleFollowsRecords", testScheduleFollowsRecords},
	}
}

// step is one Apply in a scripted sequence and what it must do.
type step struct {
	name      string
	u         state.Update
	want      state.Outcome
	wantState runcomfy.State
	wantSeq   int64
	// check, when set, inspects the stored record after the step.
	check func(*state.Record) string
}

// runSteps applies each step in order. An applied step must store and return
// the same record; any other outcome must leave the stored record unchanged.
func runSteps(t *testing.T, b Backend, tr *state.Tracker, steps []step) {
	t.Helper()
	ctx := testContext(t)
	for _, s := range steps {
		before, err := b.Get(ctx, s.u.RequestID)
		if err != nil && !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("%s: Get before Apply: %v", s.name, err)
		}
		got, outcome, err := tr.Apply(ctx, s.u)
		if err != nil {
			t.Fatalf("%s: Apply: %v", s.name, err)
		}
		if outcome != s.want {
			t.Fatalf("%s: Apply outcome = %v, want %v", s.name, outcome, s.want)
		}
		stored := mustGet(t, b, s.u.RequestID)
		if stored.State != s.wantState || stored.Seq != s.wantSeq {
			t.Fatalf("%s: stored record is %v seq %d, want %v seq %d", s.name, stored.State, stored.Seq, s.wantState, s.wantSeq)
		}
		if got == nil {
			t.Fatalf("%s: Apply returned no record, want the current one", s.name)
		}
		if d := diffRecord(got, stored); d != "" {
			t.Errorf("%s: Apply returned a record that differs from the stored one:\n%s", s.name, d)
		}
		if outcome != state.Applied && before != nil {
			if d := diffRecord(stored, before); d != "" {
				t.Errorf("%s: %v update changed the stored record:\n%s", s.name, outcome, d)
			}
		}
		if s.check != nil {
			if msg := s.check(stored); msg != "" {
				t.Errorf("%s: %s", s.name, msg)
			}
		}
	}
}

func testMonotonicState(t *testing.T, b Backend) {
	const id = "req-monotonic"
	results := &fakeResults{}
	tr := newTracker(t, b, results)
	rec := subscribe(t, b, id)
	runSteps(t, b, tr, []step{
		{name: "queued", u: queued(id, 2), want: state.Applied, wantState: runcomfy.StateQueued, wantSeq: 1},
		{name: "running", u: running(id, "inst-1"), want: state.Applied, wantState: runcomfy.StateRunning, wantSeq: 2},
		{name: "succeeded", u: succeeded(id), want: state.Applied, wantState: runcomfy.StateSucceeded, wantSeq: 3},
		{name: "running after success", u: running(id, "inst-2"), want: state.Stale, wantState: runcomfy.StateSucceeded, wantSeq: 3},
		{name: "queued after success", u: queued(id, 1), want: state.Stale, wantState: runcomfy.StateSucceeded, wantSeq: 3},
		{name: "failed after success", u: failed(id), want: state.Stale, wantState: runcomfy.StateSucceeded, wantSeq: 3},
		{name: "cancelled after success", u: cancelled(id), want: state.Stale, wantState: runcomfy.StateSucceeded, wantSeq: 3},
		{name: "succeeded again", u: succeeded(id), want: state.Duplicate, wantState: runcomfy.StateSucceeded, wantSeq: 3},
		{name: "succeeded again without outputs", u: succeededBare(id), want: state.Duplicate, wantState: runcomfy.StateSucceeded, wantSeq: 3},
	})
	expectPublished(t, b, rec, id, 1, 2, 3)
	if got := results.callCount(); got != 0 {
		t.Errorf("result fetcher called %d times, want 0 (every success carried outputs or was a duplicate)", got)
	}
}

func testDuplicates(t *testing.T, b Backend) {
	const n = 10
	ctx := testContext(t)

	t.Run("sequential", func(t *testing.T) {
		const id = "req-dup-seq"
		tr := newTracker(t, b, &fakeResults{})
		rec := subscribe(t, b, id)
		counts := map[state.Outcome]int{}
		for range n {
			_, outcome, err := tr.Apply(ctx, queued(id, 3))
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			counts[outcome]++
		}
		if want := (map[state.Outcome]int{state.Applied: 1, state.Duplicate: n - 1}); !maps.Equal(counts, want) {
			t.Errorf("outcomes = %v, want %v", counts, want)
		}
		if got := mustGet(t, b, id).Seq; got != 1 {
			t.Errorf("seq = %d, want 1", got)
		}
		expectPublished(t, b, rec, id, 1)
	})

	tests := []struct {
		name     string
		trackers int // replicas applying the same delivery at once
	}{
		{"concurrent on one tracker", 1},
		{"concurrent on one tracker per replica", n},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-dup-%d", tt.trackers)
			trackers := make([]*state.Tracker, tt.trackers)
			for i := range trackers {
				trackers[i] = newTracker(t, b, &fakeResults{})
			}
			rec := subscribe(t, b, id)
			outcomes := make([]state.Outcome, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					<-start
					_, outcome, err := trackers[i%len(trackers)].Apply(ctx, running(id, "inst-1"))
					if err != nil {
						t.Errorf("Apply %d: %v", i, err)
					}
					outcomes[i] = outcome
				})
			}
			close(start)
			wg.Wait()
			counts := map[state.Outcome]int{}
			for _, o := range outcomes {
				counts[o]++
			}
			if want := (map[state.Outcome]int{state.Applied: 1, state.Duplicate: n - 1}); !maps.Equal(counts, want) {
				t.Errorf("outcomes = %v, want %v", counts, want)
			}
			if got := mustGet(t, b, id).Seq; got != 1 {
				t.Errorf("seq = %d, want 1", got)
			}
			expectPublished(t, b, rec, id, 1)
		})
	}
}

func testReversedOrder(t *testing.T, b Backend) {
	const id = "req-reversed"
	results := &fakeResults{}
	tr := newTracker(t, b, results)
	rec := subscribe(t, b, id)
	want := succeeded(id)
	runSteps(t, b, tr, []step{
		{name: "succeeded first", u: want, want: state.Applied, wantState: runcomfy.StateSucceeded, wantSeq: 1},
		{name: "running late", u: running(id, "inst-1"), want: state.Stale, wantState: runcomfy.StateSucceeded, wantSeq: 1},
		{name: "queued last", u: queued(id, 4), want: state.Stale, wantState: runcomfy.StateSucceeded, wantSeq: 1},
	})
	got := mustGet(t, b, id)
	if normJSON(got.Outputs) != normJSON(want.Outputs) || !slices.Equal(got.OutputURLs, want.OutputURLs) {
		t.Errorf("outputs = %s %v, want %s %v", got.Outputs, got.OutputURLs, want.Outputs, want.OutputURLs)
	}
	if got.QueuePosition != nil {
		t.Errorf("queue position = %d, want none on a finished request", *got.QueuePosition)
	}
	expectPublished(t, b, rec, id, 1)
	if n := results.callCount(); n != 0 {
		t.Errorf("result fetcher called %d times, want 0", n)
	}
}

func testSameRankInformation(t *testing.T, b Backend) {
	const id = "req-same-rank"
	tr := newTracker(t, b, &fakeResults{})
	rec := subscribe(t, b, id)
	position := func(want int64) func(*state.Record) string {
		return func(r *state.Record) string {
			if r.QueuePosition == nil || *r.QueuePosition != want {
				return fmt.Sprintf("queue position = %s, want %d", ptrString(r.QueuePosition), want)
			}
			return ""
		}
	}
	noPosition := func(r *state.Record) string {
		if r.QueuePosition != nil {
			return fmt.Sprintf("queue position = %d, want none once running", *r.QueuePosition)
		}
		return ""
	}
	instance := func(want string) func(*state.Record) string {
		return func(r *state.Record) string {
			if r.InstanceID != want {
				return fmt.Sprintf("instance id = %q, want %q", r.InstanceID, want)
			}
			return ""
		}
	}
	runSteps(t, b, tr, []step{
		{name: "queued at 5", u: queued(id, 5), want: state.Applied, wantState: runcomfy.StateQueued, wantSeq: 1, check: position(5)},
		{name: "queued at 3", u: queued(id, 3), want: state.Applied, wantState: runcomfy.StateQueued, wantSeq: 2, check: position(3)},
		{name: "queued at 4 (late)", u: queued(id, 4), want: state.Duplicate, wantState: runcomfy.StateQueued, wantSeq: 2, check: position(3)},
		{name: "queued at 3 again", u: queued(id, 3), want: state.Duplicate, wantState: runcomfy.StateQueued, wantSeq: 2, check: position(3)},
		{name: "running", u: running(id, ""), want: state.Applied, wantState: runcomfy.StateRunning, wantSeq: 3, check: noPosition},
		{name: "running with instance", u: running(id, "inst-7"), want: state.Applied, wantState: runcomfy.StateRunning, wantSeq: 4, check: instance("inst-7")},
		{name: "running with instance again", u: running(id, "inst-7"), want: state.Duplicate, wantState: runcomfy.StateRunning, wantSeq: 4, check: instance("inst-7")},
	})
	expectPublished(t, b, rec, id, 1, 2, 3, 4)
}

func testSuccessWithoutOutputs(t *testing.T, b Backend) {
	fetched := &runcomfy.ResultResponse{
		Status:     "succeeded",
		State:      runcomfy.StateSucceeded,
		Outputs:    json.RawMessage(`{"12": {"images": [{"url": "https://cdn.example/fetched.png?sig=a&exp=1"}]}}`),
		OutputURLs: []string{"https://cdn.example/fetched.png?sig=a&exp=1"},
		InstanceID: "inst-upstream",
		StartedAt:  time.Date(2026, 2, 3, 4, 5, 0, 0, time.UTC),
		FinishedAt: time.Date(2026, 2, 3, 4, 6, 0, 0, time.UTC),
	}
	stillRunning := &runcomfy.ResultResponse{Status: "in_progress", State: runcomfy.StateRunning}
	errUpstream := errors.New("upstream unreachable")

	tests := []struct {
		name      string
		before    []func(id string) state.Update // applied first; each must apply
		result    *runcomfy.ResultResponse
		fetchErr  error
		update    func(id string) state.Update
		wantErr   bool
		want      state.Outcome
		wantCalls int
		// wantFetched: the stored record carries the fetched outputs.
		wantFetched bool
	}{
		{
			name:   "fetched after running",
			before: []func(string) state.Update{func(id string) state.Update { return queued(id, 1) }, func(id string) state.Update { return running(id, "") }},
			result: fetched, update: succeededBare, want: state.Applied, wantCalls: 1, wantFetched: true,
		},
		{
			name:   "fetched with no record yet",
			result: fetched, update: succeededBare, want: state.Applied, wantCalls: 1, wantFetched: true,
		},
		{
			name:     "fetch fails",
			before:   []func(string) state.Update{func(id string) state.Update { return running(id, "inst-1") }},
			fetchErr: errUpstream, update: succeededBare, wantErr: true, wantCalls: 1,
		},
		{
			name:   "upstream still running",
			before: []func(string) state.Update{func(id string) state.Update { return running(id, "inst-1") }},
			result: stillRunning, update: succeededBare, wantErr: true, wantCalls: 1,
		},
		{
			name:   "fetch fails with no record yet",
			result: nil, fetchErr: errUpstream, update: succeededBare, wantErr: true, wantCalls: 1,
		},
		{
			name:   "duplicate success",
			before: []func(string) state.Update{func(id string) state.Update { return running(id, "") }, succeeded},
			result: fetched, update: succeededBare, want: state.Duplicate, wantCalls: 0,
		},
		{
			name:   "success after failure",
			before: []func(string) state.Update{func(id string) state.Update { return running(id, "") }, failed},
			result: fetched, update: succeededBare, want: state.Stale, wantCalls: 0,
		},
		{
			name:   "outputs in the update",
			before: []func(string) state.Update{func(id string) state.Update { return running(id, "") }},
			result: fetched, update: succeeded, want: state.Applied, wantCalls: 0,
		},
	}
	ctx := testContext(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-fetch-%d", i)
			results := &fakeResults{res: tt.result, err: tt.fetchErr}
			tr := newTracker(t, b, results)
			for _, mk := range tt.before {
				if _, outcome, err := tr.Apply(ctx, mk(id)); err != nil || outcome != state.Applied {
					t.Fatalf("setup Apply = %v, %v; want Applied", outcome, err)
				}
			}
			before, _ := b.Get(ctx, id)
			rec := subscribe(t, b, id)

			got, outcome, err := tr.Apply(ctx, tt.update(id))
			if calls := results.callCount(); calls != tt.wantCalls {
				t.Errorf("result fetcher called %d times, want %d", calls, tt.wantCalls)
			}
			if tt.wantCalls > 0 {
				if dep, req := results.lastCall(); dep != deployment || req != id {
					t.Errorf("result fetcher called for (%q, %q), want (%q, %q)", dep, req, deployment, id)
				}
			}
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Apply = %v, %v; want an error", got, outcome)
				}
				if errors.Is(err, errUpstream) != (tt.fetchErr != nil) {
					t.Errorf("Apply error = %v, want it to wrap the fetcher's error %v", err, tt.fetchErr)
				}
				after, getErr := b.Get(ctx, id)
				switch {
				case before == nil && !errors.Is(getErr, state.ErrNotFound):
					t.Errorf("Get after a failed Apply = %v, %v; want ErrNotFound", after, getErr)
				case before != nil && getErr != nil:
					t.Errorf("Get after a failed Apply: %v", getErr)
				case before != nil:
					if d := diffRecord(after, before); d != "" {
						t.Errorf("a failed Apply changed the record:\n%s", d)
					}
				}
				if before != nil {
					expectPublished(t, b, rec, id)
				}
				return
			}
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if outcome != tt.want {
				t.Fatalf("Apply outcome = %v, want %v", outcome, tt.want)
			}
			stored := mustGet(t, b, id)
			var wantSeqs []int64
			if outcome == state.Applied {
				wantSeqs = []int64{stored.Seq}
			}
			published := expectPublished(t, b, rec, id, wantSeqs...)
			if !tt.wantFetched {
				return
			}
			if normJSON(stored.Outputs) != normJSON(fetched.Outputs) || !slices.Equal(stored.OutputURLs, fetched.OutputURLs) {
				t.Errorf("stored outputs = %s %v, want the fetched %s %v", stored.Outputs, stored.OutputURLs, fetched.Outputs, fetched.OutputURLs)
			}
			if !stored.FinishedAt.Equal(fetched.FinishedAt) {
				t.Errorf("stored finished_at = %v, want upstream's %v", stored.FinishedAt, fetched.FinishedAt)
			}
			if len(published) > 0 {
				if d := diffRecord(published[0], stored); d != "" {
					t.Errorf("published success differs from the stored one:\n%s", d)
				}
			}
		})
	}
}

func testUnknownState(t *testing.T, b Backend) {
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	unknown := func(id string) state.Update {
		return state.Update{RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateUnknown, UpstreamStatus: "warming_up"}
	}

	t.Run("no record", func(t *testing.T) {
		const id = "req-unknown-new"
		if _, outcome, err := tr.Apply(ctx, unknown(id)); err != nil || outcome != state.Unknown {
			t.Errorf("Apply = %v, %v; want Unknown, nil", outcome, err)
		}
		if got, err := b.Get(ctx, id); !errors.Is(err, state.ErrNotFound) {
			t.Errorf("Get after an unknown update = %v, %v; want ErrNotFound", got, err)
		}
	})
	t.Run("existing record", func(t *testing.T) {
		const id = "req-unknown-old"
		rec := subscribe(t, b, id)
		runSteps(t, b, tr, []step{
			{name: "queued", u: queued(id, 2), want: state.Applied, wantState: runcomfy.StateQueued, wantSeq: 1},
			{name: "unknown", u: unknown(id), want: state.Unknown, wantState: runcomfy.StateQueued, wantSeq: 1},
		})
		expectPublished(t, b, rec, id, 1)
	})
}

func testStats(t *testing.T, b Backend) {
	ctx := testContext(t)
	results := &fakeResults{err: errors.New("upstream unreachable")}
	tr := newTracker(t, b, results)
	if got := tr.Stats(); got != (state.Stats{}) {
		t.Fatalf("Stats of a new tracker = %+v, want zero", got)
	}
	const id = "req-stats"
	updates := []state.Update{
		queued(id, 4),   // applied
		queued(id, 4),   // duplicate
		queued(id, 2),   // applied
		running(id, ""), // applied
		queued(id, 1),   // stale
		{RequestID: id, State: runcomfy.StateUnknown}, // unknown
		succeeded(id), // applied
		succeeded(id), // duplicate
		failed(id),    // stale
		cancelled(id), // stale
	}
	for _, u := range updates {
		if _, _, err := tr.Apply(ctx, u); err != nil {
			t.Fatalf("Apply(%v): %v", u.State, err)
		}
	}
	// An update that fails is not an outcome: the caller retries it.
	if _, _, err := tr.Apply(ctx, succeededBare("req-stats-fail")); err == nil {
		t.Fatal("Apply of a success whose outputs cannot be fetched = nil error, want an error")
	}
	want := state.Stats{Applied: 4, Duplicate: 2, Stale: 3, Unknown: 1}
	if got := tr.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

// testReplicasTakeTurns has two trackers (two replicas) apply one request's
// updates in turn, so each works from a record the other has since replaced:
// every write must still follow the stored seq, and every outcome other than
// Applied must come with the stored record, not the replica's older one.
func testReplicasTakeTurns(t *testing.T, b Backend) {
	const id = "req-turns"
	ctx := testContext(t)
	a, c := newTracker(t, b, &fakeResults{}), newTracker(t, b, &fakeResults{})
	steps := []struct {
		name    string
		tr      *state.Tracker
		u       state.Update
		want    state.Outcome
		wantSeq int64 // of the record returned, which must be the stored one
	}{
		{"A creates", a, queued(id, 5), state.Applied, 1},
		{"C moves the queue", c, queued(id, 3), state.Applied, 2},
		{"A, one write behind, moves it again", a, queued(id, 2), state.Applied, 3},
		{"C, one write behind, starts it", c, running(id, "inst-1"), state.Applied, 4},
		{"A repeats an old position", a, queued(id, 4), state.Stale, 4},
		{"A repeats the start", a, running(id, "inst-1"), state.Duplicate, 4},
		{"C finishes it", c, succeeded(id), state.Applied, 5},
		{"A, behind, hears of the start again", a, running(id, "inst-1"), state.Stale, 5},
	}
	for _, st := range steps {
		rec, outcome, err := st.tr.Apply(ctx, st.u)
		if err != nil {
			t.Fatalf("%s: Apply: %v", st.name, err)
		}
		if outcome != st.want {
			t.Errorf("%s: outcome %v, want %v", st.name, outcome, st.want)
		}
		stored := mustGet(t, b, id)
		if stored.Seq != st.wantSeq {
			t.Errorf("%s: stored seq %d, want %d", st.name, stored.Seq, st.wantSeq)
		}
		if d := diffRecord(rec, stored); d != "" {
			t.Errorf("%s: Apply returned a record that is not the stored one:\n%s", st.name, d)
		}
	}
}

// countingStore counts the round trips a Tracker makes to a store.
type countingStore struct {
	state.Store
	gets, saves atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, id string) (*state.Record, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, id)
}

func (c *countingStore) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	c.saves.Add(1)
	return c.Store.Save(ctx, rec, ttl)
}

// testRoundTrips pins what the tracker costs the store: a replica applying a
// request's updates one after another writes each with one Save and no Get;
// a replica that has not seen the request learns the stored record from the
// refusal of its first Save, still without a Get.
func testRoundTrips(t *testing.T, b Backend) {
	const id = "req-round-trips"
	ctx := testContext(t)
	store := &countingStore{Store: b}
	tr, err := state.NewTracker(state.TrackerConfig{Store: store, Results: &fakeResults{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []state.Update{queued(id, 4), queued(id, 2), running(id, "inst-1")} {
		if _, outcome, err := tr.Apply(ctx, u); err != nil || outcome != state.Applied {
			t.Fatalf("Apply(%v) = %v, %v; want Applied", u.State, outcome, err)
		}
	}
	if g, s := store.gets.Load(), store.saves.Load(); g != 0 || s != 3 {
		t.Errorf("3 updates on one replica: %d Gets and %d Saves, want 0 and 3", g, s)
	}

	other := &countingStore{Store: b}
	tr2, err := state.NewTracker(state.TrackerConfig{Store: other, Results: &fakeResults{}})
	if err != nil {
		t.Fatal(err)
	}
	rec, outcome, err := tr2.Apply(ctx, succeeded(id))
	if err != nil || outcome != state.Applied || rec.Seq != 4 {
		t.Fatalf("Apply(succeeded) on another replica = seq %v, %v, %v; want seq 4 Applied", rec, outcome, err)
	}
	if g, s := other.gets.Load(), other.saves.Load(); g != 0 || s != 2 {
		t.Errorf("an update on a replica that had not seen the request: %d Gets and %d Saves, want 0 and 2 (the refusal carries the record)", g, s)
	}
	if _, outcome, err := tr2.Apply(ctx, succeeded(id)); err != nil || outcome != state.Duplicate {
		t.Fatalf("repeated success = %v, %v; want Duplicate", outcome, err)
	}
	// A duplicate is confirmed against the store before it is reported.
	if g := other.gets.Load(); g != 1 {
		t.Errorf("a duplicate made %d Gets, want 1", g)
	}
}

// testScheduleFollowsRecords: with a schedule, the tracker keeps an
// unfinished request due a poll interval after its last change and takes a
// finished one out, whichever way the store writes both (one round trip or
// two).
func testScheduleFollowsRecords(t *testing.T, b Backend) {
	sched, ok := b.(state.Schedule)
	if !ok {
		t.Skip("the backend keeps no schedule")
	}
	const id, poll = "req-scheduled", time.Hour
	ctx := testContext(t)
	base := time.Now().Truncate(time.Second)
	now := base
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: &fakeResults{}, Schedule: sched, PollInterval: poll, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	due := func(at time.Time) bool {
		ids, err := sched.Due(ctx, at, 100)
		if err != nil {
			t.Fatalf("Due: %v", err)
		}
		return slices.Contains(ids, id)
	}
	mustApply(t, tr, queued(id, 3))
	if due(base.Add(poll-time.Second)) || !due(base.Add(poll)) {
		t.Errorf("after the first update the request is not due exactly one poll interval later")
	}
	now = base.Add(10 * time.Second)
	mustApply(t, tr, running(id, "inst-1"))
	if due(base.Add(poll)) || !due(now.Add(poll)) {
		t.Errorf("a later update did not push the due time to one poll interval after it")
	}
	mustApply(t, tr, succeeded(id))
	if due(now.Add(100 * poll)) {
		t.Errorf("a finished request is still in the schedule")
	}
}
