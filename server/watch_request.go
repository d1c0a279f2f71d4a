package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
	"github.com/comfygate/comfygate/state"
)

// WatchRequest streams the request's record: the current one first, then every
// later one in order, ending after the terminal one. It subscribes before it
// reads the current record and forwards only records newer than the last it
// sent, so nothing falls between the two and nothing is sent twice. A record
// that was lost and created again (another epoch) is sent as a new first
// event, so a watcher never misses the states of the new incarnation; but
// never one of a lower rank than the last state sent (see watchStream.sent).
func (s *Service) WatchRequest(req *comfygatev1.WatchRequestRequest, stream comfygatev1.GatewayService_WatchRequestServer) error {
	ws, err := s.newWatchStream(req, stream)
	if err != nil {
		return err
	}
	// The start (subscribe, read or attach the record, send it) goes through
	// Redis, RunComfy and the transport, whose call chains would grow the
	// stream goroutine's stack past what its wait needs: it runs aside, and
	// the stream's goroutine then waits with a small stack (runAside). So
	// does the wait's own frame: what it calls beyond Next is in ws's
	// methods.
	err = runAside(ws.start)
	if ws.w != nil {
		defer ws.close()
	}
	if ws.done || err != nil {
		return err
	}
	return ws.follow()
}

// watchStream is one WatchRequest stream.
type watchStream struct {
	s        *Service
	stream   comfygatev1.GatewayService_WatchRequestServer
	ctx      context.Context
	dep, rid string
	follower *state.Follower
	// w follows the request once started (nil when the start failed).
	w *state.Watcher
	// sent is the status of the last state sent, or before any, of the
	// state the client saw before it resumed (after_status; unset when it
	// named none). After a loss, a record made again may start at an older
	// state than the watcher saw (a replica that remembered less put it back
	// first, the one that remembered more moves it on next): such a record
	// is held back, as the request never goes backwards, and the stream goes
	// on with the next one that is not lower. The follower has still moved
	// past it, so it is not sent later either.
	sent comfygatev1.Status
	// done is set once the stream is complete.
	done bool
}

// newWatchStream checks the request and makes its stream.
//
//go:noinline
func (s *Service) newWatchStream(req *comfygatev1.WatchRequestRequest, stream comfygatev1.GatewayService_WatchRequestServer) (*watchStream, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	if req.GetAfterSeq() < 0 {
		return nil, &fieldError{field: "after_seq", reason: "must not be negative"}
	}
	if req.GetAfterEpoch() < 0 {
		return nil, &fieldError{field: "after_epoch", reason: "must not be negative"}
	}
	seen := req.GetAfterStatus()
	if seen != comfygatev1.Status_STATUS_UNSPECIFIED && reqstatus.OfProto(seen).Proto != seen {
		return nil, &fieldError{field: "after_status", reason: fmt.Sprintf("%v is not a status", seen)}
	}
	return &watchStream{
		s: s, stream: stream, ctx: stream.Context(), dep: dep, rid: rid,
		follower: state.NewFollower(s.tracker, state.Position{Epoch: req.GetAfterEpoch(), Seq: req.GetAfterSeq()}),
		// What the client saw before it resumed counts as sent.
		sent: seen,
	}, nil
}

// start subscribes, reads the record and sends it (startWatch), on a
// goroutine of its own (WatchRequest).
func (ws *watchStream) start() error {
	w, done, err := ws.s.startWatch(ws.ctx, ws.dep, ws.rid, ws.send)
	ws.w, ws.done = w, done
	if w != nil {
		ws.s.metrics.watching(1)
	}
	return err
}

// close ends the watch once the stream ends.
//
//go:noinline
func (ws *watchStream) close() {
	ws.w.Close()
	ws.s.metrics.watching(-1)
}

// follow sends every later record until the stream is complete, the client
// leaves or the replica drains. It waits in Next for minutes on an idle
// stream, so it calls nothing else directly: its frame stays small.
func (ws *watchStream) follow() error {
	for {
		recs, err := ws.w.Next(ws.ctx)
		if err != nil {
			return ws.nextFailed(err)
		}
		if done, err := ws.sendAll(recs); done || err != nil {
			return err
		}
	}
}

// nextFailed is the stream's end when Next fails.
//
//go:noinline
func (ws *watchStream) nextFailed(err error) error {
	if errors.Is(err, state.ErrDraining) {
		// The replica shuts down (the hub ended every watcher at once, with
		// no goroutine or context per stream): the client resumes on
		// another replica with after_seq.
		return &drainingError{last: ws.follower.Position(), status: ws.sent}
	}
	return fmt.Errorf("watch request %s: %w", ws.rid, err)
}

// sendAll sends recs from the hub, in order.
//
//go:noinline
func (ws *watchStream) sendAll(recs []*state.Record) (done bool, err error) {
	for _, r := range recs {
		if done, err := ws.send(r, true); done || err != nil {
			return done, err
		}
	}
	return false, nil
}

// send sends r unless the stream already sent it or a later record; live:
// r comes from the hub, so its age is a delivery delay (the snapshot sent
// first is as old as the last change, whenever that was).
func (ws *watchStream) send(r *state.Record, live bool) (done bool, err error) {
	if live {
		next, err := ws.follower.Next(ws.ctx, r)
		if err != nil {
			// The client resumes from its last state and is sent the
			// current one then.
			return true, fmt.Errorf("watch request %s: %w", ws.rid, err)
		}
		if r = next; r == nil {
			return false, nil
		}
	} else if !ws.follower.First(r) {
		return r.Final(), nil
	}
	info := reqstatus.Of(r.State)
	if info.Rank < reqstatus.OfProto(ws.sent).Rank {
		return false, nil // lower ranks are never final
	}
	s := ws.s
	if r.Final() && s.dropFinal != nil && s.dropFinal() {
		return true, nil
	}
	ev, err := s.events.event(r)
	if err != nil {
		return true, err
	}
	if err := ws.stream.SendMsg(ev); err != nil {
		return true, fmt.Errorf("send to watcher: %w", err)
	}
	ws.sent = info.Proto
	if live {
		s.metrics.sent(r.UpdatedAt)
	} else {
		s.metrics.sent(time.Time{})
	}
	return r.Final(), nil
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
