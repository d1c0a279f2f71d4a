package server

import (
	"context"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// GetResult reads the request's outputs, or its state while unfinished, from
// RunComfy.
func (s *Service) GetResult(ctx context.Context, req *comfygatev1.GetResultRequest) (*comfygatev1.GetResultResponse, error) {
	if err := validateRequestRef(req.GetDeploymentId(), req.GetRequestId()); err != nil {
		return nil, err
	}
	res, err := s.upstream.Result(ctx, req.GetDeploymentId(), req.GetRequestId())
	if err != nil {
		return nil, fmt.Errorf("result of request %s: %w", req.GetRequestId(), err)
	}
	return &comfygatev1.GetResultResponse{Request: stateFromResult(req.GetDeploymentId(), res)}, nil
}
