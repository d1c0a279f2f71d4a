package server

import (
	"context"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// GetStatus returns the request's state. A finished request is answered from its
// record; an unfinished one is read upstream, and what upstream says is applied
// first, so the answer is both fresh and versioned.
func (s *Service) GetStatus(ctx context.Context, req *comfygatev1.GetStatusRequest) (*comfygatev1.GetStatusResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	stored, known := s.record(ctx, dep, rid)
	if known && stored.Terminal() {
		return &comfygatev1.GetStatusResponse{Request: recordToProto(stored)}, nil
	}
	rec, u, err := s.tracker.Refresh(ctx, s.upstream, dep, rid, "status")
	switch {
	case u == nil && known:
		// Upstream is down or slow; the record is the best knowledge there is.
		s.log.WarnContext(ctx, "status read failed; answering from the record", "request_id", rid, "error", err)
		return &comfygatev1.GetStatusResponse{Request: recordToProto(stored)}, nil
	case u == nil:
		return nil, err
	case err != nil || rec == nil || rec.DeploymentID != dep:
		if err != nil {
			s.log.WarnContext(ctx, "upstream status not recorded", "request_id", rid, "error", err)
		}
		return &comfygatev1.GetStatusResponse{Request: unrecorded(*u)}, nil
	}
	return &comfygatev1.GetStatusResponse{Request: recordToProto(rec)}, nil
}

// record returns the stored record of a request of deployment dep, if any.
func (s *Service) record(ctx context.Context, dep, rid string) (*state.Record, bool) {
	rec, err := s.tracker.Get(ctx, rid)
	if err != nil || rec.DeploymentID != dep {
		return nil, false
	}
	return rec, true
}

// apply records an upstream observation made while answering a read, and returns
// the record afterwards. A failure to record is logged, not returned: the caller
// still has the upstream answer to give.
func (s *Service) apply(ctx context.Context, u state.Update) *state.Record {
	if u.RequestID == "" {
		return nil
	}
	rec, _, err := s.tracker.Apply(ctx, u)
	if err != nil {
		s.log.WarnContext(ctx, "upstream observation not recorded", "request_id", u.RequestID, "source", u.Source, "error", err)
		return nil
	}
	if rec == nil || rec.DeploymentID != u.DeploymentID {
		return nil
	}
	return rec
}
