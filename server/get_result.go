package server

import (
	"context"
	"errors"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// GetResult returns the request's outputs (or error) once finished, and its state
// before that. A finished request is answered from its record, with no upstream
// call.
func (s *Service) GetResult(ctx context.Context, req *comfygatev1.GetResultRequest) (*comfygatev1.GetResultResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	rec, err := s.lookup(ctx, dep, rid)
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case err != nil && !errors.Is(err, state.ErrNotFound):
		return nil, fmt.Errorf("result of request %s: %w", rid, err)
	case err == nil && rec.Terminal():
		return &comfygatev1.GetResultResponse{Request: recordToProto(rec)}, nil
	}
	res, err := s.upstream.Result(ctx, dep, rid)
	if err != nil {
		return nil, fmt.Errorf("result of request %s: %w", rid, err)
	}
	u := state.UpdateFromResult(dep, "result", res)
	u.Owner = tenantOf(ctx)
	if rec := s.apply(ctx, u); rec != nil {
		return &comfygatev1.GetResultResponse{Request: recordToProto(rec)}, nil
	}
	return &comfygatev1.GetResultResponse{Request: unrecorded(u)}, nil
}
