package statetest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
)

// RunQueue runs the conformance suite of state.WorkQueue on the queues of a
// backend. newBackend returns a fresh, isolated backend for each subtest;
// subtests run in parallel. Due times are whole seconds apart on whole
// milliseconds (Redis scores); lease expiry runs in real time.
func RunQueue(t *testing.T, newBackend func(t *testing.T) state.Queues) {
	t.Helper()
	cases := []struct {
		name string
		run  func(t *testing.T, b state.Queues)
	}{
		{"DueInOrderAndAddKeepsTheEarliest", testQueueDue},
		{"RetryAtReplacesAndDoneRemoves", testQueueRetryAndDone},
		{"LeaseIsExclusiveAndExpires", testQueueLease},
		{"QueuesAreApart", testQueuesApart},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newBackend(t))
		})
	}
}

func queueDue(t *testing.T, q state.WorkQueue, now time.Time, n int) []string {
	t.Helper()
	ids, err := q.Due(context.Background(), now, n)
	if err != nil {
		t.Fatalf("Due: %v", err)
	}
	return ids
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testQueueDue(t *testing.T, b state.Queues) {
	ctx := context.Background()
	q := b.Queue("copies")
	t0 := time.Now().Truncate(time.Second)
	must(t, q.Add(ctx, "req-c", t0.Add(3*time.Second)))
	must(t, q.Add(ctx, "req-a", t0.Add(time.Second)))
	must(t, q.Add(ctx, "req-b", t0.Add(2*time.Second)))
	must(t, q.Add(ctx, "req-future", t0.Add(time.Hour)))
	if got := queueDue(t, q, t0, 10); len(got) != 0 {
		t.Errorf("due before anything is: %v", got)
	}
	if got := queueDue(t, q, t0.Add(3*time.Second), 10); !slices.Equal(got, []string{"req-a", "req-b", "req-c"}) {
		t.Errorf("due = %v, want a, b, c", got)
	}
	if got := queueDue(t, q, t0.Add(3*time.Second), 2); !slices.Equal(got, []string{"req-a", "req-b"}) {
		t.Errorf("due with n=2 = %v", got)
	}
	// Add never postpones: a later time keeps the earlier; an earlier one wins.
	must(t, q.Add(ctx, "req-a", t0.Add(time.Hour)))
	must(t, q.Add(ctx, "req-future", t0))
	if got := queueDue(t, q, t0.Add(time.Second), 10); !slices.Equal(got, []string{"req-future", "req-a"}) {
		t.Errorf("after the adds, due = %v, want future, a", got)
	}
	if n, err := q.Len(ctx); err != nil || n != 4 {
		t.Errorf("Len = %d, %v, want 4", n, err)
	}
}

func testQueueRetryAndDone(t *testing.T, b state.Queues) {
	ctx := context.Background()
	q := b.Queue("copies")
	t0 := time.Now().Truncate(time.Second)
	must(t, q.Add(ctx, "req-a", t0))
	must(t, q.RetryAt(ctx, "req-a", t0.Add(time.Minute)))
	if got := queueDue(t, q, t0.Add(time.Second), 10); len(got) != 0 {
		t.Errorf("a retried request is due at once: %v", got)
	}
	if got := queueDue(t, q, t0.Add(time.Minute), 10); !slices.Equal(got, []string{"req-a"}) {
		t.Errorf("due at the retry time = %v", got)
	}
	must(t, q.Done(ctx, "req-a"))
	if got := queueDue(t, q, t0.Add(time.Hour), 10); len(got) != 0 {
		t.Errorf("done but still due: %v", got)
	}
	must(t, q.Done(ctx, "req-never-added"))
	if n, err := q.Len(ctx); err != nil || n != 0 {
		t.Errorf("Len = %d, %v, want 0", n, err)
	}
}

func testQueueLease(t *testing.T, b state.Queues) {
	ctx := context.Background()
	q := b.Queue("copies")
	lease := func(owner string, ttl time.Duration) bool {
		t.Helper()
		ok, err := q.Lease(ctx, "req-a", owner, ttl)
		must(t, err)
		return ok
	}
	if !lease("replica-1", time.Minute) {
		t.Fatal("first Lease = false")
	}
	if lease("replica-2", time.Minute) || lease("replica-1", time.Minute) {
		t.Fatal("a held lease was taken again")
	}
	must(t, q.Release(ctx, "req-a", "replica-2")) // not the holder: nothing
	if lease("replica-2", time.Minute) {
		t.Fatal("a release by another freed the lease")
	}
	must(t, q.Release(ctx, "req-a", "replica-1"))
	// The lease starts after this and the takeover comes before the time
	// read after it: their difference is never less than the lease's age
	// at the takeover, however long a call takes on a loaded machine.
	taken := time.Now()
	if !lease("replica-2", shortTTL) {
		t.Fatal("released lease not free")
	}
	// replica-2 dies holding it: the lease is free once its TTL passed.
	var got time.Time
	for deadline := time.Now().Add(expiryDeadline); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if lease("replica-3", time.Minute) {
			got = time.Now()
			break
		}
	}
	if got.IsZero() {
		t.Fatalf("lease still held after %v", expiryDeadline)
	}
	if early := got.Sub(taken); early < shortTTL-5*time.Millisecond {
		t.Errorf("taken over %v after it was taken, before its %v TTL", early, shortTTL)
	}
}

func testQueuesApart(t *testing.T, b state.Queues) {
	ctx := context.Background()
	a, c := b.Queue("copies"), b.Queue("sweeps")
	t0 := time.Now().Truncate(time.Second)
	must(t, a.Add(ctx, "req-a", t0))
	if got := queueDue(t, c, t0, 10); len(got) != 0 {
		t.Errorf("another queue holds %v", got)
	}
	if ok, err := a.Lease(ctx, "req-a", "r1", time.Minute); err != nil || !ok {
		t.Fatalf("Lease: %v %v", ok, err)
	}
	if ok, err := c.Lease(ctx, "req-a", "r2", time.Minute); err != nil || !ok {
		t.Errorf("another queue's lease of the same request: %v %v, want free", ok, err)
	}
	if got := queueDue(t, b.Queue("copies"), t0, 10); !slices.Equal(got, []string{"req-a"}) {
		t.Errorf("the same queue by name again: %v", got)
	}
}
