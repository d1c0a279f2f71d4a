package server

import (
	"context"
	"errors"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Cancel asks RunComfy to cancel the request and reports its state afterwards.
func (s *Service) Cancel(ctx context.Context, req *comfygatev1.CancelRequest) (*comfygatev1.CancelResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	// Only the owner cancels: a request of another tenant is not found, and
	// RunComfy is never asked. One unknown here is attached first (by a caller
	// that may attach; for any other it is not found), which also settles who
	// owns it.
	if _, err := s.lookup(ctx, dep, rid); errors.Is(err, state.ErrNotFound) && !errors.Is(err, errNotYours) {
		// Refused unless attaching worked: an unrecorded request has no owner
		// to check the caller against.
		if _, _, err := s.attach(ctx, dep, rid); err != nil {
			return nil, fmt.Errorf("cancel request %s: %w", rid, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("cancel request %s: %w", rid, err)
	}
	res, err := s.upstream.Cancel(ctx, dep, rid)
	if err != nil {
		return nil, fmt.Errorf("cancel request %s: %w", rid, err)
	}
	resp := &comfygatev1.CancelResponse{
		Outcome:         toProtoCancelOutcome(res.Outcome),
		UpstreamOutcome: res.Raw,
	}
	// Upstream answers "cancelled" both for a queued request, cancelled at once,
	// and for a running one that stops later, so the state is read back rather
	// than inferred, and recorded. The cancel has happened (or been refused)
	// upstream by now; a failure to read the state must not turn that into an
	// error, so the read is best effort.
	st, err := s.upstream.Status(ctx, dep, rid)
	if err != nil {
		s.log.WarnContext(ctx, "reading state after cancel", "request_id", rid, "error", err)
		if rec, err := s.lookup(ctx, dep, rid); err == nil {
			resp.Request = recordToProto(rec, s.urls)
		} else {
			resp.Request = &comfygatev1.RequestState{RequestId: rid, DeploymentId: dep}
		}
		return resp, nil
	}
	u := state.UpdateFromStatus(dep, state.SourceCancel, st)
	u.Owner = tenantOf(ctx)
	// A cancel RunComfy took and has not finished yet: no deadline sends
	// another, nor ends the request as its own.
	u.Cancelling = res.Outcome == runcomfy.CancelDone || res.Outcome == runcomfy.CancelRequested
	if rec := s.apply(ctx, u); rec != nil {
		resp.Request = recordToProto(rec, s.urls)
	} else {
		resp.Request = unrecorded(u)
	}
	return resp, nil
}
