package state_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// TestDeadlinesCancel: three replicas' reconcilers share the schedule; a
// request held in the queue past its max_queue_duration, and one running
// past its max_run_duration, are each cancelled on RunComfy once and end
// CANCELLED with the deadline's error type.
func TestDeadlinesCancel(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	tests := []struct {
		name     string
		opts     runcomfysim.Options
		maxQueue time.Duration
		maxRun   time.Duration
		kind     string
	}{
		{"queue", runcomfysim.Options{QueueTime: time.Hour}, 300 * time.Millisecond, time.Hour, state.ErrorTypeMaxQueueDuration},
		{"run", runcomfysim.Options{QueueTime: 10 * time.Millisecond, RunTime: time.Hour}, time.Hour, 300 * time.Millisecond, state.ErrorTypeMaxRunDuration},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, tt.opts, nil)
			b := memory.New(nil)
			var (
				replicas    []*replica
				reconcilers []*state.Reconciler
			)
			for i := range 3 {
				r := newReplica(t, b, up, interval, 0)
				reconcilers = append(reconcilers, r.start(t, up, state.ReconcilerConfig{Interval: interval, Canceller: up.client, Owner: "replica-" + string(rune('a'+i))}))
				replicas = append(replicas, r)
			}
			first := replicas[0].submitWithDeadlines(t, up, time.Now(), tt.maxQueue, tt.maxRun)
			// The second request's deadline is later: once it is
			// cancelled, any second cancel of the first would have
			// come (the schedule is read earliest first).
			second := replicas[0].submitWithDeadlines(t, up, time.Now(), 2*tt.maxQueue, 2*tt.maxRun)
			for _, rid := range []string{first, second} {
				rec := replicas[1].waitTerminal(t, rid, waitLimit)
				if rec.State != runcomfy.StateCancelled || rec.Error == nil || rec.Error.Type != tt.kind {
					t.Fatalf("%s ended %v with error %+v, want cancelled with %s", rid, rec.State, rec.Error, tt.kind)
				}
				at, _ := (&state.Record{State: runcomfy.StateQueued, CreatedAt: rec.CreatedAt, MaxQueue: rec.MaxQueue}).Deadline()
				if tt.kind == state.ErrorTypeMaxRunDuration {
					at = rec.StartedAt.Add(rec.MaxRun)
				}
				if rec.FinishedAt.Before(at) {
					t.Fatalf("%s cancelled at %v, before its deadline %v", rid, rec.FinishedAt, at)
				}
			}
			if n := up.sim.Calls(runcomfysim.EndpointCancel); n != 2 {
				t.Fatalf("RunComfy received %d cancels for two expired requests, want 2", n)
			}
			// A replica counts its cancel after recording what RunComfy
			// says of it, which is what ended the record the wait above
			// saw: the count can come a moment later, so it is read until
			// both have come (or the wait's limit passed), then must be two.
			var expired int64
			for deadline := time.Now().Add(waitLimit); ; time.Sleep(5 * time.Millisecond) {
				expired = 0
				for _, r := range reconcilers {
					expired += r.Expired()
				}
				if expired >= 2 || time.Now().After(deadline) {
					break
				}
			}
			if expired != 2 {
				t.Fatalf("the replicas counted %d requests cancelled at a deadline, want 2", expired)
			}
		})
	}
}

// TestDeadlineNotCancellable: a request that finished on RunComfy before the
// gateway learned it is polled, not recorded as cancelled.
func TestDeadlineNotCancellable(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{}, nil)
	b := memory.New(nil)
	r := newReplica(t, b, up, time.Hour, 0)
	resp, err := up.client.Submit(ctxT(t), dep, []byte(`{"prompt":"x"}`), runcomfy.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rid := resp.RequestID
	// Finished upstream at once (no queue, no run); recorded queued with a
	// deadline that has passed.
	waitFor(t, waitLimit, "the job ends upstream", func() bool {
		st, err := up.client.Status(context.Background(), dep, rid)
		return err == nil && st.State.Terminal()
	})
	if _, _, err := r.tracker.Apply(ctxT(t), state.Update{
		RequestID: rid, DeploymentID: dep, Source: state.SourceSubmit,
		State: runcomfy.StateQueued, CreatedAt: time.Now().Add(-time.Minute), MaxQueue: time.Second,
	}); err != nil {
		t.Fatal(err)
	}
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Canceller: up.client})
	rec := r.waitTerminal(t, rid, waitLimit)
	if rec.State != runcomfy.StateSucceeded {
		t.Fatalf("state %v (error %+v), want the success RunComfy recorded", rec.State, rec.Error)
	}
	if n := up.sim.Calls(runcomfysim.EndpointCancel); n != 1 {
		t.Fatalf("%d cancels, want the one the deadline made", n)
	}
}

// TestDeadlineCancelFailing: RunComfy fails the deadline's cancel (5xx); it
// is tried again at the pace of a failing poll, not at once over and over,
// and once RunComfy takes it the request ends at its deadline.
func TestDeadlineCancelFailing(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	// No retries of its own, as the gateway's poller has none.
	up := newUpstream(t, runcomfysim.Options{QueueTime: time.Hour}, func(c *runcomfy.Config) { c.MaxRetries = -1 })
	up.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{"cancel": {HTTPStatus: 500, ErrorCode: 500001}}})
	r := newReplica(t, memory.New(nil), up, interval, 0)
	r.start(t, up, state.ReconcilerConfig{Interval: interval, MaxInterval: 4 * interval, Canceller: up.client})
	rid := r.submitWithDeadlines(t, up, time.Now(), time.Second, 0)
	waitFor(t, waitLimit, "the first cancel", func() bool { return up.sim.Calls(runcomfysim.EndpointCancel) > 0 })
	first := time.Now()
	waitFor(t, waitLimit, "five cancels", func() bool { return up.sim.Calls(runcomfysim.EndpointCancel) >= 5 })
	// Five attempts at most four intervals apart take at least four
	// intervals' back-off beyond the first; at once, they would take
	// milliseconds.
	if d := time.Since(first); d < 3*interval {
		t.Fatalf("five cancels within %v of the first: the failing cancel is not backed off", d)
	}
	up.sim.SetFaults(runcomfysim.Faults{})
	rec := r.waitTerminal(t, rid, waitLimit)
	if rec.State != runcomfy.StateCancelled || rec.Error == nil || rec.Error.Type != state.ErrorTypeMaxQueueDuration {
		t.Fatalf("ended %v with %+v, want cancelled at its queue deadline", rec.State, rec.Error)
	}
}

// TestDeadlineCancelOfRunningJob: RunComfy stops a running job some time
// after it takes the cancel. Until it does, the request stays RUNNING (its
// concurrency place held, no second cancel sent); then it ends CANCELLED
// with the run deadline's error and RunComfy's times.
func TestDeadlineCancelOfRunningJob(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{QueueTime: 10 * time.Millisecond, RunTime: time.Hour, CancelDelay: 400 * time.Millisecond}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Canceller: up.client})
	rid := r.submitWithDeadlines(t, up, time.Now(), 0, 200*time.Millisecond)
	waitFor(t, waitLimit, "the cancel", func() bool { return up.sim.Calls(runcomfysim.EndpointCancel) > 0 })
	// Taken, not done: the request is still running, marked cancelling.
	waitFor(t, waitLimit, "the cancel recorded", func() bool {
		rec, err := r.tracker.Get(context.Background(), rid)
		return err == nil && (rec.Cancelling || rec.Terminal())
	})
	if rec, _ := r.tracker.Get(context.Background(), rid); rec.Terminal() {
		t.Fatalf("recorded %v before RunComfy stopped the job", rec.State)
	}
	rec := r.waitTerminal(t, rid, waitLimit)
	if rec.State != runcomfy.StateCancelled || rec.Error == nil || rec.Error.Type != state.ErrorTypeMaxRunDuration {
		t.Fatalf("ended %v with %+v, want cancelled at its run deadline", rec.State, rec.Error)
	}
	if n := up.sim.Calls(runcomfysim.EndpointCancel); n != 1 {
		t.Fatalf("%d cancels, want one", n)
	}
}

// TestDeadlineAfterACallersCancel: a caller's cancel of the running job
// was taken and is under way when the run deadline passes; the gateway
// sends no cancel of its own, and the request ends as the caller's.
func TestDeadlineAfterACallersCancel(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	up := newUpstream(t, runcomfysim.Options{QueueTime: 10 * time.Millisecond, RunTime: time.Hour, CancelDelay: 600 * time.Millisecond}, nil)
	r := newReplica(t, memory.New(nil), up, interval, 0)
	rid := r.submitWithDeadlines(t, up, time.Now(), 0, 200*time.Millisecond)
	waitFor(t, waitLimit, "the job running", func() bool {
		st, err := up.client.Status(context.Background(), dep, rid)
		return err == nil && st.State == runcomfy.StateRunning
	})
	// The caller's cancel, recorded as the gateway's Cancel records it.
	if _, err := up.client.Cancel(ctxT(t), dep, rid); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.tracker.Apply(ctxT(t), state.Update{RequestID: rid, DeploymentID: dep, Source: state.SourceCancel,
		State: runcomfy.StateRunning, StartedAt: time.Now(), Cancelling: true}); err != nil {
		t.Fatal(err)
	}
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Canceller: up.client})
	rec := r.waitTerminal(t, rid, waitLimit)
	if rec.State != runcomfy.StateCancelled || rec.Error != nil {
		t.Fatalf("ended %v with %+v, want cancelled by the caller", rec.State, rec.Error)
	}
	if rec.Cancelling {
		t.Errorf("the cancelled record is still cancelling: an ended request is not")
	}
	if n := up.sim.Calls(runcomfysim.EndpointCancel); n != 1 {
		t.Fatalf("%d cancels, want the caller's alone", n)
	}
}

// TestDeadlineSurvivesARefusedSave: another replica's save of the same
// request is refused (the submit's record came first) and its update turns
// out a duplicate; the poll schedule, which the refused save wrote, is set
// back to the deadline.
func TestDeadlineSurvivesARefusedSave(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, runcomfysim.Options{QueueTime: time.Hour}, nil)
	b := memory.New(nil)
	submitter := newReplica(t, b, up, time.Hour, 0)
	other := newReplica(t, b, up, time.Hour, 0)
	created := time.Now()
	if _, _, err := submitter.tracker.Apply(ctxT(t), state.Update{RequestID: "req-refused", DeploymentID: dep, Source: state.SourceSubmit,
		State: runcomfy.StateQueued, CreatedAt: created, MaxQueue: time.Second}); err != nil {
		t.Fatal(err)
	}
	// The queued callback, on a replica that has not seen the request.
	if _, outcome, err := other.tracker.Apply(ctxT(t), state.Update{RequestID: "req-refused", DeploymentID: dep, Source: state.SourceCallback,
		State: runcomfy.StateQueued}); err != nil || outcome != state.Duplicate {
		t.Fatalf("callback: %v, %v; want a duplicate", outcome, err)
	}
	ids, err := b.Due(ctxT(t), created.Add(time.Second+time.Millisecond), 10)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ids, "req-refused") {
		t.Fatal("the request is no longer due at its deadline")
	}
}

// submitWithDeadlines starts a job upstream and records it as the gateway's
// Submit does, created at created with the deadlines given.
func (r *replica) submitWithDeadlines(t *testing.T, up *upstream, created time.Time, maxQueue, maxRun time.Duration) string {
	t.Helper()
	resp, err := up.client.Submit(ctxT(t), dep, []byte(`{"prompt":"x"}`), runcomfy.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.tracker.Apply(ctxT(t), state.Update{
		RequestID: resp.RequestID, DeploymentID: dep, Source: state.SourceSubmit,
		State: runcomfy.StateQueued, CreatedAt: created, MaxQueue: maxQueue, MaxRun: maxRun,
	}); err != nil {
		t.Fatal(err)
	}
	return resp.RequestID
}
