package state_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// downStore is the memory backend, unavailable while down is set, as Redis
// is while it restarts.
type downStore struct {
	*memory.Backend
	down atomic.Bool
}

func (s *downStore) err() error {
	if s.down.Load() {
		return fmt.Errorf("redis: %w", state.ErrUnavailable)
	}
	return nil
}

func (s *downStore) Get(ctx context.Context, id string) (*state.Record, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Backend.Get(ctx, id)
}

func (s *downStore) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Backend.Save(ctx, rec, ttl)
}

func (s *downStore) SaveWithEvent(ctx context.Context, rec *state.Record, ttl time.Duration, due time.Time, forget bool, ev *state.Event) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Backend.SaveWithEvent(ctx, rec, ttl, due, forget, ev)
}

// TestRecordDeferred pins the updates kept while the store was down: none
// is recorded while it stays down (and none is lost), each is recorded
// once it answers, with all it carried (synced when RunComfy said it, not
// when it is recorded), and not twice; one past the
// retention is dropped; and at most a bounded number are kept.
func TestRecordDeferred(t *testing.T) {
	ctx := ctxT(t)
	clock := newLossClock()
	store := &downStore{Backend: memory.New(clock.now)}
	tr, err := state.NewTracker(state.TrackerConfig{Store: store, Results: restoreResults{}, Retention: lossRetention, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	submitted := func(id string) state.Update {
		return state.Update{RequestID: id, DeploymentID: "dep-deferred", Source: state.SourceSubmit, State: runcomfy.StateQueued,
			CreatedAt: clock.now(), ObservedAt: clock.now(), Owner: "team", Webhooks: hooksAll, MaxRun: 30 * time.Minute}
	}
	observed := clock.now()
	store.down.Store(true)
	if _, _, err := tr.Apply(ctx, submitted("req-1")); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Apply with the store down = %v, want ErrUnavailable", err)
	}
	if !tr.Defer(submitted("req-1")) || !tr.Defer(submitted("req-2")) {
		t.Fatal("Defer refused an update")
	}
	if n, err := tr.RecordDeferred(ctx); n != 0 || !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("RecordDeferred with the store down = %d, %v; want 0, ErrUnavailable", n, err)
	}

	clock.advance(time.Minute) // the store stays down a while
	store.down.Store(false)
	if n, err := tr.RecordDeferred(ctx); n != 2 || err != nil {
		t.Fatalf("RecordDeferred = %d, %v; want 2, nil", n, err)
	}
	for _, id := range []string{"req-1", "req-2"} {
		rec, err := store.Backend.Get(ctx, id)
		if err != nil {
			t.Fatalf("%s not recorded: %v", id, err)
		}
		if rec.State != runcomfy.StateQueued || rec.Owner != "team" || len(rec.Webhooks) != 1 || rec.MaxRun != 30*time.Minute || rec.Seq != 1 {
			t.Errorf("%s recorded as %+v; want queued, seq 1, with the submit's owner, webhooks and deadline", id, rec)
		}
		// RunComfy said it a minute ago: a read must not take it as fresh.
		if !rec.SyncedAt.Equal(observed) || !rec.UpdatedAt.Equal(clock.now()) {
			t.Errorf("%s synced at %v, updated at %v; want synced when RunComfy answered (%v), updated now (%v)", id, rec.SyncedAt, rec.UpdatedAt, observed, clock.now())
		}
	}
	if n, err := tr.RecordDeferred(ctx); n != 0 || err != nil {
		t.Errorf("RecordDeferred again = %d, %v; want 0, nil", n, err)
	}

	// Past the retention: dropped, not recorded.
	if !tr.Defer(submitted("req-old")) {
		t.Fatal("Defer refused an update")
	}
	clock.advance(lossRetention)
	if n, err := tr.RecordDeferred(ctx); n != 0 || err == nil {
		t.Errorf("RecordDeferred of an update past its retention = %d, %v; want 0 and an error", n, err)
	}
	if _, err := store.Backend.Get(ctx, "req-old"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("an update past its retention was recorded: %v", err)
	}
	if n, err := tr.RecordDeferred(ctx); n != 0 || err != nil {
		t.Errorf("RecordDeferred after the drop = %d, %v; want 0, nil", n, err)
	}

	// Bounded: past the bound an update is refused, one kept already is
	// replaced.
	store.down.Store(true)
	for i := range 4096 {
		if !tr.Defer(submitted(fmt.Sprintf("req-many-%d", i))) {
			t.Fatalf("Defer refused update %d", i)
		}
	}
	if tr.Defer(submitted("req-one-too-many")) {
		t.Error("Defer kept an update past the bound")
	}
	if !tr.Defer(submitted("req-many-0")) {
		t.Error("Defer refused to replace an update it keeps")
	}
}
