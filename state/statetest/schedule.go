package statetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
)

// ScheduleBackend is what a backend provides to the reconciler: the shared poll
// schedule and the per-request poll lease.
type ScheduleBackend interface {
	state.Schedule
}

// scheduleCase is one subtest of RunSchedule; it gets a fresh backend of its own.
type scheduleCase struct {
	name string
	run  func(t *testing.T, b ScheduleBackend)
}

// RunSchedule runs the conformance suite of state.Schedule. newBackend returns
// a fresh, isolated backend for each subtest, as for Run; subtests run in
// parallel.
//
// Due times are whole seconds apart and on whole milliseconds, because a backend
// may keep them at millisecond precision (Redis scores). Lease expiry runs in
// real time, because Redis expires keys by its own clock.
func RunSchedule(t *testing.T, newBackend func(t *testing.T) ScheduleBackend) {
	t.Helper()
	cases := []scheduleCase{
		{"DueEmpty", testDueEmpty},
		{"DueOrderAndLimit", testDueOrderAndLimit},
		{"DueIncludesNowExcludesFuture", testDueBoundary},
		{"SetDueReplaces", testSetDueReplaces},
		{"ExpediteOnlyLowers", testExpediteOnlyLowers},
		{"ExpediteIgnoresUnscheduled", testExpediteIgnoresUnscheduled},
		{"Forget", testForget},
		{"LeaseExclusive", testLeaseExclusive},
		{"LeaseConcurrent", testLeaseConcurrent},
		{"ReleaseOnlyByOwner", testReleaseOnlyByOwner},
		{"LeaseExpires", testLeaseExpires},
		{"LeaseIndependentOfSchedule", testLeaseIndependentOfSchedule},
		{"PauseLaterWins", testPauseLaterWins},
		{"PauseEnds", testPauseEnds},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newBackend(t))
		})
	}
}

// scheduleBase is the origin of every due time in the suite: a round time, so
// that offsets in whole seconds are whole milliseconds too.
var scheduleBase = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// at is scheduleBase plus s seconds.
func at(s int) time.Time { return scheduleBase.Add(time.Duration(s) * time.Second) }

func mustSetDue(t *testing.T, b ScheduleBackend, id string, when time.Time) {
	t.Helper()
	if err := b.SetDue(testContext(t), id, when); err != nil {
		t.Fatalf("SetDue(%s, %v): %v", id, when, err)
	}
}

func mustDue(t *testing.T, b ScheduleBackend, now time.Time, n int) []string {
	t.Helper()
	ids, err := b.Due(testContext(t), now, n)
	if err != nil {
		t.Fatalf("Due(%v, %d): %v", now, n, err)
	}
	return ids
}

func mustLease(t *testing.T, b ScheduleBackend, id, owner string, ttl time.Duration) bool {
	t.Helper()
	ok, err := b.Lease(testContext(t), id, owner, ttl)
	if err != nil {
		t.Fatalf("Lease(%s, %s): %v", id, owner, err)
	}
	return ok
}

func mustRelease(t *testing.T, b ScheduleBackend, id, owner string) {
	t.Helper()
	if err := b.Release(testContext(t), id, owner); err != nil {
		t.Fatalf("Release(%s, %s): %v", id, owner, err)
	}
}

// everything is a Due "now" after every time the suite schedules.
var everything = at(1_000_000)

func testDueEmpty(t *testing.T, b ScheduleBackend) {
	if got := mustDue(t, b, everything, 10); len(got) != 0 {
		t.Errorf("Due on an empty schedule = %v, want none", got)
	}
}

func testDueOrderAndLimit(t *testing.T, b ScheduleBackend) {
	// Scheduled out of order, so that insertion order cannot pass for due order.
	sched := map[string]int{"req-c": 30, "req-a": 10, "req-e": 50, "req-b": 20, "req-d": 40}
	for _, id := range []string{"req-c", "req-a", "req-e", "req-b", "req-d"} {
		mustSetDue(t, b, id, at(sched[id]))
	}
	tests := []struct {
		name string
		now  time.Time
		n    int
		want []string
	}{
		{"all due", at(100), 10, []string{"req-a", "req-b", "req-c", "req-d", "req-e"}},
		{"limit keeps the earliest", at(100), 2, []string{"req-a", "req-b"}},
		{"limit of one", at(100), 1, []string{"req-a"}},
		{"limit equal to the count", at(100), 5, []string{"req-a", "req-b", "req-c", "req-d", "req-e"}},
		{"only the past", at(35), 10, []string{"req-a", "req-b", "req-c"}},
		{"only the past, limited", at(35), 2, []string{"req-a", "req-b"}},
		{"nothing due yet", at(5), 10, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustDue(t, b, tt.now, tt.n); !slices.Equal(got, tt.want) {
				t.Errorf("Due(+%v, %d) = %v, want %v", tt.now.Sub(scheduleBase), tt.n, got, tt.want)
			}
		})
	}
	// Due only reads: asking twice gives the same answer.
	if got, want := mustDue(t, b, at(100), 10), []string{"req-a", "req-b", "req-c", "req-d", "req-e"}; !slices.Equal(got, want) {
		t.Errorf("Due again = %v, want %v (Due must not consume)", got, want)
	}
}

func testDueBoundary(t *testing.T, b ScheduleBackend) {
	mustSetDue(t, b, "req-now", at(10))
	mustSetDue(t, b, "req-soon", at(11))
	if got, want := mustDue(t, b, at(10), 10), []string{"req-now"}; !slices.Equal(got, want) {
		t.Errorf("Due at exactly the due time = %v, want %v (at or before now is due)", got, want)
	}
	if got := mustDue(t, b, at(10).Add(-time.Second/2), 10); len(got) != 0 {
		t.Errorf("Due half a second early = %v, want none", got)
	}
}

func testSetDueReplaces(t *testing.T, b ScheduleBackend) {
	mustSetDue(t, b, "req-later", at(10))
	mustSetDue(t, b, "req-earlier", at(20))
	mustSetDue(t, b, "req-other", at(15))

	mustSetDue(t, b, "req-later", at(30))   // pushed back
	mustSetDue(t, b, "req-earlier", at(12)) // brought forward
	if got, want := mustDue(t, b, at(100), 10), []string{"req-earlier", "req-other", "req-later"}; !slices.Equal(got, want) {
		t.Errorf("Due after replacing = %v, want %v (each id once, at its last time)", got, want)
	}
	if got, want := mustDue(t, b, at(20), 10), []string{"req-earlier", "req-other"}; !slices.Equal(got, want) {
		t.Errorf("Due(+20s) = %v, want %v: the old time of a pushed-back request must not count", got, want)
	}
}

func testExpediteOnlyLowers(t *testing.T, b ScheduleBackend) {
	ctx := testContext(t)
	mustSetDue(t, b, "req-a", at(30))
	mustSetDue(t, b, "req-b", at(20))
	if err := b.Expedite(ctx, "req-a", at(10)); err != nil {
		t.Fatal(err)
	}
	if got, want := mustDue(t, b, at(15), 10), []string{"req-a"}; !slices.Equal(got, want) {
		t.Errorf("Due after expediting req-a to +10s = %v, want %v", got, want)
	}
	// A later time leaves the earlier one in place.
	if err := b.Expedite(ctx, "req-a", at(40)); err != nil {
		t.Fatal(err)
	}
	if err := b.Expedite(ctx, "req-b", at(25)); err != nil {
		t.Fatal(err)
	}
	if got, want := mustDue(t, b, at(20), 10), []string{"req-a", "req-b"}; !slices.Equal(got, want) {
		t.Errorf("Due after expediting to later times = %v, want %v (Expedite must never delay)", got, want)
	}
	// Equal time: no change either.
	if err := b.Expedite(ctx, "req-b", at(20)); err != nil {
		t.Fatal(err)
	}
	if got, want := mustDue(t, b, at(20), 10), []string{"req-a", "req-b"}; !slices.Equal(got, want) {
		t.Errorf("Due after expediting to the same time = %v, want %v", got, want)
	}
}

func testExpediteIgnoresUnscheduled(t *testing.T, b ScheduleBackend) {
	ctx := testContext(t)
	if err := b.Expedite(ctx, "req-never", at(10)); err != nil {
		t.Fatalf("Expedite of an unscheduled request: %v", err)
	}
	mustSetDue(t, b, "req-gone", at(50))
	if err := b.Forget(ctx, "req-gone"); err != nil {
		t.Fatal(err)
	}
	if err := b.Expedite(ctx, "req-gone", at(10)); err != nil {
		t.Fatalf("Expedite of a forgotten request: %v", err)
	}
	if got := mustDue(t, b, everything, 10); len(got) != 0 {
		t.Errorf("Due = %v, want none: Expedite must not schedule (a finished request would be polled again)", got)
	}
}

func testForget(t *testing.T, b ScheduleBackend) {
	ctx := testContext(t)
	mustSetDue(t, b, "req-a", at(10))
	mustSetDue(t, b, "req-b", at(20))
	if err := b.Forget(ctx, "req-a"); err != nil {
		t.Fatal(err)
	}
	if got, want := mustDue(t, b, everything, 10), []string{"req-b"}; !slices.Equal(got, want) {
		t.Errorf("Due after Forget(req-a) = %v, want %v", got, want)
	}
	for _, id := range []string{"req-a", "req-never"} {
		if err := b.Forget(ctx, id); err != nil {
			t.Errorf("Forget(%s) of an unscheduled request = %v, want nil", id, err)
		}
	}
	// A forgotten request can be scheduled again.
	mustSetDue(t, b, "req-a", at(30))
	if got, want := mustDue(t, b, everything, 10), []string{"req-b", "req-a"}; !slices.Equal(got, want) {
		t.Errorf("Due after rescheduling = %v, want %v", got, want)
	}
}

func testLeaseExclusive(t *testing.T, b ScheduleBackend) {
	const ttl = time.Minute
	if !mustLease(t, b, "req-a", "replica-1", ttl) {
		t.Fatal("first Lease = false, want true")
	}
	if mustLease(t, b, "req-a", "replica-2", ttl) {
		t.Error("Lease by a second owner while held = true, want false")
	}
	if mustLease(t, b, "req-a", "replica-1", ttl) {
		t.Error("Lease by the holder itself while held = true, want false (a replica must not poll one request twice at once)")
	}
	if !mustLease(t, b, "req-b", "replica-2", ttl) {
		t.Error("Lease of another request = false, want true: leases are per request")
	}
}

func testLeaseConcurrent(t *testing.T, b ScheduleBackend) {
	const owners = 32
	ctx := testContext(t)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  []string
		errs []error
	)
	start := make(chan struct{})
	for i := range owners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("replica-%d", i)
			<-start
			ok, err := b.Lease(ctx, "req-race", owner, time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				won = append(won, owner)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("Lease errors: %v", errs)
	}
	if len(won) != 1 {
		t.Errorf("%d owners took the lease at once (%v), want exactly 1", len(won), won)
	}
}

func testReleaseOnlyByOwner(t *testing.T, b ScheduleBackend) {
	const ttl = time.Minute
	if !mustLease(t, b, "req-a", "replica-1", ttl) {
		t.Fatal("first Lease = false")
	}
	mustRelease(t, b, "req-a", "replica-2") // not the holder: no effect, no error
	if mustLease(t, b, "req-a", "replica-2", ttl) {
		t.Fatal("Lease after a release by a non-holder = true, want false")
	}
	mustRelease(t, b, "req-never", "replica-1") // nothing held: no error
	mustRelease(t, b, "req-a", "replica-1")
	if !mustLease(t, b, "req-a", "replica-2", ttl) {
		t.Fatal("Lease after the holder released = false, want true")
	}
	// The previous holder releasing again must not free its successor's lease.
	mustRelease(t, b, "req-a", "replica-1")
	if mustLease(t, b, "req-a", "replica-3", ttl) {
		t.Error("a stale release freed the successor's lease")
	}
}

func testLeaseExpires(t *testing.T, b ScheduleBackend) {
	const ttl = shortTTL
	taken := time.Now()
	if !mustLease(t, b, "req-a", "replica-dead", ttl) {
		t.Fatal("first Lease = false")
	}
	// The dead replica never releases. Its successor gets the lease once the
	// TTL has passed, and not before.
	var got time.Time
	for deadline := time.Now().Add(expiryDeadline); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		before := time.Now()
		if mustLease(t, b, "req-a", "replica-next", time.Minute) {
			got = before
			break
		}
	}
	if got.IsZero() {
		t.Fatalf("lease with a %v TTL still held after %v", ttl, expiryDeadline)
	}
	// Allow for a backend clock of millisecond precision.
	if early := got.Sub(taken); early < ttl-5*time.Millisecond {
		t.Errorf("successor took the lease %v after it was taken, before its %v TTL", early, ttl)
	}
	// The dead replica, back, neither holds nor frees the successor's lease.
	mustRelease(t, b, "req-a", "replica-dead")
	if mustLease(t, b, "req-a", "replica-dead", ttl) {
		t.Error("the expired holder took the lease back while its successor holds it")
	}
}

func testLeaseIndependentOfSchedule(t *testing.T, b ScheduleBackend) {
	// A lease may be taken on a request that is not scheduled, and holding it
	// neither schedules nor hides the request.
	if !mustLease(t, b, "req-a", "replica-1", time.Minute) {
		t.Fatal("Lease of an unscheduled request = false")
	}
	if got := mustDue(t, b, everything, 10); len(got) != 0 {
		t.Errorf("Due after Lease = %v, want none", got)
	}
	mustSetDue(t, b, "req-a", at(10))
	if got, want := mustDue(t, b, everything, 10), []string{"req-a"}; !slices.Equal(got, want) {
		t.Errorf("Due of a leased request = %v, want %v", got, want)
	}
	if mustLease(t, b, "req-a", "replica-2", time.Minute) {
		t.Error("SetDue released the lease")
	}
}

// testPauseLaterWins: a pause only ever extends; none is in force at first.
func testPauseLaterWins(t *testing.T, b ScheduleBackend) {
	ctx := context.Background()
	if until, err := b.PausedUntil(ctx); err != nil || until.After(time.Now()) {
		t.Fatalf("fresh backend paused until %v (%v)", until, err)
	}
	now := time.Now().Truncate(time.Millisecond)
	for _, step := range []struct {
		pause, want time.Duration
	}{{20 * time.Second, 20 * time.Second}, {10 * time.Second, 20 * time.Second}, {30 * time.Second, 30 * time.Second}} {
		if err := b.Pause(ctx, now.Add(step.pause)); err != nil {
			t.Fatal(err)
		}
		until, err := b.PausedUntil(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !until.Equal(now.Add(step.want)) {
			t.Errorf("after Pause(+%v): paused until +%v, want +%v", step.pause, until.Sub(now), step.want)
		}
	}
}

// testPauseEnds: a pause is over at its end time (real time: Redis expires it).
func testPauseEnds(t *testing.T, b ScheduleBackend) {
	ctx := context.Background()
	if err := b.Pause(ctx, time.Now().Add(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		until, err := b.PausedUntil(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !until.After(time.Now()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still paused until %v", until)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
