package state

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// getterFunc is a Getter from a function.
type getterFunc func(context.Context, string) (*Record, error)

func (f getterFunc) Get(ctx context.Context, id string) (*Record, error) { return f(ctx, id) }

func TestFollowerFirst(t *testing.T) {
	rec := func(epoch, seq int64, st runcomfy.State) *Record {
		return &Record{RequestID: "r", Epoch: epoch, Seq: seq, State: st}
	}
	tests := []struct {
		name  string
		after Position
		snap  *Record
		want  bool
	}{
		{"nothing seen", Position{}, rec(5, 1, runcomfy.StateQueued), true},
		{"same epoch, later", Position{Epoch: 5, Seq: 1}, rec(5, 2, runcomfy.StateRunning), true},
		{"same epoch, seen", Position{Epoch: 5, Seq: 2}, rec(5, 2, runcomfy.StateRunning), false},
		{"same epoch, final seen", Position{Epoch: 5, Seq: 3}, rec(5, 3, runcomfy.StateSucceeded), false},
		{"another epoch, lower seq", Position{Epoch: 5, Seq: 3}, rec(9, 1, runcomfy.StateRunning), true},
		{"another, lower epoch", Position{Epoch: 9, Seq: 3}, rec(5, 1, runcomfy.StateRunning), true},
		{"seq only, later", Position{Seq: 1}, rec(5, 2, runcomfy.StateRunning), true},
		{"seq only, seen", Position{Seq: 2}, rec(5, 2, runcomfy.StateRunning), false},
		{"seq only, final seen", Position{Seq: 3}, rec(5, 3, runcomfy.StateSucceeded), false},
		// Only a record made again can be below a seq the watcher saw: its
		// final state must not be withheld, or the watch ends without one.
		{"seq only, final below", Position{Seq: 4}, rec(9, 1, runcomfy.StateSucceeded), true},
		{"seq only, unfinished below", Position{Seq: 4}, rec(9, 1, runcomfy.StateRunning), true},
		{"same epoch, final below", Position{Epoch: 5, Seq: 9}, rec(5, 3, runcomfy.StateSucceeded), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFollower(getterFunc(func(context.Context, string) (*Record, error) {
				t.Fatal("First read the store")
				return nil, nil
			}), tt.after)
			if got := f.First(tt.snap); got != tt.want {
				t.Fatalf("First(%d/%d %s) after %+v = %v, want %v", tt.snap.Epoch, tt.snap.Seq, tt.snap.State, tt.after, got, tt.want)
			}
			want := tt.after
			if tt.want || tt.snap.Seq < tt.after.Seq {
				// Sent, or below the resume point: followed from there.
				want = tt.snap.Position()
			}
			if got := f.Position(); got != want {
				t.Errorf("position %+v, want %+v", got, want)
			}
		})
	}
}

// TestFollowerNextUnsure: a record of another epoch arrives and the store
// cannot be read: the watch must end (its client resumes and is sent the
// current state), not drop the record, which may be the final one.
func TestFollowerNextUnsure(t *testing.T) {
	down := errors.New("redis: i/o timeout")
	f := NewFollower(getterFunc(func(context.Context, string) (*Record, error) { return nil, down }), Position{})
	if !f.First(&Record{RequestID: "r", Epoch: 2000, Seq: 3, State: runcomfy.StateRunning}) {
		t.Fatal("snapshot not sent")
	}
	got, err := f.Next(context.Background(), &Record{RequestID: "r", Epoch: 1000, Seq: 1, State: runcomfy.StateSucceeded})
	if !errors.Is(err, ErrFollowUnsure) || !errors.Is(err, down) || got != nil {
		t.Fatalf("Next = %v, %v; want ErrFollowUnsure wrapping the store's error", got, err)
	}
}

// TestFollowerNextWithoutStore: records of the watcher's epoch are decided
// without reading the store, however they arrive.
func TestFollowerNextWithoutStore(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFollower(getterFunc(func(context.Context, string) (*Record, error) {
		t.Fatal("Next read the store")
		return nil, nil
	}), Position{})
	at := func(seq int64, st runcomfy.State, d time.Duration) *Record {
		return &Record{RequestID: "r", Epoch: 5, Seq: seq, State: st, UpdatedAt: t0.Add(d)}
	}
	steps := []struct {
		rec  *Record
		want bool
	}{
		{at(1, runcomfy.StateQueued, 0), true},
		{at(1, runcomfy.StateQueued, 0), false}, // again
		{at(2, runcomfy.StateRunning, time.Second), true},
		{at(1, runcomfy.StateQueued, 0), false}, // late
		{at(4, runcomfy.StateRunning, 3*time.Second), true},
		{at(3, runcomfy.StateRunning, 2*time.Second), false}, // late, after a coalesced gap
	}
	for i, s := range steps {
		got, err := f.Next(context.Background(), s.rec)
		if err != nil || (got != nil) != s.want {
			t.Fatalf("step %d (%d %s): %v, %v; want sent %v", i, s.rec.Seq, s.rec.State, got, err, s.want)
		}
	}
}

// TestFollowerFollowsARollback: the store went back within the epoch (a
// failover to a replica that lagged), and the next write repeats a seq the
// watcher has seen, with a later state: the watcher follows the record from
// where it now is and gets that state; a state not further on than the last
// one sent is not sent (the watcher never goes back).
func TestFollowerFollowsARollback(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var stored *Record
	f := NewFollower(getterFunc(func(context.Context, string) (*Record, error) { return stored, nil }), Position{})
	rec := func(seq int64, st runcomfy.State, d time.Duration) *Record {
		return &Record{RequestID: "r", Epoch: 5, Seq: seq, State: st, UpdatedAt: t0.Add(d)}
	}
	f.First(rec(3, runcomfy.StateRunning, 3*time.Second))
	// The store lost seq 3: a write after the failover is seq 3 again, and
	// queued (a late observation the record no longer rules out).
	stored = rec(3, runcomfy.StateQueued, 10*time.Second)
	if got, err := f.Next(context.Background(), stored); err != nil || got != nil {
		t.Fatalf("a rolled-back queued state: %v, %v; want nothing sent", got, err)
	}
	if f.Position() != stored.Position() {
		t.Fatalf("position %+v, want the store's %+v", f.Position(), stored.Position())
	}
	stored = rec(4, runcomfy.StateSucceeded, 11*time.Second)
	if got, err := f.Next(context.Background(), stored); err != nil || got != stored {
		t.Fatalf("the success after the rollback: %v, %v; want it sent", got, err)
	}
	// The same with the success itself repeating the seq.
	f = NewFollower(getterFunc(func(context.Context, string) (*Record, error) { return stored, nil }), Position{})
	f.First(rec(3, runcomfy.StateRunning, 3*time.Second))
	stored = rec(3, runcomfy.StateSucceeded, 10*time.Second)
	if got, err := f.Next(context.Background(), stored); err != nil || got != stored {
		t.Fatalf("a success at a seq already seen: %v, %v; want it sent", got, err)
	}
}

// TestFollowerResumeAhead: a resume point ahead of the record in its epoch
// (the record went back, or the point is made up): the snapshot, unfinished,
// is not sent, but the watcher follows the record from where it stands and
// gets its next states and its end.
func TestFollowerResumeAhead(t *testing.T) {
	f := NewFollower(getterFunc(func(context.Context, string) (*Record, error) {
		t.Fatal("read the store")
		return nil, nil
	}), Position{Epoch: 5, Seq: 999})
	if f.First(&Record{RequestID: "r", Epoch: 5, Seq: 2, State: runcomfy.StateQueued}) {
		t.Fatal("an unfinished snapshot below the resume point was sent")
	}
	got, err := f.Next(context.Background(), &Record{RequestID: "r", Epoch: 5, Seq: 3, State: runcomfy.StateSucceeded})
	if err != nil || got == nil {
		t.Fatalf("the final state after it: %v, %v; want it sent", got, err)
	}
}
