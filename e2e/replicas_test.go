package e2e

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// Job timings of the simulator in these tests: long enough that each state is
// visible, short enough that the package stays fast. The tests never depend on
// them for ordering (the balancer's gate does that).
const (
	queueTime = 600 * time.Millisecond
	runTime   = 600 * time.Millisecond
)

func setup(t *testing.T) context.Context {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the binaries against Redis")
	}
	t.Parallel()
	return testContext(t)
}

// testContext is the context of the test's own steps: it ends testTimeout
// after the call.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// TestReplicasStreamIdenticalSequences: a request submitted on A and watched
// on A, B and C, whose callbacks land on B and are duplicated to A and C at the
// same instant, reaches every watcher as the same (seq, status) sequence, and
// each update is stored once: the duplicates are recognised across replicas.
func TestReplicasStreamIdenticalSequences(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: queueTime, runTime: runTime})

	// Hold the callbacks until every watcher has its first event, so that all
	// three start from the submit's record, seq 1.
	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	watchers := []*watcher{
		watch(ctx, t, "watcher on A", c.a, rid, 0),
		watch(ctx, t, "watcher on B", c.b, rid, 0),
		watch(ctx, t, "watcher on C", c.c, rid, 0),
	}
	for _, w := range watchers {
		w.waitSeq(ctx, t, 1)
	}
	c.lb.open()

	var want []string
	for i, w := range watchers {
		evs := w.waitOK(ctx, t)
		if evs[0].GetSeq() != 1 {
			t.Errorf("%s: first event at seq %d, want the current state, seq 1", w.name, evs[0].GetSeq())
		}
		if i == 0 {
			want = pairs(evs)
			continue
		}
		if got := pairs(evs); !slices.Equal(got, want) {
			t.Errorf("%s got %v, %s got %v: want identical sequences", w.name, got, watchers[0].name, want)
		}
	}
	t.Logf("every watcher got %v", want)
	// One record per state, each stored once: seqs 1, 2, 3, and the record in
	// Redis (and every replica's answer) stopped at the last of them.
	wantStatuses := []string{"1:QUEUED", "2:RUNNING", "3:SUCCEEDED"}
	if !slices.Equal(want, wantStatuses) {
		t.Errorf("sequence %v, want %v: one record per state, each update applied once", want, wantStatuses)
	}
	final := watchers[0].received()[len(want)-1].GetSeq()
	if got := c.recordSeq(ctx, t, rid); got != final || got != int64(len(want)) {
		t.Errorf("the record in Redis is at seq %d; the watchers ended at seq %d after %d events", got, final, len(want))
	}
	for _, g := range c.gateways() {
		st, err := g.api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid})
		if err != nil {
			t.Errorf("GetStatus on %s: %v", g.name, err)
			continue
		}
		if st.GetRequest().GetSeq() != final || st.GetRequest().GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
			t.Errorf("GetStatus on %s: %v, want succeeded at seq %d", g.name, st.GetRequest(), final)
		}
	}

	// Each callback reached all three replicas, and of the three copies
	// delivered at the same instant, exactly one was applied when the
	// callback moved the request (in_progress, succeeded) and none when it
	// said nothing new (in_queue: the submit had recorded the request).
	applied := map[string]int{}
	for _, d := range c.lb.all() {
		applied[d.Status] += 0 // listed even when no copy was applied
		for name, a := range d.Answers {
			if a.Err != nil || a.Code != http.StatusOK {
				t.Errorf("callback %q to %s: %v, want 200", d.Status, name, a)
			}
			if a.Outcome == "applied" {
				applied[d.Status]++
			}
		}
		t.Logf("callback %q: A %v, B %v, C %v", d.Status, d.Answers["A"], d.Answers["B"], d.Answers["C"])
	}
	if want := map[string]int{"": 0, "in_progress": 1, "succeeded": 1}; !maps.Equal(applied, want) {
		t.Errorf("applied copies by callback status: %v, want %v", applied, want)
	}
}

// TestReplicaKilledMidStream: clients watching on C keep their place when C
// dies. Each reconnects to A with after_seq = the last seq it got and receives
// exactly the rest: its events before and after, put together, equal what a
// watcher on B saw, with no gap and no duplicate. One client reconnects at
// once, while the request has not moved (the resumed stream must not repeat
// the record it already has); the other after the request moved on while it
// was away (the resumed stream starts from the newer record).
func TestReplicaKilledMidStream(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: queueTime, runTime: runTime})

	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	full := watch(ctx, t, "watcher on B", c.b, rid, 0)
	early := watch(ctx, t, "early client on C", c.c, rid, 0)
	late := watch(ctx, t, "late client on C", c.c, rid, 0)
	for _, w := range []*watcher{full, early, late} {
		w.waitSeq(ctx, t, 1)
	}

	c.c.proc.kill(t)
	for _, w := range []*watcher{early, late} {
		err := w.wait(ctx, t)
		if err == nil {
			t.Fatalf("%s: the stream from the killed replica ended with OK; want an error", w.name)
		}
		t.Logf("%s: the stream from the killed replica ended with %v", w.name, status.Code(err))
	}
	type resume struct {
		w      *watcher
		before []*comfygatev1.RequestState
	}
	resumeOnA := func(w *watcher) resume {
		before := w.received()
		return resume{watch(ctx, t, "resumed "+w.name, c.a, rid, before[len(before)-1].GetSeq()), before}
	}
	// The callbacks are still held: the request has not moved when the early
	// client's stream on A subscribes and reads the record.
	eventually(ctx, t, "C's subscription to go", func() bool { return c.subscribers(ctx, t, rid) == 1 })
	resumed := []resume{resumeOnA(early)}
	eventually(ctx, t, "A to subscribe", func() bool { return c.subscribers(ctx, t, rid) == 2 })
	// The request moves on while the late client is away (callbacks go to B,
	// and to A; the copies to C fail).
	c.lb.open()
	full.waitSeq(ctx, t, late.lastSeq()+1)
	resumed = append(resumed, resumeOnA(late))

	all := full.waitOK(ctx, t)
	for _, r := range resumed {
		rest := r.w.waitOK(ctx, t)
		got := pairs(append(r.before, rest...))
		if want := pairs(all); !slices.Equal(got, want) {
			t.Errorf("%s: before the kill %v, after reconnecting %v: together %v, want %v (the watcher on B)",
				r.w.name, pairs(r.before), pairs(rest), got, want)
		}
	}
	if got := c.recordSeq(ctx, t, rid); got != all[len(all)-1].GetSeq() {
		t.Errorf("the record in Redis is at seq %d, the watchers ended at %d", got, all[len(all)-1].GetSeq())
	}

	// Sanity: the killed replica refuses new work.
	shortCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.c.api.GetStatus(shortCtx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid}); status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("GetStatus on the killed replica: %v, want Unavailable", err)
	}
}
