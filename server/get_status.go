package server

import (
	"context"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// GetStatus reads the request's state from RunComfy.
func (s *Service) GetStatus(ctx context.Context, req *comfygatev1.GetStatusRequest) (*comfygatev1.GetStatusResponse, error) {
	if err := validateRequestRef(req.GetDeploymentId(), req.GetRequestId()); err != nil {
		return nil, err
	}
	st, err := s.upstream.Status(ctx, req.GetDeploymentId(), req.GetRequestId())
	if err != nil {
		return nil, fmt.Errorf("status of request %s: %w", req.GetRequestId(), err)
	}
	return &comfygatev1.GetStatusResponse{Request: stateFromStatus(req.GetDeploymentId(), st)}, nil
}
