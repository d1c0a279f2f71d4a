package server

import (
	"context"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
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
	if res.Outcome == runcomfy.CancelDone {
		resp.Request = &comfygatev1.RequestState{
			RequestId:      req.GetRequestId(),
			DeploymentId:   req.GetDeploymentId(),
			Status:         comfygatev1.Status_STATUS_CANCELLED,
			UpstreamStatus: res.Raw,
		}
		return resp, nil
	}
	// The cancel happened (or was refused) upstream; a failure to read the state
	// afterwards must not turn that into an error, so the state is best effort.
	st, err := s.upstream.Status(ctx, req.GetDeploymentId(), req.GetRequestId())
	if err != nil {
		s.log.WarnContext(ctx, "reading state after cancel", "request_id", req.GetRequestId(), "error", err)
		resp.Request = &comfygatev1.RequestState{RequestId: req.GetRequestId(), DeploymentId: req.GetDeploymentId()}
		return resp, nil
	}
	resp.Request = stateFromStatus(req.GetDeploymentId(), st)
	return resp, nil
}
