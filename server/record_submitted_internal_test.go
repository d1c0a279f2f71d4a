package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
)

// flakyTracker is a Tracker whose Apply fails fails times with the error
// fail makes of the call's number, then records the update.
type flakyTracker struct {
	Tracker // Get and Refresh are not used here

	fails int
	fail  func(call int) error

	mu        sync.Mutex
	calls     int
	deadlines []time.Time // the deadline of each call's ctx (zero: none)
}

func (f *flakyTracker) Apply(ctx context.Context, u state.Update) (*state.Record, state.Outcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	dl, _ := ctx.Deadline()
	f.deadlines = append(f.deadlines, dl)
	if f.calls <= f.fails {
		return nil, 0, f.fail(f.calls)
	}
	return &state.Record{RequestID: u.RequestID, DeploymentID: u.DeploymentID, State: u.State, Seq: 1}, state.Applied, nil
}

func (f *flakyTracker) applied() (calls int, deadlines []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([]time.Time(nil), f.deadlines...)
}

// unavailableAt is the error of a store that does not answer, naming the call.
func unavailableAt(call int) error {
	return fmt.Errorf("save request (call %d): %w", call, state.ErrUnavailable)
}

var errRefused = errors.New("state: refused for another reason")

// TestRecordSubmittedRetriesWhileUnavailable pins recordSubmitted: it tries
// Apply again while it fails with state.ErrUnavailable and returns the
// record of the first call that succeeds; any other error is returned at
// once, after one call; every call runs under a deadline no later than
// recordRetryFor from the start.
func TestRecordSubmittedRetriesWhileUnavailable(t *testing.T) {
	tests := []struct {
		name      string
		fails     int
		fail      func(int) error
		wantCalls int
		wantErr   error // nil: the record comes back
	}{
		{"answers at once", 0, unavailableAt, 1, nil},
		{"unavailable once", 1, unavailableAt, 2, nil},
		{"unavailable twice", 2, unavailableAt, 3, nil},
		{"another error is not retried", 5, func(int) error { return errRefused }, 1, errRefused},
		{"a conflict is not retried", 5, func(int) error { return state.ErrConflict }, 1, state.ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			tr := &flakyTracker{fails: tt.fails, fail: tt.fail}
			s := &Service{tracker: tr}
			u := state.Update{RequestID: "req-1", DeploymentID: "dep-1", Source: state.SourceSubmit}
			start := time.Now()
			rec, err := s.recordSubmitted(ctx, u)
			end := time.Now()
			calls, deadlines := tr.applied()
			if calls != tt.wantCalls {
				t.Errorf("Apply called %d times, want %d", calls, tt.wantCalls)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || rec != nil {
					t.Errorf("recordSubmitted = %v, %v; want no record and %v", rec, err, tt.wantErr)
				}
			} else if err != nil || rec == nil || rec.RequestID != u.RequestID {
				t.Errorf("recordSubmitted = %+v, %v; want the record of %s", rec, err, u.RequestID)
			}
			for i, dl := range deadlines {
				// The one deadline is set once, between start and end.
				if dl.IsZero() || dl.Before(start.Add(recordRetryFor)) || dl.After(end.Add(recordRetryFor)) {
					t.Errorf("call %d: deadline %v, want %v after the call (started %v, ended %v)", i+1, dl, recordRetryFor, start, end)
				}
			}
		})
	}
}

// TestRecordSubmittedStopsWithItsContext pins that retries end with the
// caller's context, returning the last Apply error (which still says the
// store was unavailable) and no record: at once for a context already
// ended, soon after the deadline of one that ends while retrying.
func TestRecordSubmittedStopsWithItsContext(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  func(t *testing.T) context.Context
		// minCalls: the calls that fit before the context ends (the
		// waits are 100ms, 200ms, 400ms, ...).
		minCalls int
	}{
		{"already ended", func(*testing.T) context.Context { return cancelled }, 1},
		{"ends while retrying", func(t *testing.T) context.Context {
			ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
			t.Cleanup(cancel)
			return ctx
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &flakyTracker{fails: 1 << 30, fail: unavailableAt}
			s := &Service{tracker: tr}
			start := time.Now()
			rec, err := s.recordSubmitted(tt.ctx(t), state.Update{RequestID: "req-1", DeploymentID: "dep-1", Source: state.SourceSubmit})
			elapsed := time.Since(start)
			calls, _ := tr.applied()
			if rec != nil {
				t.Errorf("record %+v, want none", rec)
			}
			if want := unavailableAt(calls); err == nil || err.Error() != want.Error() || !errors.Is(err, state.ErrUnavailable) {
				t.Errorf("error %v, want the last call's: %v", err, want)
			}
			if calls < tt.minCalls {
				t.Errorf("Apply called %d times, want at least %d", calls, tt.minCalls)
			}
			if elapsed > 5*time.Second {
				t.Errorf("recordSubmitted took %v after its context ended", elapsed)
			}
			if tt.minCalls == 1 && calls != 1 {
				t.Errorf("Apply called %d times under an ended context, want 1", calls)
			}
		})
	}
}
