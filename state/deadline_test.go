package state_test

import (
	"context"
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
			submit := func(maxQueue, maxRun time.Duration) string {
				resp, err := up.client.Submit(ctxT(t), dep, []byte(`{"prompt":"x"}`), runcomfy.SubmitOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := replicas[0].tracker.Apply(ctxT(t), state.Update{
					RequestID: resp.RequestID, DeploymentID: dep, Source: state.SourceSubmit,
					State: runcomfy.StateQueued, CreatedAt: time.Now(), MaxQueue: maxQueue, MaxRun: maxRun,
				}); err != nil {
					t.Fatal(err)
				}
				return resp.RequestID
			}
			first := submit(tt.maxQueue, tt.maxRun)
			// The second request's deadline is later: once it is
			// cancelled, any second cancel of the first would have
			// come (the schedule is read earliest first).
			second := submit(2*tt.maxQueue, 2*tt.maxRun)
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
			var expired int64
			for _, r := range reconcilers {
				expired += r.Expired()
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
	// Finished upstream at once (no queue, no run); recorded queued with a
	// deadline that has passed.
	waitFor(t, waitLimit, "the job ends upstream", func() bool {
		st, err := up.client.Status(context.Background(), dep, resp.RequestID)
		return err == nil && st.State.Terminal()
	})
	if _, _, err := r.tracker.Apply(ctxT(t), state.Update{
		RequestID: resp.RequestID, DeploymentID: dep, Source: state.SourceSubmit,
		State: runcomfy.StateQueued, CreatedAt: time.Now().Add(-time.Minute), MaxQueue: time.Second,
	}); err != nil {
		t.Fatal(err)
	}
	r.start(t, up, state.ReconcilerConfig{Interval: interval, Canceller: up.client})
	rec := r.waitTerminal(t, resp.RequestID, waitLimit)
	if rec.State != runcomfy.StateSucceeded {
		t.Fatalf("state %v (error %+v), want the success RunComfy recorded", rec.State, rec.Error)
	}
	if n := up.sim.Calls(runcomfysim.EndpointCancel); n != 1 {
		t.Fatalf("%d cancels, want the one the deadline made", n)
	}
}
