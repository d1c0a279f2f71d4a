package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// GetResult returns the request's outputs (or error) once finished, and its state
// before that. A record that is final or fresh (see GetStatus) is answered as
// it stands, with no upstream call; an older one is read through RunComfy's
// /result, bounded by refreshTO, and answered with a refresh_error when that
// fails. A request the gateway has no record of is read from RunComfy (and
// recorded: attached) only for a caller that may attach.
func (s *Service) GetResult(ctx context.Context, req *comfygatev1.GetResultRequest) (*comfygatev1.GetResultResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	stored, err := s.lookup(ctx, dep, rid)
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case errors.Is(err, state.ErrNotFound):
		return s.attachResult(ctx, dep, rid)
	case err != nil:
		return nil, fmt.Errorf("result of request %s: %w", rid, err)
	case s.fresh(stored):
		return &comfygatev1.GetResultResponse{Request: recordToProto(stored, s.urls)}, nil
	}

	rctx, cancel := context.WithTimeout(ctx, s.refreshTO)
	defer cancel()
	rec, u, err := s.result(rctx, dep, rid, state.SourceResult)
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case err == nil && rec != nil:
		return &comfygatev1.GetResultResponse{Request: recordToProto(rec, s.urls)}, nil
	case err == nil:
		// An answer that names no status this version knows: the record
		// stands (as GetStatus), and the caller is told what RunComfy said.
		err = &runcomfy.APIError{Op: "result", HTTPStatus: http.StatusOK,
			Message: fmt.Sprintf("answer names no status this gateway knows (%q)", u.UpstreamStatus)}
	case ctx.Err() != nil:
		// The caller gave up or ran out of time: nobody reads a fallback.
		return nil, fmt.Errorf("result of request %s: %w", rid, ctx.Err())
	}
	s.log.WarnContext(ctx, "result not refreshed; answering from the record", "request_id", rid, "error", err)
	return &comfygatev1.GetResultResponse{
		Request:      recordToProto(stored, s.urls),
		RefreshError: s.refreshError(ctx, comfygatev1.GatewayService_GetResult_FullMethodName, err),
	}, nil
}

// attachResult answers GetResult of a request the gateway has no record of:
// read from RunComfy and recorded (attached) if the caller may attach, within
// the caller's own deadline. An upstream failure is the call's error; a
// failure to record is not, since upstream's answer is still the caller's.
func (s *Service) attachResult(ctx context.Context, dep, rid string) (*comfygatev1.GetResultResponse, error) {
	if !mayAttach(ctx) {
		return nil, errMayNotAttach
	}
	rec, u, err := s.result(ctx, dep, rid, state.SourceAttach)
	switch {
	case errors.Is(err, errNotYours), u == nil:
		return nil, err
	case err != nil:
		s.log.WarnContext(ctx, "upstream observation not recorded", "request_id", rid, "source", u.Source, "error", err)
		return &comfygatev1.GetResultResponse{Request: unrecorded(*u)}, nil
	case rec == nil:
		return &comfygatev1.GetResultResponse{Request: unrecorded(*u)}, nil
	}
	return &comfygatev1.GetResultResponse{Request: recordToProto(rec, s.urls)}, nil
}

// result reads a request's result from RunComfy (outputs or error once
// finished, the state before that) and records it for the caller's tenant. Its
// results are refresh's: the record afterwards (nil when there is nothing to
// record it under, or the state was not recorded), the upstream observation
// (nil when the upstream read failed) and an error (the read's, or the
// recording's, or errNotYours when another tenant's request was recorded
// since the caller's lookup).
//
// source is "result", or "attach" when the caller's tenant becomes the owner
// by attaching the request (see attach).
func (s *Service) result(ctx context.Context, dep, rid string, source state.Source) (*state.Record, *state.Update, error) {
	res, err := s.upstream.Result(ctx, dep, rid)
	if err != nil {
		return nil, nil, fmt.Errorf("result of request %s: %w", rid, err)
	}
	u := state.UpdateFromResult(dep, source, res)
	u.Owner = tenantOf(ctx)
	if u.RequestID == "" {
		return nil, &u, nil
	}
	rec, _, err := s.tracker.Apply(ctx, u)
	switch {
	case err != nil:
		return nil, &u, fmt.Errorf("record result of request %s: %w", rid, err)
	case rec != nil && !visible(ctx, rec, dep):
		// Not the caller's to read, whatever RunComfy answered.
		return nil, &u, errNotYours
	}
	return rec, &u, nil
}
