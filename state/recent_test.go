package state

import (
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// TestRecentKeepsWhatItKnew: the record kept apart for a request is the last
// one, unless that one lost what an earlier one held: the webhooks and
// deadlines, or a further state from another epoch (a record made again
// after a loss behind what this replica knew).
func TestRecentKeepsWhatItKnew(t *testing.T) {
	hooks := []WebhookTarget{{URL: "https://hooks.example/a"}}
	rec := func(epoch int64, st runcomfy.State, hooked bool, maxRun time.Duration) *Record {
		r := &Record{RequestID: "r", Epoch: epoch, Seq: 1, State: st, MaxRun: maxRun}
		if hooked {
			r.Webhooks = hooks
		}
		return r
	}
	tests := []struct {
		name      string
		old, next *Record
		wantNext  bool // next is kept, not old
	}{
		{"nothing kept yet", nil, rec(1, runcomfy.StateQueued, false, 0), true},
		{"the next state", rec(1, runcomfy.StateQueued, true, 0), rec(1, runcomfy.StateRunning, true, 0), true},
		{"a lower state of the same epoch (a lagging replica)", rec(1, runcomfy.StateRunning, true, 0), rec(1, runcomfy.StateQueued, true, 0), true},
		{"a lower state of another epoch", rec(1, runcomfy.StateSucceeded, true, 0), rec(2, runcomfy.StateQueued, true, 0), false},
		{"the same state of another epoch", rec(1, runcomfy.StateRunning, true, 0), rec(2, runcomfy.StateRunning, true, 0), true},
		{"a further state of another epoch without the webhooks", rec(1, runcomfy.StateQueued, true, 0), rec(2, runcomfy.StateRunning, false, 0), false},
		{"a further state of another epoch without the deadline", rec(1, runcomfy.StateQueued, false, time.Minute), rec(2, runcomfy.StateRunning, false, 0), false},
		{"a further state of another epoch, a request without either", rec(1, runcomfy.StateQueued, false, 0), rec(2, runcomfy.StateRunning, false, 0), true},
		{"a lower state of another epoch, a request without either", rec(1, runcomfy.StateRunning, false, 0), rec(2, runcomfy.StateQueued, false, 0), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecentRecords(8)
			if tt.old != nil {
				r.put(tt.old)
			}
			r.put(tt.next)
			if got := r.get("r"); got != tt.next {
				t.Errorf("last record %+v, want the one put last", got)
			}
			want := tt.old
			if tt.wantNext {
				want = tt.next
			}
			if got := r.kept("r"); got != want {
				t.Errorf("kept %+v, want %+v", got, want)
			}
		})
	}
}
