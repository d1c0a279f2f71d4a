package server

import (
	"context"
	"encoding/json"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
)

// Submit validates the input and forwards it to RunComfy byte for byte.
func (s *Service) Submit(ctx context.Context, req *comfygatev1.SubmitRequest) (*comfygatev1.SubmitResponse, error) {
	if err := validateID("deployment_id", req.GetDeploymentId()); err != nil {
		return nil, err
	}
	if err := validateInput(req.GetInputJson()); err != nil {
		return nil, err
	}
	// Once the submit is on the wire RunComfy may start a paid job whatever the
	// caller does next, so a caller hanging up must not abandon the answer that
	// names the job: the upstream call has its own deadline instead.
	upCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.submitTimeout)
	defer cancel()
	resp, err := s.upstream.Submit(upCtx, req.GetDeploymentId(), json.RawMessage(req.GetInputJson()), runcomfy.SubmitOptions{})
	if err != nil {
		return nil, fmt.Errorf("submit to deployment %s: %w", req.GetDeploymentId(), err)
	}
	return &comfygatev1.SubmitResponse{Request: &comfygatev1.RequestState{
		RequestId:    resp.RequestID,
		DeploymentId: req.GetDeploymentId(),
		Status:       comfygatev1.Status_STATUS_QUEUED,
		CreatedAt:    timestamp(s.now()),
	}}, nil
}
