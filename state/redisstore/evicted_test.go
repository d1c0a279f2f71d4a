package redisstore_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// runningUpstream answers every read with a running request created at
// created.
type runningUpstream struct{ created time.Time }

func (u runningUpstream) Status(_ context.Context, _, id string) (*runcomfy.StatusResponse, error) {
	return &runcomfy.StatusResponse{RequestID: id, Status: "in_progress", State: runcomfy.StateRunning}, nil
}

func (u runningUpstream) Result(_ context.Context, _, id string) (*runcomfy.ResultResponse, error) {
	return &runcomfy.ResultResponse{RequestID: id, Status: "in_progress", State: runcomfy.StateRunning, CreatedAt: u.created}, nil
}

// TestEvictedScheduledRecordIsRebuilt: Redis evicts the record of a
// scheduled request (its schedule entry, which has no TTL, stays). A replica
// that never saw the request makes it again from RunComfy, with the
// deployment, owner, creation time, webhooks and deadline the schedule kept
// beside it, instead of forgetting the request: by the poll that comes due
// when nobody watches it, or for its watchers on that replica, which know
// its owner but not its webhooks or deadlines.
func TestEvictedScheduledRecordIsRebuilt(t *testing.T) {
	for _, watched := range []bool{false, true} {
		t.Run(map[bool]string{false: "nobody watches it", true: "watched on the replica"}[watched], func(t *testing.T) {
			evictedScheduledRecordIsRebuilt(t, watched)
		})
	}
}

func evictedScheduledRecordIsRebuilt(t *testing.T, watched bool) {
	const interval = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := newBackend(t)
	created := time.Now().Add(-time.Minute).Truncate(time.Microsecond).UTC()
	up := runningUpstream{created: created}
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}, Schedule: b, PollInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	id := "req-evicted"
	hooks := []state.WebhookTarget{{URL: "https://hooks.example/b", Kinds: state.KindTerminal}}
	first, _, err := tr.Apply(ctx, state.Update{RequestID: id, DeploymentID: "dep-e", Source: "submit", State: runcomfy.StateQueued, Owner: "tenant-b", CreatedAt: created,
		Webhooks: hooks, MaxRun: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Another replica, which never saw the request, polls it and finds
	// nothing new: its first attempt (from no record, so with no owner) is
	// refused, and must leave the description as the owner's save wrote it.
	other, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}, Schedule: b, PollInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	if _, outcome, err := other.Apply(ctx, state.Update{RequestID: id, DeploymentID: "dep-e", Source: state.SourcePoll, State: runcomfy.StateQueued}); err != nil || outcome != state.Duplicate {
		t.Fatalf("the other replica's poll: %v, %v; want a duplicate", outcome, err)
	}
	if err := b.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	fresh, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}, Schedule: b, PollInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	cfg := state.ReconcilerConfig{
		Schedule: b, Tracker: fresh, Upstream: up, Interval: interval, Owner: "replica-1",
		Logger: slog.New(slog.DiscardHandler),
	}
	if watched {
		cfg.Watched = func() []state.WatchedRequest {
			return []state.WatchedRequest{{RequestID: id, DeploymentID: "dep-e", Owner: "tenant-b"}}
		}
	}
	rc, err := state.NewReconciler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rc.Run(rctx)
	}()
	defer func() {
		stop()
		<-done
	}()
	var rec *state.Record
	for rec == nil {
		got, err := b.Get(ctx, id)
		switch {
		case err == nil:
			rec = got
		case ctx.Err() != nil:
			t.Fatalf("the evicted record was never made again: %v", err)
		default:
			time.Sleep(10 * time.Millisecond)
		}
	}
	if rec.Epoch == first.Epoch || rec.State != runcomfy.StateRunning || rec.DeploymentID != "dep-e" || rec.Owner != "tenant-b" || rec.OwnerAttached || !rec.CreatedAt.Equal(created) {
		t.Errorf("made again as %+v; want running in a new epoch, of dep-e, owned by tenant-b, created %v", rec, created)
	}
	if len(rec.Webhooks) != 1 || rec.Webhooks[0] != hooks[0] || rec.MaxRun != time.Hour {
		t.Errorf("made again with webhooks %v and max run %v; want %v and 1h", rec.Webhooks, rec.MaxRun, hooks)
	}
}
