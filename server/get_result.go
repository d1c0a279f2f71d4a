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
// call; a request the gateway has no record of is read from RunComfy (and
// recorded: attached) only for a caller that may attach.
func (s *Service) GetResult(ctx context.Context, req *comfygatev1.GetResultRequest) (*comfygatev1.GetResultResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	rec, err := s.lookup(ctx, dep, rid)
	known := err == nil
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case err != nil && !errors.Is(err, state.ErrNotFound):
		return nil, fmt.Errorf("result of request %s: %w", rid, err)
	case known && rec.Terminal():
		return &comfygatev1.GetResultResponse{Request: recordToProto(rec)}, nil
	case !known && !mayAttach(ctx):
		return nil, errMayNotAttach
	}
	res, err := s.upstream.Result(ctx, dep, rid)
	if err != nil {
		return nil, fmt.Errorf("result of request %s: %w", rid, err)
	}
	u := state.UpdateFromResult(dep, "result", res)
	u.Owner = tenantOf(ctx)
	if u.RequestID == "" {
		// Nothing to record it under; the answer is still the caller's.
		return &comfygatev1.GetResultResponse{Request: unrecorded(u)}, nil
	}
	stored, _, err := s.tracker.Apply(ctx, u)
	switch {
	case err != nil:
		// Upstream's answer is still the caller's to have.
		s.log.WarnContext(ctx, "upstream observation not recorded", "request_id", rid, "source", u.Source, "error", err)
	case stored != nil && (stored.Owner != u.Owner || stored.DeploymentID != dep):
		// Another tenant's request was recorded since lookup: not the
		// caller's to read, whatever RunComfy answered.
		return nil, errNotYours
	case stored != nil:
		return &comfygatev1.GetResultResponse{Request: recordToProto(stored)}, nil
	}
	return &comfygatev1.GetResultResponse{Request: unrecorded(u)}, nil
}
