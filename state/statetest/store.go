package statetest

// This file holds the cases of the Store contract: records saved, compared and expired.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

func storeCases() []testCase {
	return []testCase{
		{"GetMissing", testGetMissing},
		{"SaveThenGet", testSaveThenGet},
		{"SaveReplacesWholeRecord", testSaveReplacesWholeRecord},
		{"SaveConflict", testSaveConflict},
		{"ConcurrentSaveSameSeq", testConcurrentSaveSameSeq},
		{"Expiry", testExpiry},
		{"TTLCountsFromLastWrite", testTTLCountsFromLastWrite},
		{"ReturnsCopies", testReturnsCopies},
		{"CanceledContext", testCanceledContext},
	}
}

func testGetMissing(t *testing.T, b Backend) {
	ctx := testContext(t)
	mustSave(t, b, fullRecord("req-present", 1), longTTL)
	for _, id := range []string{"req-missing", "req-pres", "req-present-2"} {
		t.Run(id, func(t *testing.T) {
			got, err := b.Get(ctx, id)
			if !errors.Is(err, state.ErrNotFound) {
				t.Errorf("Get(%q) = %v, %v; want ErrNotFound", id, got, err)
			}
		})
	}
}

func testSaveThenGet(t *testing.T, b Backend) {
	zero := int64(0)
	tests := []struct {
		name string
		rec  *state.Record
	}{
		{"every field set", fullRecord("req-full", 1)},
		{"only the required fields", &state.Record{RequestID: "req-min", State: runcomfy.StateQueued, Seq: 1}},
		{"queue position zero is not nil", &state.Record{
			RequestID: "req-pos0", DeploymentID: deployment, State: runcomfy.StateQueued,
			UpstreamStatus: "in_queue", QueuePosition: &zero, Seq: 1,
		}},
		{"times in UTC and another zone", &state.Record{
			RequestID: "req-times", DeploymentID: deployment, State: runcomfy.StateRunning,
			CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
			StartedAt: time.Date(2026, 1, 2, 8, 4, 5, 999999999, time.FixedZone("", -7*3600)),
			UpdatedAt: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
			Seq:       1,
		}},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustSave(t, b, tt.rec.Clone(), longTTL)
			got, err := b.Get(ctx, tt.rec.RequestID)
			if err != nil {
				t.Fatalf("Get(%q) after Save: %v", tt.rec.RequestID, err)
			}
			if d := diffRecord(got, tt.rec); d != "" {
				t.Errorf("Get(%q) after Save differs:\n%s", tt.rec.RequestID, d)
			}
		})
	}
}

// testSaveReplacesWholeRecord: a later write replaces every field, including
// those it leaves empty (a backend that merges fields would keep stale ones).
func testSaveReplacesWholeRecord(t *testing.T, b Backend) {
	const id = "req-replace"
	mustSave(t, b, fullRecord(id, 1), longTTL)
	v2 := &state.Record{
		RequestID: id, DeploymentID: deployment, State: runcomfy.StateCancelled,
		UpstreamStatus: "cancelled", UpdatedAt: time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC), Seq: 2,
	}
	mustSave(t, b, v2.Clone(), longTTL)
	if d := diffRecord(mustGet(t, b, id), v2); d != "" {
		t.Errorf("Get after the second Save differs from it:\n%s", d)
	}
}

func testSaveConflict(t *testing.T, b Backend) {
	ctx := testContext(t)

	t.Run("existing record", func(t *testing.T) {
		const id = "req-conflict"
		mustSave(t, b, fullRecord(id, 1), longTTL)
		stored := fullRecord(id, 2)
		stored.State = runcomfy.StateSucceeded
		mustSave(t, b, stored.Clone(), longTTL)
		rec := subscribe(t, b, id)

		tests := []struct {
			name string
			seq  int64
		}{
			{"seq 1 over an existing record", 1},
			{"repeat of the stored seq", 2},
			{"gap", 4},
			{"seq 0", 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				attempt := fullRecord(id, tt.seq)
				attempt.InstanceID = "intruder"
				err := b.Save(ctx, attempt, longTTL)
				var conflict *state.ConflictError
				if !errors.As(err, &conflict) || !errors.Is(err, state.ErrConflict) {
					t.Fatalf("Save(seq %d) over seq 2 = %v, want a *ConflictError matching ErrConflict", tt.seq, err)
				}
				// The writer merges again with what the refusal carries.
				if d := diffRecord(conflict.Current, stored); d != "" {
					t.Errorf("ConflictError.Current differs from the stored record:\n%s", d)
				}
				if d := diffRecord(mustGet(t, b, id), stored); d != "" {
					t.Errorf("record changed by a conflicting Save(seq %d):\n%s", tt.seq, d)
				}
			})
		}
		expectPublished(t, b, rec, id)
	})

	t.Run("missing record", func(t *testing.T) {
		const id = "req-conflict-missing"
		rec := subscribe(t, b, id)
		for _, seq := range []int64{2, 0} {
			err := b.Save(ctx, fullRecord(id, seq), longTTL)
			var conflict *state.ConflictError
			if !errors.As(err, &conflict) {
				t.Errorf("Save(seq %d) with no record = %v, want a *ConflictError", seq, err)
			} else if conflict.Current != nil {
				t.Errorf("Save(seq %d) with no record: ConflictError.Current = %+v, want nil", seq, conflict.Current)
			}
			if got, err := b.Get(ctx, id); !errors.Is(err, state.ErrNotFound) {
				t.Errorf("Get after a conflicting Save(seq %d) = %v, %v; want ErrNotFound", seq, got, err)
			}
		}
		// The first valid write is the first thing the subscriber sees.
		mustSave(t, b, fullRecord(id, 1), longTTL)
		if got := seqs(rec.waitLen(t, 1)); !slices.Equal(got, []int64{1}) {
			t.Errorf("delivered seqs = %v, want [1]", got)
		}
	})
}

func testConcurrentSaveSameSeq(t *testing.T, b Backend) {
	const writers = 16
	tests := []struct {
		name     string
		existing int64 // records saved before the race
	}{
		{"first write", 0},
		{"next write", 3},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-race-%d", tt.existing)
			for seq := int64(1); seq <= tt.existing; seq++ {
				mustSave(t, b, fullRecord(id, seq), longTTL)
			}
			rec := subscribe(t, b, id)

			errs := make([]error, writers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range writers {
				wg.Go(func() {
					r := fullRecord(id, tt.existing+1)
					r.InstanceID = fmt.Sprintf("writer-%d", i)
					<-start
					errs[i] = b.Save(ctx, r, longTTL)
				})
			}
			close(start)
			wg.Wait()

			var winners []int
			for i, err := range errs {
				switch {
				case err == nil:
					winners = append(winners, i)
				case !errors.Is(err, state.ErrConflict):
					t.Errorf("writer %d: Save = %v, want nil or ErrConflict", i, err)
				}
			}
			if len(winners) != 1 {
				t.Fatalf("%d writers of seq %d succeeded (%v), want exactly 1", len(winners), tt.existing+1, winners)
			}
			want := fmt.Sprintf("writer-%d", winners[0])
			got := mustGet(t, b, id)
			if got.Seq != tt.existing+1 || got.InstanceID != want {
				t.Errorf("Get = seq %d by %q, want seq %d by %q", got.Seq, got.InstanceID, tt.existing+1, want)
			}
			published := expectPublished(t, b, rec, id, tt.existing+1)
			if len(published) > 0 && published[0].InstanceID != want {
				t.Errorf("published record is by %q, want the winner %q", published[0].InstanceID, want)
			}
		})
	}
}

func testExpiry(t *testing.T, b Backend) {
	ctx := testContext(t)
	const id = "req-expiry"
	mustSave(t, b, fullRecord(id, 1), shortTTL)
	waitNotFound(t, b, id)

	// The stored seq went with the record: only a first write is accepted now.
	if err := b.Save(ctx, fullRecord(id, 2), longTTL); !errors.Is(err, state.ErrConflict) {
		t.Errorf("Save(seq 2) after expiry = %v, want ErrConflict", err)
	}
	fresh := fullRecord(id, 1)
	fresh.InstanceID = "second-life"
	if err := b.Save(ctx, fresh.Clone(), longTTL); err != nil {
		t.Fatalf("Save(seq 1) after expiry = %v, want nil", err)
	}
	if d := diffRecord(mustGet(t, b, id), fresh); d != "" {
		t.Errorf("Get after the new first write differs:\n%s", d)
	}
}

// testTTLCountsFromLastWrite: the record expires ttl after the latest write,
// whatever the earlier writes asked for.
func testTTLCountsFromLastWrite(t *testing.T, b Backend) {
	const id = "req-ttl-last"
	mustSave(t, b, fullRecord(id, 1), longTTL)
	mustSave(t, b, fullRecord(id, 2), shortTTL)
	waitNotFound(t, b, id)
}

func testReturnsCopies(t *testing.T, b Backend) {
	tests := []struct {
		name string
		// saveAndMutate saves want (seq 1) and mutates a record it got back or
		// handed over.
		saveAndMutate func(t *testing.T, want *state.Record)
	}{
		{"record passed to Save", func(t *testing.T, want *state.Record) {
			in := want.Clone()
			mustSave(t, b, in, longTTL)
			mutateAll(in)
		}},
		{"record returned by Get", func(t *testing.T, want *state.Record) {
			mustSave(t, b, want.Clone(), longTTL)
			mutateAll(mustGet(t, b, want.RequestID))
		}},
		{"record delivered by the bus", func(t *testing.T, want *state.Record) {
			rec := subscribe(t, b, want.RequestID)
			mustSave(t, b, want.Clone(), longTTL)
			mutateAll(rec.waitLen(t, 1)[0])
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := fullRecord(fmt.Sprintf("req-copy-%d", i), 1)
			tt.saveAndMutate(t, want)
			if d := diffRecord(mustGet(t, b, want.RequestID), want); d != "" {
				t.Errorf("stored record changed with a copy held by the caller:\n%s", d)
			}
		})
	}
}

func testCanceledContext(t *testing.T, b Backend) {
	const id, other = "req-canceled", "req-canceled-new"
	v1 := fullRecord(id, 1)
	mustSave(t, b, v1.Clone(), longTTL)
	rec := subscribe(t, b, id)

	canceled, cancel := context.WithCancel(testContext(t))
	cancel()
	if got, err := b.Get(canceled, id); !isCancellation(err) {
		t.Errorf("Get with a canceled context = %v, %v; want a cancellation error", got, err)
	}
	if err := b.Save(canceled, fullRecord(id, 2), longTTL); !isCancellation(err) {
		t.Errorf("Save(seq 2) with a canceled context = %v, want a cancellation error", err)
	}
	if err := b.Save(canceled, fullRecord(other, 1), longTTL); !isCancellation(err) {
		t.Errorf("Save(seq 1) of a new record with a canceled context = %v, want a cancellation error", err)
	}

	if d := diffRecord(mustGet(t, b, id), v1); d != "" {
		t.Errorf("record changed by a Save with a canceled context:\n%s", d)
	}
	if got, err := b.Get(testContext(t), other); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Get(%q) after a canceled first Save = %v, %v; want ErrNotFound", other, got, err)
	}
	expectPublished(t, b, rec, id)
}

// isCancellation accepts the errors a backend may report for a canceled context:
// the context's own, or ErrUnavailable (nothing was changed either way).
func isCancellation(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, state.ErrUnavailable)
}
