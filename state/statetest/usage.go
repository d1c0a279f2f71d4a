package statetest

// This file holds the cases of the UsageReader contract: each request's end
// counted once, in the hour it ended, by the save that records it.

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// UsageBackend is a store that keeps usage.
type UsageBackend interface {
	Backend
	state.UsageReader
}

// RunUsage runs the UsageReader cases, each on a fresh backend.
func RunUsage(t *testing.T, newBackend func(t *testing.T) UsageBackend) {
	t.Helper()
	runParallel(t, newBackend, []namedCase[UsageBackend]{
		{"CountsAndDurations", testUsageCounts},
		{"EndCountedOnce", testUsageOnce},
	})
}

// lifecycle saves a request from queued to its end: created at created,
// started after queue (none when queue is negative: it never ran), ended
// after run, in state end. It returns the final record.
func lifecycle(t *testing.T, b UsageBackend, id, owner, dep string, created time.Time, queue, run time.Duration, end runcomfy.State) *state.Record {
	t.Helper()
	r := &state.Record{RequestID: id, DeploymentID: dep, Owner: owner, State: runcomfy.StateQueued, CreatedAt: created, Seq: 1, Epoch: 3}
	mustSave(t, b, r.Clone(), longTTL)
	if queue >= 0 {
		r.State, r.StartedAt, r.Seq = runcomfy.StateRunning, created.Add(queue), r.Seq+1
		mustSave(t, b, r.Clone(), longTTL)
		r.FinishedAt = r.StartedAt.Add(run)
	} else {
		r.FinishedAt = created.Add(run)
	}
	r.State, r.Seq = end, r.Seq+1
	mustSave(t, b, r.Clone(), longTTL)
	return r
}

func usageOf(t *testing.T, b UsageBackend, q state.UsageQuery) state.Usage {
	t.Helper()
	u, err := b.Usage(testContext(t), q)
	if err != nil {
		t.Fatalf("Usage(%+v): %v", q, err)
	}
	return u
}

// near reports whether got is within the histogram's precision of want.
func near(got, want time.Duration) bool {
	return math.Abs(float64(got-want)) <= 0.12*float64(want)+float64(time.Millisecond)
}

// testUsageCounts: counts by final state, sums and quantiles of queue and
// run times, by deployment, for the hours asked, of the tenant asked.
func testUsageCounts(t *testing.T, b UsageBackend) {
	hour := time.Now().Truncate(time.Hour).Add(-3 * time.Hour)
	var sumQ, sumR time.Duration
	for i := range 20 {
		q, r := time.Duration(i+1)*time.Second, time.Duration(i+1)*10*time.Second
		sumQ, sumR = sumQ+q, sumR+r
		lifecycle(t, b, fmt.Sprintf("req-ok-%d", i), "tenant-a", "dep-1", hour.Add(time.Minute), q, r, runcomfy.StateSucceeded)
	}
	lifecycle(t, b, "req-failed", "tenant-a", "dep-1", hour.Add(time.Minute), time.Second, time.Second, runcomfy.StateFailed)
	lifecycle(t, b, "req-cancelled-queued", "tenant-a", "dep-1", hour.Add(time.Minute), -1, 30*time.Second, runcomfy.StateCancelled)
	lifecycle(t, b, "req-dep-2", "tenant-a", "dep-2", hour.Add(time.Minute), time.Second, time.Second, runcomfy.StateSucceeded)
	lifecycle(t, b, "req-other-tenant", "tenant-b", "dep-1", hour.Add(time.Minute), time.Second, time.Second, runcomfy.StateSucceeded)
	lifecycle(t, b, "req-earlier", "tenant-a", "dep-1", hour.Add(-2*time.Hour), time.Second, time.Second, runcomfy.StateSucceeded)
	// Not ended: not counted.
	mustSave(t, b, &state.Record{RequestID: "req-running", DeploymentID: "dep-1", Owner: "tenant-a", State: runcomfy.StateRunning,
		CreatedAt: hour, StartedAt: hour, Seq: 1, Epoch: 3}, longTTL)

	q := state.UsageQuery{Owner: "tenant-a", From: hour, To: hour.Add(2 * time.Hour)}
	u := usageOf(t, b, q)
	d1, d2 := u["dep-1"], u["dep-2"]
	if d1 == nil || d2 == nil || len(u) != 2 {
		t.Fatalf("usage by deployment: %v", u)
	}
	if d1.Counts[runcomfy.StateSucceeded] != 20 || d1.Counts[runcomfy.StateFailed] != 1 || d1.Counts[runcomfy.StateCancelled] != 1 || d2.Counts[runcomfy.StateSucceeded] != 1 {
		t.Errorf("counts: dep-1 %v, dep-2 %v", d1.Counts, d2.Counts)
	}
	// Queue times: the 20 successes, the failure (1 s) and the cancelled
	// one (30 s, never started); run times: the successes and the failure.
	if d1.Queue.Count != 22 || time.Duration(d1.Queue.SumMs)*time.Millisecond != sumQ+time.Second+30*time.Second {
		t.Errorf("queue: %d, %d ms", d1.Queue.Count, d1.Queue.SumMs)
	}
	if d1.Run.Count != 21 || time.Duration(d1.Run.SumMs)*time.Millisecond != sumR+time.Second {
		t.Errorf("run: %d, %d ms", d1.Run.Count, d1.Run.SumMs)
	}
	if p50, p95 := d1.Run.Quantile(0.5), d1.Run.Quantile(0.95); !near(p50, 100*time.Second) || !near(p95, 190*time.Second) {
		t.Errorf("run p50 %v (want about 100s), p95 %v (want about 190s)", p50, p95)
	}
	// One deployment; the earlier hour; another tenant.
	if u := usageOf(t, b, state.UsageQuery{Owner: "tenant-a", DeploymentID: "dep-2", From: hour, To: hour.Add(2 * time.Hour)}); len(u) != 1 || u["dep-2"] == nil {
		t.Errorf("usage of dep-2: %v", u)
	}
	if u := usageOf(t, b, state.UsageQuery{Owner: "tenant-a", From: hour.Add(-3 * time.Hour), To: hour}); len(u) != 1 || u["dep-1"].Counts[runcomfy.StateSucceeded] != 1 {
		t.Errorf("usage of the earlier hours: %v", u)
	}
	if u := usageOf(t, b, state.UsageQuery{Owner: "tenant-b", From: hour, To: hour.Add(2 * time.Hour)}); len(u) != 1 || u["dep-1"].Counts[runcomfy.StateSucceeded] != 1 {
		t.Errorf("tenant-b's usage: %v", u)
	}
	if u := usageOf(t, b, state.UsageQuery{Owner: "tenant-c", From: hour, To: hour.Add(2 * time.Hour)}); len(u) != 0 {
		t.Errorf("a tenant without requests: %v", u)
	}
}

// testUsageOnce: saves of a request after its end (its outputs' copy, an
// owner) add nothing.
func testUsageOnce(t *testing.T, b UsageBackend) {
	hour := time.Now().Truncate(time.Hour).Add(-time.Hour)
	r := lifecycle(t, b, "req-once", "tenant-a", "dep-1", hour, time.Second, time.Second, runcomfy.StateSucceeded)
	for range 3 {
		r.Seq++
		r.Storage = &state.Storage{State: state.StorageStored}
		mustSave(t, b, r.Clone(), longTTL)
	}
	u := usageOf(t, b, state.UsageQuery{Owner: "tenant-a", From: hour, To: hour.Add(2 * time.Hour)})
	if d := u["dep-1"]; d == nil || d.Counts[runcomfy.StateSucceeded] != 1 || d.Run.Count != 1 {
		t.Errorf("usage after later saves: %+v", d)
	}
}
