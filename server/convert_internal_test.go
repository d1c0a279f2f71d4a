package server

import (
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// TestTimingFields: queued_at is the creation; the queue and run durations
// come once their ends are known, never negative.
func TestTimingFields(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name             string
		rec              state.Record
		queue, run       time.Duration
		hasQueue, hasRun bool
	}{
		{"queued", state.Record{State: runcomfy.StateQueued, CreatedAt: t0}, 0, 0, false, false},
		{"running", state.Record{State: runcomfy.StateRunning, CreatedAt: t0, StartedAt: t0.Add(90 * time.Second)}, 90 * time.Second, 0, true, false},
		{"succeeded", state.Record{State: runcomfy.StateSucceeded, CreatedAt: t0, StartedAt: t0.Add(time.Minute), FinishedAt: t0.Add(3 * time.Minute)}, time.Minute, 2 * time.Minute, true, true},
		{"cancelled in the queue", state.Record{State: runcomfy.StateCancelled, CreatedAt: t0, FinishedAt: t0.Add(5 * time.Second)}, 5 * time.Second, 0, true, false},
		{"clocks that disagree", state.Record{State: runcomfy.StateSucceeded, CreatedAt: t0, StartedAt: t0.Add(-time.Second), FinishedAt: t0.Add(-2 * time.Second)}, 0, 0, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := recordToProto(&tc.rec, nil)
			if !st.GetQueuedAt().AsTime().Equal(t0) {
				t.Errorf("queued_at = %v, want %v", st.GetQueuedAt().AsTime(), t0)
			}
			if (st.GetQueueDuration() != nil) != tc.hasQueue || st.GetQueueDuration().AsDuration() != tc.queue {
				t.Errorf("queue_duration = %v, want %v (set %v)", st.GetQueueDuration(), tc.queue, tc.hasQueue)
			}
			if (st.GetRunDuration() != nil) != tc.hasRun || st.GetRunDuration().AsDuration() != tc.run {
				t.Errorf("run_duration = %v, want %v (set %v)", st.GetRunDuration(), tc.run, tc.hasRun)
			}
		})
	}
}
