package server

import (
	"context"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// Cancel asks RunComfy to cancel the request and reports its state afterwards.
func (s *Service) Cancel(ctx context.Context, req *comfygatev1.CancelRequest) (*comfygatev1.CancelResponse, error) {
	if err := validateRequestRef(req.GetDeploymentId(), req.GetRequestId()); err != nil {
		return nil, err
	}
	res, err := s.upstream.Cancel(ctx, req.GetDeploymentId(), req.GetRequestId())
	if err != nil {
		return nil, fmt.Errorf("cancel request %s: %w", req.GetRequestId(), err)
	}
	resp := &comfygatev1.CancelResponse{
		Outcome:         toProtoCancelOutcome(res.Outcome),
		UpstreamOutcome: res.Raw,
	}
	// Upstream answers "cancelled" both for a queued request, cancelled at once,
	// and for a running one that stops later, so the state is read back rather
	// than inferred. The cancel has happened (or been refused) upstream by now; a
	// failure to read the state must not turn that into an error, so the read is
	// best effort.
	st, err := s.upstream.Status(ctx, req.GetDeploymentId(), req.GetRequestId())
	if err != nil {
		s.log.WarnContext(ctx, "reading state after cancel", "request_id", req.GetRequestId(), "error", err)
		resp.Request = &comfygatev1.RequestState{RequestId: req.GetRequestId(), DeploymentId: req.GetDeploymentId()}
		return resp, nil
	}
	resp.Request = stateFromStatus(req.GetDeploymentId(), st)
	return resp, nil
}
