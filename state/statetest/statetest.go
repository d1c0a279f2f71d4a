// Package statetest is the conformance suite every state backend runs: the
// Store and Bus contract of package state, then the invariants of the design
// notes (monotonic state, seq numbers, no gap and no duplicate for a watcher,
// bounded watchers, ref-counted subscriptions) exercised through state.Tracker
// and state.Hub on top of the backend.
//
// The suite treats the backend as a black box that may be asynchronous (Redis
// delivers on its own connection) and may round-trip records through JSON: times
// are compared with time.Time.Equal, raw JSON after compacting. It asserts that
// something was not delivered with a barrier rather than a sleep: a later write
// to the same request, which the bus delivers in publish order, so anything
// wrongly published before it would have arrived first.
package statetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Backend is what a state backend provides.
type Backend interface {
	state.Store
	state.Bus
}

// waitTimeout bounds every wait for a delivery or a goroutine. It is a safety
// net against a hang, not a latency assertion: a conforming backend delivers in
// microseconds (memory) or milliseconds (Redis), even under -race.
const waitTimeout = 10 * time.Second

// longTTL is the time to live of records that must outlive the test.
const longTTL = time.Hour

// shortTTL and expiryDeadline drive the expiry tests in real time, because Redis
// expires keys by its own clock.
const (
	shortTTL       = 100 * time.Millisecond
	expiryDeadline = 3 * time.Second
)

// deployment is the deployment id of every record and update in the suite.
const deployment = "dep-conformance"

// testCase is one subtest; it gets a fresh backend of its own.
type testCase struct {
	name string
	run  func(t *testing.T, b Backend)
}

// Run runs the conformance suite. newBackend returns a fresh, isolated backend
// for each subtest (and registers its own cleanup with t.Cleanup).
//
// Subtests run in parallel, so newBackend is called concurrently and the
// backends it returns must not see each other's records or events (for Redis:
// a key and channel prefix of their own). The suite never holds two Bus
// subscriptions to one request on one backend at the same time, as the Hub
// never does.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	t.Helper()
	groups := []struct {
		name  string
		cases []testCase
	}{
		{"Store", storeCases()},
		{"Bus", busCases()},
		{"Tracker", trackerCases()},
		{"Hub", hubCases()},
		{"Epoch", epochCases()},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tc := range g.cases {
				t.Run(tc.name, func(t *testing.T) {
					// Subtests share nothing but the backend constructor, so they
					// run in parallel; this keeps the real-time TTL waits and the
					// churn test from adding up.
					t.Parallel()
					tc.run(t, newBackend(t))
				})
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Store

func storeCases() []testCase {
	return []testCase{
		{"GetMissing", testGetMissing},
		{"SaveThenGet", testSaveThenGet},
		{"SaveReplacesWholeRecord", testSaveReplacesWholeRecord},
		{"SaveConflict", testSaveConflict},
		{"ConcurrentSaveSameSeq", testConcurrentSaveSameSeq},
		{"Expiry", testExpiry},
		{"TTLCountsFromLastWrite", testTTLCountsFromLastWrite},
		{"ReturnsCopies", testReturnsCopies},
		{"CanceledContext", testCanceledContext},
	}
}

func testGetMissing(t *testing.T, b Backend) {
	ctx := testContext(t)
	mustSave(t, b, fullRecord("req-present", 1), longTTL)
	for _, id := range []string{"req-missing", "req-pres", "req-present-2"} {
		t.Run(id, func(t *testing.T) {
			got, err := b.Get(ctx, id)
			if !errors.Is(err, state.ErrNotFound) {
				t.Errorf("Get(%q) = %v, %v; want ErrNotFound", id, got, err)
			}
		})
	}
}

func testSaveThenGet(t *testing.T, b Backend) {
	zero := int64(0)
	tests := []struct {
		name string
		rec  *state.Record
	}{
		{"every field set", fullRecord("req-full", 1)},
		{"only the required fields", &state.Record{RequestID: "req-min", State: runcomfy.StateQueued, Seq: 1}},
		{"queue position zero is not nil", &state.Record{
			RequestID: "req-pos0", DeploymentID: deployment, State: runcomfy.StateQueued,
			UpstreamStatus: "in_queue", QueuePosition: &zero, Seq: 1,
		}},
		{"times in UTC and another zone", &state.Record{
			RequestID: "req-times", DeploymentID: deployment, State: runcomfy.StateRunning,
			CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
			StartedAt: time.Date(2026, 1, 2, 8, 4, 5, 999999999, time.FixedZone("", -7*3600)),
			UpdatedAt: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
			Seq:       1,
		}},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustSave(t, b, tt.rec.Clone(), longTTL)
			got, err := b.Get(ctx, tt.rec.RequestID)
			if err != nil {
				t.Fatalf("Get(%q) after Save: %v", tt.rec.RequestID, err)
			}
			if d := diffRecord(got, tt.rec); d != "" {
				t.Errorf("Get(%q) after Save differs:\n%s", tt.rec.RequestID, d)
			}
		})
	}
}

// testSaveReplacesWholeRecord: a later write replaces every field, including
// those it leaves empty (a backend that merges fields would keep stale ones).
func testSaveReplacesWholeRecord(t *testing.T, b Backend) {
	const id = "req-replace"
	mustSave(t, b, fullRecord(id, 1), longTTL)
	v2 := &state.Record{
		RequestID: id, DeploymentID: deployment, State: runcomfy.StateCancelled,
		UpstreamStatus: "cancelled", UpdatedAt: time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC), Seq: 2,
	}
	mustSave(t, b, v2.Clone(), longTTL)
	if d := diffRecord(mustGet(t, b, id), v2); d != "" {
		t.Errorf("Get after the second Save differs from it:\n%s", d)
	}
}

func testSaveConflict(t *testing.T, b Backend) {
	ctx := testContext(t)

	t.Run("existing record", func(t *testing.T) {
		const id = "req-conflict"
		mustSave(t, b, fullRecord(id, 1), longTTL)
		stored := fullRecord(id, 2)
		stored.State = runcomfy.StateSucceeded
		mustSave(t, b, stored.Clone(), longTTL)
		rec := subscribe(t, b, id)

		tests := []struct {
			name string
			seq  int64
		}{
			{"seq 1 over an existing record", 1},
			{"repeat of the stored seq", 2},
			{"gap", 4},
			{"seq 0", 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				attempt := fullRecord(id, tt.seq)
				attempt.InstanceID = "intruder"
				err := b.Save(ctx, attempt, longTTL)
				var conflict *state.ConflictError
				if !errors.As(err, &conflict) || !errors.Is(err, state.ErrConflict) {
					t.Fatalf("Save(seq %d) over seq 2 = %v, want a *ConflictError matching ErrConflict", tt.seq, err)
				}
				// The writer merges again with what the refusal carries.
				if d := diffRecord(conflict.Current, stored); d != "" {
					t.Errorf("ConflictError.Current differs from the stored record:\n%s", d)
				}
				if d := diffRecord(mustGet(t, b, id), stored); d != "" {
					t.Errorf("record changed by a conflicting Save(seq %d):\n%s", tt.seq, d)
				}
			})
		}
		expectPublished(t, b, rec, id)
	})

	t.Run("missing record", func(t *testing.T) {
		const id = "req-conflict-missing"
		rec := subscribe(t, b, id)
		for _, seq := range []int64{2, 0} {
			err := b.Save(ctx, fullRecord(id, seq), longTTL)
			var conflict *state.ConflictError
			if !errors.As(err, &conflict) {
				t.Errorf("Save(seq %d) with no record = %v, want a *ConflictError", seq, err)
			} else if conflict.Current != nil {
				t.Errorf("Save(seq %d) with no record: ConflictError.Current = %+v, want nil", seq, conflict.Current)
			}
			if got, err := b.Get(ctx, id); !errors.Is(err, state.ErrNotFound) {
				t.Errorf("Get after a conflicting Save(seq %d) = %v, %v; want ErrNotFound", seq, got, err)
			}
		}
		// The first valid write is the first thing the subscriber sees.
		mustSave(t, b, fullRecord(id, 1), longTTL)
		if got := seqs(rec.waitLen(t, 1)); !slices.Equal(got, []int64{1}) {
			t.Errorf("delivered seqs = %v, want [1]", got)
		}
	})
}

func testConcurrentSaveSameSeq(t *testing.T, b Backend) {
	const writers = 16
	tests := []struct {
		name     string
		existing int64 // records saved before the race
	}{
		{"first write", 0},
		{"next write", 3},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-race-%d", tt.existing)
			for seq := int64(1); seq <= tt.existing; seq++ {
				mustSave(t, b, fullRecord(id, seq), longTTL)
			}
			rec := subscribe(t, b, id)

			errs := make([]error, writers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range writers {
				wg.Go(func() {
					r := fullRecord(id, tt.existing+1)
					r.InstanceID = fmt.Sprintf("writer-%d", i)
					<-start
					errs[i] = b.Save(ctx, r, longTTL)
				})
			}
			close(start)
			wg.Wait()

			var winners []int
			for i, err := range errs {
				switch {
				case err == nil:
					winners = append(winners, i)
				case !errors.Is(err, state.ErrConflict):
					t.Errorf("writer %d: Save = %v, want nil or ErrConflict", i, err)
				}
			}
			if len(winners) != 1 {
				t.Fatalf("%d writers of seq %d succeeded (%v), want exactly 1", len(winners), tt.existing+1, winners)
			}
			want := fmt.Sprintf("writer-%d", winners[0])
			got := mustGet(t, b, id)
			if got.Seq != tt.existing+1 || got.InstanceID != want {
				t.Errorf("Get = seq %d by %q, want seq %d by %q", got.Seq, got.InstanceID, tt.existing+1, want)
			}
			published := expectPublished(t, b, rec, id, tt.existing+1)
			if len(published) > 0 && published[0].InstanceID != want {
				t.Errorf("published record is by %q, want the winner %q", published[0].InstanceID, want)
			}
		})
	}
}

func testExpiry(t *testing.T, b Backend) {
	ctx := testContext(t)
	const id = "req-expiry"
	mustSave(t, b, fullRecord(id, 1), shortTTL)
	waitNotFound(t, b, id)

	// The stored seq went with the record: only a first write is accepted now.
	if err := b.Save(ctx, fullRecord(id, 2), longTTL); !errors.Is(err, state.ErrConflict) {
		t.Errorf("Save(seq 2) after expiry = %v, want ErrConflict", err)
	}
	fresh := fullRecord(id, 1)
	fresh.InstanceID = "second-life"
	if err := b.Save(ctx, fresh.Clone(), longTTL); err != nil {
		t.Fatalf("Save(seq 1) after expiry = %v, want nil", err)
	}
	if d := diffRecord(mustGet(t, b, id), fresh); d != "" {
		t.Errorf("Get after the new first write differs:\n%s", d)
	}
}

// testTTLCountsFromLastWrite: the record expires ttl after the latest write,
// whatever the earlier writes asked for.
func testTTLCountsFromLastWrite(t *testing.T, b Backend) {
	const id = "req-ttl-last"
	mustSave(t, b, fullRecord(id, 1), longTTL)
	mustSave(t, b, fullRecord(id, 2), shortTTL)
	waitNotFound(t, b, id)
}

func testReturnsCopies(t *testing.T, b Backend) {
	tests := []struct {
		name string
		// saveAndMutate saves want (seq 1) and mutates a record it got back or
		// handed over.
		saveAndMutate func(t *testing.T, want *state.Record)
	}{
		{"record passed to Save", func(t *testing.T, want *state.Record) {
			in := want.Clone()
			mustSave(t, b, in, longTTL)
			mutateAll(in)
		}},
		{"record returned by Get", func(t *testing.T, want *state.Record) {
			mustSave(t, b, want.Clone(), longTTL)
			mutateAll(mustGet(t, b, want.RequestID))
		}},
		{"record delivered by the bus", func(t *testing.T, want *state.Record) {
			rec := subscribe(t, b, want.RequestID)
			mustSave(t, b, want.Clone(), longTTL)
			mutateAll(rec.waitLen(t, 1)[0])
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := fullRecord(fmt.Sprintf("req-copy-%d", i), 1)
			tt.saveAndMutate(t, want)
			if d := diffRecord(mustGet(t, b, want.RequestID), want); d != "" {
				t.Errorf("stored record changed with a copy held by the caller:\n%s", d)
			}
		})
	}
}

func testCanceledContext(t *testing.T, b Backend) {
	const id, other = "req-canceled", "req-canceled-new"
	v1 := fullRecord(id, 1)
	mustSave(t, b, v1.Clone(), longTTL)
	rec := subscribe(t, b, id)

	canceled, cancel := context.WithCancel(testContext(t))
	cancel()
	if got, err := b.Get(canceled, id); !isCancellation(err) {
		t.Errorf("Get with a canceled context = %v, %v; want a cancellation error", got, err)
	}
	if err := b.Save(canceled, fullRecord(id, 2), longTTL); !isCancellation(err) {
		t.Errorf("Save(seq 2) with a canceled context = %v, want a cancellation error", err)
	}
	if err := b.Save(canceled, fullRecord(other, 1), longTTL); !isCancellation(err) {
		t.Errorf("Save(seq 1) of a new record with a canceled context = %v, want a cancellation error", err)
	}

	if d := diffRecord(mustGet(t, b, id), v1); d != "" {
		t.Errorf("record changed by a Save with a canceled context:\n%s", d)
	}
	if got, err := b.Get(testContext(t), other); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Get(%q) after a canceled first Save = %v, %v; want ErrNotFound", other, got, err)
	}
	expectPublished(t, b, rec, id)
}

// isCancellation accepts the errors a backend may report for a canceled context:
// the context's own, or ErrUnavailable (nothing was changed either way).
func isCancellation(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, state.ErrUnavailable)
}

// ---------------------------------------------------------------------------
// Bus

func busCases() []testCase {
	return []testCase{
		{"DeliversEveryRecordInOrderOnce", testDeliversInOrder},
		{"NothingSavedBeforeSubscribe", testNothingBeforeSubscribe},
		{"Unsubscribe", testUnsubscribe},
		{"PerRequest", testPerRequest},
	}
}

func testDeliversInOrder(t *testing.T, b Backend) {
	const id, n = "req-order", 20
	rec := subscribe(t, b, id)
	var saved []*state.Record
	for seq := int64(1); seq <= n; seq++ {
		r := fullRecord(id, seq)
		r.InstanceID = fmt.Sprintf("inst-%d", seq)
		mustSave(t, b, r.Clone(), longTTL)
		saved = append(saved, r)
	}
	got := expectPublished(t, b, rec, id, seqRange(1, n)...)
	for i := range min(len(got), len(saved)) {
		if d := diffRecord(got[i], saved[i]); d != "" {
			t.Errorf("delivered record %d differs from the saved one:\n%s", i, d)
		}
	}
}

func testNothingBeforeSubscribe(t *testing.T, b Backend) {
	const id = "req-late-subscriber"
	for seq := int64(1); seq <= 3; seq++ {
		mustSave(t, b, fullRecord(id, seq), longTTL)
	}
	rec := subscribe(t, b, id)
	mustSave(t, b, fullRecord(id, 4), longTTL)
	if got := seqs(rec.waitLen(t, 1)); !slices.Equal(got, []int64{4}) {
		t.Errorf("delivered seqs = %v, want [4]: records saved before Subscribe must not be delivered", got)
	}
}

func testUnsubscribe(t *testing.T, b Backend) {
	ctx := testContext(t)
	const id = "req-unsubscribe"
	first := subscribe(t, b, id)
	mustSave(t, b, fullRecord(id, 1), longTTL)
	first.waitLen(t, 1)
	if err := b.Unsubscribe(ctx, id); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	mustSave(t, b, fullRecord(id, 2), longTTL)

	// A new subscription is the barrier: seq 3 reaches it after anything the
	// old one could still have received.
	second := subscribe(t, b, id)
	mustSave(t, b, fullRecord(id, 3), longTTL)
	if got := seqs(second.waitLen(t, 1)); !slices.Equal(got, []int64{3}) {
		t.Errorf("new subscription got seqs %v, want [3]", got)
	}
	if got := seqs(first.all()); !slices.Equal(got, []int64{1}) {
		t.Errorf("unsubscribed deliver got seqs %v, want only [1] from before Unsubscribe", got)
	}
}

func testPerRequest(t *testing.T, b Backend) {
	const a, bID, c = "req-a", "req-b", "req-c"
	recA, recB := subscribe(t, b, a), subscribe(t, b, bID)
	mustSave(t, b, fullRecord(bID, 1), longTTL)
	mustSave(t, b, fullRecord(bID, 2), longTTL)
	mustSave(t, b, fullRecord(c, 1), longTTL) // nobody subscribes to c
	mustSave(t, b, fullRecord(a, 1), longTTL)

	if got := ids(recA.waitLen(t, 1)); !slices.Equal(got, []string{a + "#1"}) {
		t.Errorf("subscriber of %s got %v, want only [%s#1]", a, got, a)
	}
	if got := ids(recB.waitLen(t, 2)); !slices.Equal(got, []string{bID + "#1", bID + "#2"}) {
		t.Errorf("subscriber of %s got %v, want [%s#1 %s#2]", bID, got, bID, bID)
	}
}

// ---------------------------------------------------------------------------
// Tracker

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

// ---------------------------------------------------------------------------
// Hub

func hubCases() []testCase {
	return []testCase{
		{"SnapshotThenStream", testSnapshotThenStream},
		{"ThousandWatchers", testThousandWatchers},
		{"SlowWatcherDoesNotDelayOthers", testSlowWatcher},
		{"RefCounting", testRefCounting},
		{"WatchCloseChurn", testChurn},
		{"ConcurrentFirstWatch", testConcurrentFirstWatch},
		{"CloseIsIdempotent", testCloseIdempotent},
		{"NextReturnsContextError", testNextCanceled},
		{"FailedSubscribe", testFailedSubscribe},
		{"Redeliver", testRedeliver},
		{"DrainEndsWatchers", testDrain},
	}
}

// testDrain: Drain ends every watcher, of every request, including one that
// arrives afterwards; each first gets what it had buffered, then ErrDraining.
func testDrain(t *testing.T, b Backend) {
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	a1, a2, other := watch(t, hub, "req-drain-a"), watch(t, hub, "req-drain-a"), watch(t, hub, "req-drain-b")
	mustApply(t, tr, queued("req-drain-a", 2))
	// The record reaches both watchers of req-drain-a before the drain.
	for _, w := range []*state.Watcher{a1, a2} {
		waitBuffered(t, w)
	}
	hub.Drain()
	late := watch(t, hub, "req-drain-a")
	for name, w := range map[string]*state.Watcher{"first": a1, "second": a2} {
		recs, err := w.Next(ctx)
		if err != nil || len(recs) != 1 || recs[0].Seq != 1 {
			t.Errorf("%s watcher: Next = %d records, %v; want its buffered seq 1 first", name, len(recs), err)
		}
	}
	for name, w := range map[string]*state.Watcher{"first": a1, "second": a2, "other request": other, "arriving after": late} {
		if recs, err := w.Next(ctx); !errors.Is(err, state.ErrDraining) {
			t.Errorf("%s watcher: Next after Drain = %d records, %v; want ErrDraining", name, len(recs), err)
		}
	}
}

// waitBuffered waits until w has something for Next, without taking it.
func waitBuffered(t *testing.T, w *state.Watcher) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for w.Buffered() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the record never reached the watcher")
		}
		time.Sleep(time.Millisecond)
	}
}

// testSnapshotThenStream is invariant 3 as WatchRequest does it: Watch, read
// the snapshot, then forward only greater seqs. With updates racing the
// watcher, what it forwards must continue the snapshot with no gap and no
// duplicate up to the terminal record.
func testSnapshotThenStream(t *testing.T, b Backend) {
	const n = 50
	tests := []struct {
		name   string
		before int // updates applied before the watcher arrives; the rest race it
	}{
		{"watch before the first update", 0},
		{"watch mid-way", 10},
		{"watch after the terminal update", n},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-snapshot-%d", tt.before)
			tr := newTracker(t, b, &fakeResults{})
			// A buffer larger than the whole run: this watcher cannot fall
			// behind, so any seq jump is a real gap.
			hub := newHub(t, b, n+1)
			ups := progression(id, n)
			for _, u := range ups[:tt.before] {
				mustApply(t, tr, u)
			}
			start := make(chan struct{})
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				<-start
				for _, u := range ups[tt.before:] {
					if _, outcome, err := tr.Apply(ctx, u); err != nil || outcome != state.Applied {
						t.Errorf("Apply(%v) = %v, %v; want Applied", u.State, outcome, err)
						return
					}
				}
			})
			close(start)

			w := watch(t, hub, id)
			sent := int64(0)
			snap, err := b.Get(ctx, id)
			switch {
			case err == nil:
				sent = snap.Seq
			case !errors.Is(err, state.ErrNotFound):
				t.Fatalf("Get snapshot: %v", err)
			}
			var last *state.Record = snap
			for last == nil || !last.Terminal() {
				recs, err := w.Next(ctx)
				if err != nil {
					t.Fatalf("Next after seq %d: %v", sent, err)
				}
				for _, r := range recs {
					if r.Seq <= sent {
						continue // already in the snapshot
					}
					if r.Seq != sent+1 {
						t.Fatalf("watcher went from seq %d to %d, want %d", sent, r.Seq, sent+1)
					}
					sent, last = r.Seq, r
				}
			}
			if sent != n {
				t.Errorf("last seq = %d, want %d", sent, n)
			}
			if c := w.Coalesced(); c != 0 {
				t.Errorf("Coalesced = %d, want 0 for a watcher with room for every record", c)
			}
			wg.Wait()
			if d := diffRecord(last, mustGet(t, b, id)); d != "" {
				t.Errorf("terminal record seen by the watcher differs from the stored one:\n%s", d)
			}
		})
	}
}

func testThousandWatchers(t *testing.T, b Backend) {
	const id, watchers = "req-thousand", 1000
	// Fewer updates than a watcher's buffer, so even a watcher that the
	// scheduler starves receives each one: every watcher sees the same sequence.
	const n = state.DefaultWatcherBuffer - 2
	ctx, cancel := context.WithCancel(testContext(t))
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)

	got := make([][]int64, watchers)
	var terminal [watchers]*state.Record
	var ready, done sync.WaitGroup
	// On a failure below, cancel releases the watchers before the wait.
	defer done.Wait()
	defer cancel()
	ready.Add(watchers)
	for i := range watchers {
		done.Go(func() {
			w, err := hub.Watch(ctx, id)
			ready.Done()
			if err != nil {
				t.Errorf("watcher %d: Watch: %v", i, err)
				return
			}
			defer w.Close()
			recs, err := readUntilTerminal(ctx, w)
			if err != nil {
				t.Errorf("watcher %d: after %v: %v", i, seqs(recs), err)
				return
			}
			got[i] = seqs(recs)
			terminal[i] = recs[len(recs)-1]
		})
	}
	ready.Wait()
	for _, u := range progression(id, n) {
		mustApply(t, tr, u)
	}
	done.Wait()

	want := seqRange(1, n)
	stored := mustGet(t, b, id)
	for i := range watchers {
		if !slices.Equal(got[i], want) {
			t.Errorf("watcher %d got seqs %v, want %v", i, got[i], want)
			continue
		}
		if d := diffRecord(terminal[i], stored); d != "" {
			t.Errorf("watcher %d: terminal record differs from the stored one:\n%s", i, d)
		}
	}
}

func testSlowWatcher(t *testing.T, b Backend) {
	const id, n = "req-slow", 500
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	reader := watch(t, hub, id)
	idle := watch(t, hub, id) // never reads until the end

	var got []int64
	for i, u := range progression(id, n) {
		mustApply(t, tr, u)
		// Lockstep: the reader keeps up, so it must see every record; that
		// Apply returned at all shows the idle watcher did not hold it up.
		for len(got) == 0 || got[len(got)-1] < int64(i+1) {
			recs, err := reader.Next(ctx)
			if err != nil {
				t.Fatalf("reader: Next after %d records: %v", len(got), err)
			}
			got = append(got, seqs(recs)...)
		}
	}
	if want := seqRange(1, n); !slices.Equal(got, want) {
		t.Errorf("reader got %d records %v, want every seq 1..%d in order", len(got), got, n)
	}
	if c := reader.Coalesced(); c != 0 {
		t.Errorf("reader Coalesced = %d, want 0", c)
	}

	// The hub may still be pushing the last record to the idle watcher after
	// the reader saw it, so read until the terminal record arrives: each batch
	// fits the buffer, and together they account for every record.
	var held []int64
	for {
		recs, err := idle.Next(ctx)
		if err != nil {
			t.Fatalf("idle watcher: Next after %v: %v", held, err)
		}
		if len(recs) > state.DefaultWatcherBuffer {
			t.Fatalf("idle watcher returned %d records in one batch, want at most %d", len(recs), state.DefaultWatcherBuffer)
		}
		held = append(held, seqs(recs)...)
		if last := recs[len(recs)-1]; last.Terminal() {
			if last.Seq != n {
				t.Errorf("idle watcher's terminal record has seq %d, want %d", last.Seq, n)
			}
			break
		}
	}
	if !strictlyIncreasing(held) {
		t.Errorf("idle watcher seqs %v, want strictly increasing", held)
	}
	c := idle.Coalesced()
	if c <= 0 {
		t.Errorf("idle watcher Coalesced = %d, want > 0", c)
	}
	if len(held)+c != n {
		t.Errorf("idle watcher holds %d and coalesced %d, want them to account for all %d records", len(held), c, n)
	}
}

func testRefCounting(t *testing.T, b Backend) {
	const id = "req-refs"
	ctx := testContext(t)
	bus := newCountingBus(t, b)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})

	w1 := watch(t, hub, id)
	w2 := watch(t, hub, id)
	w3 := watch(t, hub, id)
	if s, u := bus.counts(); s != 1 || u != 0 {
		t.Fatalf("after 3 Watches: %d Subscribes, %d Unsubscribes; want 1, 0", s, u)
	}
	if got := hub.Watching(); !slices.Equal(got, []string{id}) {
		t.Errorf("Watching = %v, want [%s]", got, id)
	}
	mustApply(t, tr, queued(id, 3))
	for i, w := range []*state.Watcher{w1, w2, w3} {
		if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
			t.Errorf("watcher %d got %v, want [1]", i+1, got)
		}
	}

	w1.Close()
	w2.Close()
	if s, u := bus.counts(); s != 1 || u != 0 {
		t.Fatalf("with one watcher left: %d Subscribes, %d Unsubscribes; want 1, 0", s, u)
	}
	mustApply(t, tr, queued(id, 2))
	if got := seqs(nextRecords(t, w3)); !slices.Equal(got, []int64{2}) {
		t.Errorf("remaining watcher got %v, want [2]", got)
	}

	w3.Close()
	if s, u := bus.counts(); s != 1 || u != 1 {
		t.Fatalf("after the last Close: %d Subscribes, %d Unsubscribes; want 1, 1", s, u)
	}
	if got := hub.Watching(); len(got) != 0 {
		t.Errorf("Watching after the last Close = %v, want none", got)
	}

	// Observe through delivery that the hub's subscription is gone: seq 3 is
	// saved with nobody subscribed, then a probe subscribes directly on the bus
	// and seq 4 reaches it; by then anything still routed to the hub would
	// have arrived too.
	delivered := bus.delivered.Load()
	mustApply(t, tr, queued(id, 1))
	probe := subscribe(t, b, id)
	mustApply(t, tr, running(id, ""))
	if got := seqs(probe.waitLen(t, 1)); !slices.Equal(got, []int64{4}) {
		t.Errorf("probe got %v, want [4]", got)
	}
	if got := bus.delivered.Load(); got != delivered {
		t.Errorf("bus delivered %d records to the hub after its last watcher left, want 0", got-delivered)
	}
	for i, w := range []*state.Watcher{w1, w2, w3} {
		if recs := pending(w); len(recs) != 0 {
			t.Errorf("closed watcher %d received %v", i+1, seqs(recs))
		}
	}
	if err := b.Unsubscribe(ctx, id); err != nil {
		t.Fatalf("Unsubscribe probe: %v", err)
	}

	// A new watcher subscribes again and receives.
	w4 := watch(t, hub, id)
	if s, u := bus.counts(); s != 2 || u != 1 {
		t.Fatalf("after a new Watch: %d Subscribes, %d Unsubscribes; want 2, 1", s, u)
	}
	mustApply(t, tr, succeeded(id))
	if got := seqs(nextRecords(t, w4)); !slices.Equal(got, []int64{5}) {
		t.Errorf("new watcher got %v, want [5]", got)
	}
	w4.Close()
	if s, u := bus.counts(); s != 2 || u != 2 {
		t.Errorf("at the end: %d Subscribes, %d Unsubscribes; want 2, 2", s, u)
	}
}

// testChurn opens and closes watchers of one request from many goroutines, so
// that the last watcher leaving races new ones arriving. A watcher must never
// be open without the bus subscription, and the bus must never hold two.
func testChurn(t *testing.T, b Backend) {
	const churnFor = 200 * time.Millisecond
	tests := []struct {
		name       string
		goroutines int
	}{
		// Fifty goroutines contend on the hub; two make the refcount touch zero
		// often, which is where subscribe and unsubscribe race.
		{"50 goroutines", 50},
		{"2 goroutines", 2},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-churn-%d", tt.goroutines)
			bus := newCountingBus(t, b)
			hub := newHub(t, bus, 0)
			tr := newTracker(t, b, &fakeResults{})

			kept := make([]*state.Watcher, tt.goroutines)
			deadline := time.Now().Add(churnFor)
			var wg sync.WaitGroup
			for g := range tt.goroutines {
				wg.Go(func() {
					for time.Now().Before(deadline) {
						w, err := hub.Watch(ctx, id)
						if err != nil {
							t.Errorf("Watch: %v", err)
							return
						}
						// Check again after yielding: a release that wrongly
						// unsubscribes under this watcher runs right after it
						// returns from Watch.
						for range 3 {
							if !bus.active(id) {
								t.Errorf("a watcher is open without a bus subscription")
								break
							}
							runtime.Gosched()
						}
						w.Close()
					}
					if g%2 == 0 {
						w, err := hub.Watch(ctx, id)
						if err != nil {
							t.Errorf("Watch: %v", err)
							return
						}
						kept[g] = w
					}
				})
			}
			wg.Wait()
			subs, _ := bus.counts()
			t.Logf("%d subscriptions over the churn", subs)

			mustApply(t, tr, queued(id, 1))
			for g, w := range kept {
				if w == nil {
					continue
				}
				if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
					t.Errorf("watcher kept by goroutine %d got %v, want [1]", g, got)
				}
				w.Close()
			}
			if s, u := bus.counts(); s != u || bus.active(id) {
				t.Errorf("after every Close: %d Subscribes, %d Unsubscribes, active %v; want equal and inactive", s, u, bus.active(id))
			}
			if got := hub.Watching(); len(got) != 0 {
				t.Errorf("Watching after every Close = %v, want none", got)
			}
		})
	}
}

// testConcurrentFirstWatch: watchers of a request nobody watches yet, arriving
// together, share one subscription, and every one of them receives.
func testConcurrentFirstWatch(t *testing.T, b Backend) {
	const rounds, watchers = 20, 20
	ctx := testContext(t)
	bus := newCountingBus(t, b)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})
	for round := range rounds {
		id := fmt.Sprintf("req-first-%d", round)
		ws := make([]*state.Watcher, watchers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range watchers {
			wg.Go(func() {
				<-start
				w, err := hub.Watch(ctx, id)
				if err != nil {
					t.Errorf("Watch: %v", err)
					return
				}
				ws[i] = w
			})
		}
		subsBefore, _ := bus.counts()
		close(start)
		wg.Wait()
		if subs, _ := bus.counts(); subs != subsBefore+1 {
			t.Errorf("round %d: %d watchers arriving together made %d subscriptions, want 1", round, watchers, subs-subsBefore)
		}
		mustApply(t, tr, queued(id, 1))
		for i, w := range ws {
			if w == nil {
				continue
			}
			if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
				t.Errorf("round %d: watcher %d got %v, want [1]", round, i, got)
			}
			w.Close()
		}
	}
	if s, u := bus.counts(); s != rounds || u != rounds {
		t.Errorf("%d Subscribes and %d Unsubscribes over %d rounds, want %d each", s, u, rounds, rounds)
	}
}

func testCloseIdempotent(t *testing.T, b Backend) {
	const id = "req-close-twice"
	bus := newCountingBus(t, b)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})

	a, other := watch(t, hub, id), watch(t, hub, id)
	a.Close()
	a.Close() // must not release other's share
	if _, u := bus.counts(); u != 0 {
		t.Fatalf("closing one of two watchers twice unsubscribed %d times, want 0", u)
	}
	mustApply(t, tr, queued(id, 1))
	if got := seqs(nextRecords(t, other)); !slices.Equal(got, []int64{1}) {
		t.Errorf("remaining watcher got %v, want [1]", got)
	}
	other.Close()
	other.Close()
	if s, u := bus.counts(); s != 1 || u != 1 {
		t.Errorf("after closing both twice: %d Subscribes, %d Unsubscribes; want 1, 1", s, u)
	}
}

func testNextCanceled(t *testing.T, b Backend) {
	hub := newHub(t, b, 0)
	w := watch(t, hub, "req-next-cancel")

	t.Run("already canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testContext(t))
		cancel()
		if recs, err := w.Next(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Next = %v, %v; want context.Canceled", seqs(recs), err)
		}
	})
	t.Run("canceled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testContext(t))
		errc := make(chan error, 1)
		go func() {
			_, err := w.Next(ctx)
			errc <- err
		}()
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Next = %v, want context.Canceled", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("Next did not return after its context was canceled")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithDeadline(testContext(t), time.Now().Add(-time.Second))
		defer cancel()
		if _, err := w.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Next = %v, want context.DeadlineExceeded", err)
		}
	})
}

// testFailedSubscribe: a Watch whose subscription fails leaves nothing behind,
// and the next Watch subscribes afresh.
func testFailedSubscribe(t *testing.T, b Backend) {
	const id = "req-sub-fails"
	ctx := testContext(t)
	bus := newCountingBus(t, b)
	errDown := errors.New("bus down")
	bus.failNextSubscribe(errDown)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})

	if w, err := hub.Watch(ctx, id); !errors.Is(err, errDown) {
		t.Fatalf("Watch with a failing bus = %v, %v; want an error wrapping %v", w, err, errDown)
	}
	if got := hub.Watching(); len(got) != 0 {
		t.Errorf("Watching after a failed Watch = %v, want none", got)
	}
	w := watch(t, hub, id)
	mustApply(t, tr, queued(id, 1))
	if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
		t.Errorf("watcher got %v, want [1]", got)
	}
}

// testRedeliver: after a bus reconnect the hub re-reads snapshots and hands
// them to watchers with Redeliver. A snapshot read before the last publish can
// arrive after it; it must never displace a newer record, least of all the
// terminal one in a full buffer.
func testRedeliver(t *testing.T, b Backend) {
	ctx := testContext(t)

	t.Run("older snapshot into a full buffer", func(t *testing.T) {
		const id, n = "req-redeliver-old", state.DefaultWatcherBuffer + 4
		hub := newHub(t, b, 0)
		tr := newTracker(t, b, &fakeResults{})
		reader, full := watch(t, hub, id), watch(t, hub, id)
		var applied []*state.Record
		for _, u := range progression(id, n) {
			applied = append(applied, mustApply(t, tr, u))
		}
		// Once the reader has the terminal record, the hub has pushed it to
		// every watcher: full now ends with it.
		if _, err := readUntilTerminal(ctx, reader); err != nil {
			t.Fatalf("reader: %v", err)
		}
		hub.Redeliver(applied[n/2])
		recs := nextRecords(t, full)
		s := seqs(recs)
		if !strictlyIncreasing(s) {
			t.Errorf("watcher seqs %v, want strictly increasing", s)
		}
		if last := recs[len(recs)-1]; last.Seq != n || !last.Terminal() {
			t.Errorf("watcher's last record is %v seq %d, want the terminal seq %d (seqs %v)", last.State, last.Seq, n, s)
		}
	})

	t.Run("record the bus lost", func(t *testing.T) {
		const id = "req-redeliver-lost"
		hub := newHub(t, b, 0)
		tr := newTracker(t, b, &fakeResults{})
		w := watch(t, hub, id)
		first := mustApply(t, tr, queued(id, 2))
		if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
			t.Fatalf("watcher got %v, want [1]", got)
		}
		// Stand-in for a record published while the bus was disconnected.
		lost := first.Clone()
		lost.Seq = 2
		lost.State = runcomfy.StateRunning
		hub.Redeliver(lost)
		if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{2}) {
			t.Errorf("watcher got %v after Redeliver, want [2]", got)
		}
		hub.Redeliver(&state.Record{RequestID: "req-nobody-watches", Seq: 1}) // must not panic
	})
}

// ---------------------------------------------------------------------------
// Helpers

// testContext bounds a test's calls; the deadline is a hang guard only.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// sampleOutputs is an outputs document as upstream sends it: spaced, and with
// characters (&) that a JSON encoder may escape on the way through a store.
const sampleOutputs = `{
  "9": {"images": [{"url": "https://cdn.example/out/a.png?sig=x&exp=1", "filename": "a.png", "type": "output"}]},
  "12": {"text": ["caf\u00e9"], "gifs": []}
}`

var sampleURLs = []string{"https://cdn.example/out/a.png?sig=x&exp=1"}

// fullRecord returns a record with every field set to a value a careless
// encoding would lose: a zone other than UTC, nanoseconds, raw JSON.
func fullRecord(id string, seq int64) *state.Record {
	zone := time.FixedZone("IST", 5*3600+1800)
	base := time.Date(2026, 3, 14, 15, 9, 26, 535897932, zone)
	pos := int64(7)
	return &state.Record{
		RequestID:      id,
		DeploymentID:   deployment,
		Owner:          "tenant-a",
		State:          runcomfy.StateFailed,
		UpstreamStatus: "failed",
		QueuePosition:  &pos,
		InstanceID:     "inst-1",
		Outputs:        json.RawMessage(sampleOutputs),
		OutputURLs:     slices.Clone(sampleURLs),
		Error:          &runcomfy.JobError{Type: "oom", Message: "CUDA out of memory", Code: "500"},
		CreatedAt:      base,
		StartedAt:      base.Add(1500 * time.Millisecond),
		FinishedAt:     base.Add(time.Minute),
		UpdatedAt:      base.Add(time.Minute + time.Microsecond),
		Seq:            seq,
	}
}

// mutateAll changes every field of r in place, including the contents of its
// slices and pointers, so that any sharing with a stored record shows.
func mutateAll(r *state.Record) {
	r.DeploymentID, r.Owner, r.UpstreamStatus, r.InstanceID = "x", "x", "x", "x"
	r.State = runcomfy.StateCancelled
	for i := range r.Outputs {
		r.Outputs[i] = ' '
	}
	for i := range r.OutputURLs {
		r.OutputURLs[i] = "mutated"
	}
	if r.QueuePosition != nil {
		*r.QueuePosition = 99
	}
	if r.Error != nil {
		r.Error.Message = "mutated"
	}
	r.CreatedAt = r.CreatedAt.Add(time.Hour)
	r.Seq = 99
}

func queued(id string, pos int64) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "poll", State: runcomfy.StateQueued, UpstreamStatus: "in_queue", QueuePosition: &pos}
}

func running(id, instance string) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateRunning, UpstreamStatus: "in_progress", InstanceID: instance}
}

func succeeded(id string) state.Update {
	u := succeededBare(id)
	u.Outputs = json.RawMessage(sampleOutputs)
	u.OutputURLs = slices.Clone(sampleURLs)
	return u
}

// succeededBare is a success that lacks its outputs, like a bare callback.
func succeededBare(id string) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateSucceeded, UpstreamStatus: "succeeded"}
}

func failed(id string) state.Update {
	return state.Update{
		RequestID: id, DeploymentID: deployment, Source: "callback", State: runcomfy.StateFailed, UpstreamStatus: "failed",
		Error: &runcomfy.JobError{Type: "oom", Message: "CUDA out of memory"},
	}
}

func cancelled(id string) state.Update {
	return state.Update{RequestID: id, DeploymentID: deployment, Source: "cancel", State: runcomfy.StateCancelled, UpstreamStatus: "cancelled"}
}

// progression returns n >= 3 updates that each move the request forward: queued
// with falling positions, then running, then succeeded with outputs. Applied in
// order they produce seqs 1..n.
func progression(id string, n int) []state.Update {
	ups := make([]state.Update, 0, n)
	for pos := int64(n - 2); pos >= 1; pos-- {
		ups = append(ups, queued(id, pos))
	}
	return append(ups, running(id, "inst-1"), succeeded(id))
}

func seqRange(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func seqs(recs []*state.Record) []int64 {
	s := make([]int64, len(recs))
	for i, r := range recs {
		s[i] = r.Seq
	}
	return s
}

// ids names each record as request#seq.
func ids(recs []*state.Record) []string {
	s := make([]string, len(recs))
	for i, r := range recs {
		s[i] = fmt.Sprintf("%s#%d", r.RequestID, r.Seq)
	}
	return s
}

func mustSave(t *testing.T, b Backend, rec *state.Record, ttl time.Duration) {
	t.Helper()
	if err := b.Save(testContext(t), rec, ttl); err != nil {
		t.Fatalf("Save(%s seq %d): %v", rec.RequestID, rec.Seq, err)
	}
}

func mustGet(t *testing.T, b Backend, id string) *state.Record {
	t.Helper()
	rec, err := b.Get(testContext(t), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return rec
}

// waitNotFound polls until the record has expired.
func waitNotFound(t *testing.T, b Backend, id string) {
	t.Helper()
	deadline := time.Now().Add(expiryDeadline)
	for {
		_, err := b.Get(testContext(t), id)
		if errors.Is(err, state.ErrNotFound) {
			return
		}
		if err != nil {
			t.Fatalf("Get(%s) while waiting for expiry: %v", id, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s still there %v after it should have expired", id, expiryDeadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectPublished checks that exactly the records with wantSeqs were delivered
// to rec since it subscribed. It writes a barrier record (the stored record
// with the next seq) and waits for it: the bus delivers a request's records in
// publish order, so anything published before the barrier has arrived by then.
// It returns the records delivered before the barrier.
func expectPublished(t *testing.T, b Backend, rec *recorder, id string, wantSeqs ...int64) []*state.Record {
	t.Helper()
	cur := mustGet(t, b, id)
	barrier := cur.Clone()
	barrier.Seq++
	barrier.InstanceID = "barrier"
	mustSave(t, b, barrier, longTTL)
	got := rec.waitFor(t, func(recs []*state.Record) bool {
		return len(recs) > 0 && recs[len(recs)-1].Seq >= barrier.Seq
	})
	want := append(slices.Clone(wantSeqs), barrier.Seq)
	if s := seqs(got); !slices.Equal(s, want) {
		t.Errorf("published seqs = %v, want %v (the last is a barrier)", s, want)
	}
	return got[:len(got)-1]
}

// recorder collects what the bus delivers to one subscription.
type recorder struct {
	mu     sync.Mutex
	recs   []*state.Record
	notify chan struct{}
}

func subscribe(t *testing.T, b Backend, id string) *recorder {
	t.Helper()
	r := &recorder{notify: make(chan struct{}, 1)}
	if err := b.Subscribe(testContext(t), id, r.deliver); err != nil {
		t.Fatalf("Subscribe(%s): %v", id, err)
	}
	return r
}

// deliver must not block: the bus may call it with its own locks held.
func (r *recorder) deliver(rec *state.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) all() []*state.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

func (r *recorder) waitLen(t *testing.T, n int) []*state.Record {
	t.Helper()
	return r.waitFor(t, func(recs []*state.Record) bool { return len(recs) >= n })
}

func (r *recorder) waitFor(t *testing.T, done func([]*state.Record) bool) []*state.Record {
	t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		if recs := r.all(); done(recs) {
			return recs
		}
		select {
		case <-r.notify:
		case <-timeout.C:
			t.Fatalf("delivery did not arrive within %v; got seqs %v", waitTimeout, seqs(r.all()))
		}
	}
}

// fakeResults is the upstream /result endpoint: it answers with res (its
// RequestID set to the one asked for) or err, and counts calls.
type fakeResults struct {
	res *runcomfy.ResultResponse
	err error

	mu               sync.Mutex
	calls            int
	lastDep, lastReq string
}

func (f *fakeResults) Result(_ context.Context, deploymentID, requestID string) (*runcomfy.ResultResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.lastDep, f.lastReq = deploymentID, requestID
	if f.err != nil {
		return nil, f.err
	}
	if f.res == nil {
		return nil, errors.New("fakeResults: no result configured")
	}
	r := *f.res
	r.RequestID = requestID
	r.Outputs = slices.Clone(f.res.Outputs)
	r.OutputURLs = slices.Clone(f.res.OutputURLs)
	return &r, nil
}

func (f *fakeResults) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeResults) lastCall() (dep, req string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastDep, f.lastReq
}

func newTracker(t *testing.T, b Backend, results *fakeResults) *state.Tracker {
	t.Helper()
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: results})
	if err != nil {
		t.Fatalf("NewTracker: %v", err)
	}
	return tr
}

func mustApply(t *testing.T, tr *state.Tracker, u state.Update) *state.Record {
	t.Helper()
	rec, outcome, err := tr.Apply(testContext(t), u)
	if err != nil {
		t.Fatalf("Apply(%s %v): %v", u.RequestID, u.State, err)
	}
	if outcome != state.Applied {
		t.Fatalf("Apply(%s %v) = %v, want Applied", u.RequestID, u.State, outcome)
	}
	return rec
}

func newHub(t *testing.T, bus state.Bus, buffer int) *state.Hub {
	t.Helper()
	h, err := state.NewHub(bus, buffer)
	if err != nil {
		t.Fatalf("NewHub: %v", err)
	}
	return h
}

// watch opens a watcher that the test closes at cleanup (Close is idempotent,
// so tests may close it earlier).
func watch(t *testing.T, h *state.Hub, id string) *state.Watcher {
	t.Helper()
	w, err := h.Watch(testContext(t), id)
	if err != nil {
		t.Fatalf("Watch(%s): %v", id, err)
	}
	t.Cleanup(w.Close)
	return w
}

// nextRecords waits for the watcher's next batch.
func nextRecords(t *testing.T, w *state.Watcher) []*state.Record {
	t.Helper()
	recs, err := w.Next(testContext(t))
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return recs
}

// pending returns what the watcher holds right now, without waiting.
func pending(w *state.Watcher) []*state.Record {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	recs, _ := w.Next(ctx)
	return recs
}

func readUntilTerminal(ctx context.Context, w *state.Watcher) ([]*state.Record, error) {
	var all []*state.Record
	for {
		recs, err := w.Next(ctx)
		if err != nil {
			return all, err
		}
		all = append(all, recs...)
		if len(recs) > 0 && recs[len(recs)-1].Terminal() {
			return all, nil
		}
	}
}

// countingBus wraps the backend's Bus to observe the hub's use of it: how many
// subscriptions it made and removed, whether one is active, and how many
// records reached the hub through them. It reports a second subscription to a
// request that already has one, and an Unsubscribe without a subscription.
type countingBus struct {
	state.Bus
	t         *testing.T
	delivered atomic.Int64

	mu           sync.Mutex
	subscribes   int
	unsubscribes int
	subscribed   map[string]bool
	failNext     error
}

func newCountingBus(t *testing.T, b state.Bus) *countingBus {
	return &countingBus{Bus: b, t: t, subscribed: make(map[string]bool)}
}

func (c *countingBus) Subscribe(ctx context.Context, requestID string, deliver func(*state.Record)) error {
	c.mu.Lock()
	if c.subscribed[requestID] {
		c.t.Errorf("second bus subscription to %s while one is active", requestID)
	}
	fail := c.failNext
	c.failNext = nil
	c.mu.Unlock()
	if fail != nil {
		return fail
	}
	// A real bus takes a round trip here; yielding lets racing Watch and
	// Close calls run meanwhile, as they would against Redis.
	runtime.Gosched()
	err := c.Bus.Subscribe(ctx, requestID, func(rec *state.Record) {
		c.delivered.Add(1)
		deliver(rec)
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.subscribes++
	c.subscribed[requestID] = true
	c.mu.Unlock()
	return nil
}

func (c *countingBus) Unsubscribe(ctx context.Context, requestID string) error {
	c.mu.Lock()
	if !c.subscribed[requestID] {
		c.t.Errorf("Unsubscribe(%s) without an active subscription", requestID)
	}
	// Marked inactive before the call: from here on no watcher may rely on it.
	c.subscribed[requestID] = false
	c.unsubscribes++
	c.mu.Unlock()
	runtime.Gosched() // a round trip, as in Subscribe
	return c.Bus.Unsubscribe(ctx, requestID)
}

func (c *countingBus) counts() (subscribes, unsubscribes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subscribes, c.unsubscribes
}

func (c *countingBus) active(requestID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subscribed[requestID]
}

func (c *countingBus) failNextSubscribe(err error) {
	c.mu.Lock()
	c.failNext = err
	c.mu.Unlock()
}

// diffRecord lists the fields in which got differs from want, or "". Times are
// compared with Equal and raw JSON after normalising, since a store may
// round-trip records through JSON.
func diffRecord(got, want *state.Record) string {
	if got == nil || want == nil {
		if got == want {
			return ""
		}
		return fmt.Sprintf("  record = %v, want %v", got, want)
	}
	var d []string
	field := func(name string, differs bool, g, w any) {
		if differs {
			d = append(d, fmt.Sprintf("  %s = %v, want %v", name, g, w))
		}
	}
	field("RequestID", got.RequestID != want.RequestID, got.RequestID, want.RequestID)
	field("DeploymentID", got.DeploymentID != want.DeploymentID, got.DeploymentID, want.DeploymentID)
	field("Owner", got.Owner != want.Owner, got.Owner, want.Owner)
	field("State", got.State != want.State, got.State, want.State)
	field("UpstreamStatus", got.UpstreamStatus != want.UpstreamStatus, got.UpstreamStatus, want.UpstreamStatus)
	field("QueuePosition", ptrString(got.QueuePosition) != ptrString(want.QueuePosition), ptrString(got.QueuePosition), ptrString(want.QueuePosition))
	field("InstanceID", got.InstanceID != want.InstanceID, got.InstanceID, want.InstanceID)
	field("Outputs", normJSON(got.Outputs) != normJSON(want.Outputs), string(got.Outputs), string(want.Outputs))
	field("OutputURLs", !slices.Equal(got.OutputURLs, want.OutputURLs), got.OutputURLs, want.OutputURLs)
	field("Error", errString(got.Error) != errString(want.Error), errString(got.Error), errString(want.Error))
	field("CreatedAt", !got.CreatedAt.Equal(want.CreatedAt), got.CreatedAt, want.CreatedAt)
	field("StartedAt", !got.StartedAt.Equal(want.StartedAt), got.StartedAt, want.StartedAt)
	field("FinishedAt", !got.FinishedAt.Equal(want.FinishedAt), got.FinishedAt, want.FinishedAt)
	field("UpdatedAt", !got.UpdatedAt.Equal(want.UpdatedAt), got.UpdatedAt, want.UpdatedAt)
	field("Seq", got.Seq != want.Seq, got.Seq, want.Seq)
	return strings.Join(d, "\n")
}

func strictlyIncreasing(s []int64) bool {
	for i := 1; i < len(s); i++ {
		if s[i] <= s[i-1] {
			return false
		}
	}
	return true
}

func ptrString(p *int64) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

func errString(e *runcomfy.JobError) string {
	if e == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%+v", *e)
}

// normJSON compacts raw JSON and escapes HTML characters the way
// encoding/json.Marshal does, so that a document and its round trip through a
// JSON store compare equal. Empty is "" and invalid JSON is marked as such.
func normJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var compact, escaped bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return fmt.Sprintf("invalid JSON %q: %v", raw, err)
	}
	json.HTMLEscape(&escaped, compact.Bytes())
	return escaped.String()
}
