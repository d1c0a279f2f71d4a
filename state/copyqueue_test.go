package state_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// noResults answers no result read: these updates carry their outputs.
type noResults struct{}

func (noResults) Result(context.Context, string, string) (*runcomfy.ResultResponse, error) {
	return nil, errors.New("no result reads here")
}

// failingQueue refuses every Add.
type failingQueue struct{ state.WorkQueue }

func (failingQueue) Add(context.Context, string, time.Time) error { return state.ErrUnavailable }

// TestTrackerQueuesTheCopyOfASuccess: with a copy queue, the update that
// makes a request succeed records its copy pending and queues the request;
// later updates of the success, and requests that end otherwise, queue
// nothing; without a queue nothing is pending; a queue that refuses the
// request refuses the update, which is not recorded (its callback or poll
// comes again).
func TestTrackerQueuesTheCopyOfASuccess(t *testing.T) {
	ctx := context.Background()
	b := memory.New(nil)
	copies := b.Queue("copies")
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}, Copies: copies})
	if err != nil {
		t.Fatal(err)
	}
	outputs := []byte(`{"9":{"images":[{"url":"https://x/a.png"}]}}`)
	apply := func(u state.Update) *state.Record {
		t.Helper()
		rec, _, err := tr.Apply(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	apply(state.Update{RequestID: "req-ok", DeploymentID: "dep", Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team"})
	if rec := apply(state.Update{RequestID: "req-ok", Source: state.SourceCallback, State: runcomfy.StateRunning}); rec.Storage != nil {
		t.Errorf("running request has storage %+v", rec.Storage)
	}
	rec := apply(state.Update{RequestID: "req-ok", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: outputs})
	if rec.Storage == nil || rec.Storage.State != state.StoragePending {
		t.Fatalf("succeeded request's storage = %+v, want pending", rec.Storage)
	}
	apply(state.Update{RequestID: "req-ok", Source: state.SourcePoll, State: runcomfy.StateSucceeded, Outputs: outputs})
	apply(state.Update{RequestID: "req-bad", DeploymentID: "dep", Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team"})
	apply(state.Update{RequestID: "req-bad", Source: state.SourceCallback, State: runcomfy.StateFailed})
	due, err := copies.Due(ctx, time.Now().Add(time.Second), 10)
	if err != nil || !slices.Equal(due, []string{"req-ok"}) {
		t.Errorf("queued copies = %v, %v; want req-ok alone", due, err)
	}

	// A queue that refuses: the success is not recorded.
	refusing, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}, Copies: failingQueue{copies}})
	if err != nil {
		t.Fatal(err)
	}
	apply(state.Update{RequestID: "req-refused", DeploymentID: "dep", Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team"})
	if _, _, err := refusing.Apply(ctx, state.Update{RequestID: "req-refused", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: outputs}); !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("Apply with a refusing queue: %v, want ErrUnavailable", err)
	}
	if got, err := b.Get(ctx, "req-refused"); err != nil || got.State != runcomfy.StateQueued {
		t.Errorf("after the refusal the record is %v (%v), want it still queued", got.State, err)
	}

	// Without a queue, no copy.
	plain, err := state.NewTracker(state.TrackerConfig{Store: memory.New(nil), Results: noResults{}})
	if err != nil {
		t.Fatal(err)
	}
	if rec, _, err := plain.Apply(ctx, state.Update{RequestID: "req-plain", DeploymentID: "dep", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: outputs}); err != nil || rec.Storage != nil {
		t.Errorf("without a queue: storage %+v, %v", rec.Storage, err)
	}
}
