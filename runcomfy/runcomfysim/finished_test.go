package runcomfysim_test

import (
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// TestFinishedAt: a job has no end while it is queued or running, and its
// end, on the simulator's clock, once it reached its terminal state; an
// unknown id has none.
func TestFinishedAt(t *testing.T) {
	at := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	h := newHarness(t, runcomfysim.Options{Manual: true, Now: func() time.Time { return at }})
	id := h.submit(t, "v1", "dep-1", "", `{"overrides":{}}`)
	for _, step := range []string{"queued", "running"} {
		if end, ok := h.sim.FinishedAt(id); ok {
			t.Fatalf("%s: finished at %v", step, end)
		}
		if err := h.sim.Advance(id); err != nil {
			t.Fatal(err)
		}
	}
	if end, ok := h.sim.FinishedAt(id); !ok || !end.Equal(at) {
		t.Errorf("FinishedAt = %v, %v; want %v, true", end, ok, at)
	}
	if _, ok := h.sim.FinishedAt("no-such-job"); ok {
		t.Error("an unknown job has an end")
	}
}
