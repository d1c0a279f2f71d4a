package server

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// WatchRequest streams the request's record: the current one first, then every
// later one in order, ending after the terminal one. It subscribes before it
// reads the current record and forwards only records newer than the last it
// sent, so nothing falls between the two and nothing is sent twice. A record
// that was lost and created again (another epoch) is sent as a new first
// event, so a watcher never misses the states of the new incarnation.
func (s *Service) WatchRequest(req *comfygatev1.WatchRequestRequest, stream comfygatev1.GatewayService_WatchRequestServer) error {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return err
	}
	if req.GetAfterSeq() < 0 {
		return &fieldError{field: "after_seq", reason: "must not be negative"}
	}
	if req.GetAfterEpoch() < 0 {
		return &fieldError{field: "after_epoch", reason: "must not be negative"}
	}
	ctx := stream.Context()
	follow := state.NewFollower(s.tracker, state.Position{Epoch: req.GetAfterEpoch(), Seq: req.GetAfterSeq()})
	// live: r comes from the hub, so its age is a delivery delay (the snapshot
	// sent first is as old as the last change, whenever that was).
	send := func(r *state.Record, live bool) (done bool, err error) {
		if live {
			next, err := follow.Next(ctx, r)
			if err != nil {
				// The client resumes from its last state and is sent the
				// current one then.
				return true, fmt.Errorf("watch request %s: %w", rid, err)
			}
			if r = next; r == nil {
				return false, nil
			}
		} else if !follow.First(r) {
			return r.Final(), nil
		}
		if r.Final() && s.dropFinal != nil && s.dropFinal() {
			return true, nil
		}
		ev, err := s.events.event(r)
		if err != nil {
			return true, err
		}
		if err := stream.SendMsg(ev); err != nil {
			return true, fmt.Errorf("send to watcher: %w", err)
		}
		if live {
			s.metrics.sent(r.UpdatedAt)
		} else {
			s.metrics.sent(time.Time{})
		}
		return r.Final(), nil
	}

	// The start (subscribe, read or attach the record, send it) goes through
	// Redis, RunComfy and the transport, whose call chains grow a goroutine's
	// stack well past its first size; the stream's goroutine then waits for
	// minutes with whatever stack it has. So the start runs on a goroutine of
	// its own, gone once it is done, and an idle watcher keeps a small stack.
	var (
		w    *state.Watcher
		done bool
		err  error
	)
	started := make(chan struct{})
	go func() {
		defer close(started)
		defer func() {
			// As the recovery interceptor would on the stream's goroutine.
			if p := recover(); p != nil {
				s.log.ErrorContext(ctx, "panic starting a watch", "request_id", rid, "panic", p, "stack", string(debug.Stack()))
				done, err = true, fmt.Errorf("watch request %s: internal error", rid)
			}
		}()
		w, done, err = s.startWatch(ctx, dep, rid, send)
	}()
	<-started
	if w != nil {
		defer w.Close()
		s.metrics.watching(1)
		defer s.metrics.watching(-1)
	}
	if done || err != nil {
		return err
	}
	for {
		recs, err := w.Next(ctx)
		if errors.Is(err, state.ErrDraining) {
			// The replica shuts down (the hub ended every watcher at once, with
			// no goroutine or context per stream): the client resumes on
			// another replica with after_seq.
			return &drainingError{last: follow.Position()}
		}
		if err != nil {
			return fmt.Errorf("watch request %s: %w", rid, err)
		}
		for _, r := range recs {
			if done, err := send(r, true); done || err != nil {
				return err
			}
		}
	}
}

// startWatch subscribes to the request, reads its record (attaching it from
// RunComfy when the gateway does not know it and the caller may attach) and
// sends it. It returns the watcher (nil on failure) and whether the stream is
// already complete.
func (s *Service) startWatch(ctx context.Context, dep, rid string, send func(*state.Record, bool) (bool, error)) (*state.Watcher, bool, error) {
	w, err := s.watches.Watch(ctx, rid)
	if err != nil {
		return nil, true, fmt.Errorf("watch request %s: %w", rid, err)
	}
	rec, err := s.lookup(ctx, dep, rid)
	if errors.Is(err, state.ErrNotFound) && !errors.Is(err, errNotYours) {
		// Not submitted through this gateway (or expired here): if the caller
		// may attach and RunComfy knows it, start tracking it; otherwise it is
		// not found, and RunComfy is not asked.
		var u *state.Update
		if rec, u, err = s.attach(ctx, dep, rid); u != nil && err == nil && rec == nil {
			err = state.ErrNotFound // a status this version does not know: nothing to follow
		}
	}
	if err != nil {
		return w, true, fmt.Errorf("watch request %s: %w", rid, err)
	}
	if !rec.Terminal() {
		s.watches.Describe(rid, rec.DeploymentID, rec.Owner, rec.OwnerAttached)
		if s.expedite != nil {
			s.expedite.Watched(ctx, rid)
		}
	}
	done, err := send(rec, false)
	return w, done, err
}
