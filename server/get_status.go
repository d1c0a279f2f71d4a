package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// GetStatus returns the request's state. A record that is final, or that
// RunComfy confirmed within the poll interval (freshFor), is answered as it
// stands, with no upstream call: reads then cost RunComfy nothing however
// often clients poll. An older one is read through, bounded by refreshTO, and
// what upstream says is applied first, so the answer is both current and
// versioned; when that read fails, the record is answered with a
// refresh_error that says why, and synced_at says how old it is. A request
// the gateway has no record of is read from RunComfy only for a caller that
// may attach.
func (s *Service) GetStatus(ctx context.Context, req *comfygatev1.GetStatusRequest) (*comfygatev1.GetStatusResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	stored, err := s.lookup(ctx, dep, rid)
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case errors.Is(err, state.ErrNotFound):
		return s.attachStatus(ctx, dep, rid)
	case err != nil:
		return nil, fmt.Errorf("status of request %s: %w", rid, err)
	case s.fresh(stored):
		return &comfygatev1.GetStatusResponse{Request: recordToProto(stored, s.urls)}, nil
	}

	rctx, cancel := context.WithTimeout(ctx, s.refreshTO)
	defer cancel()
	rec, u, err := s.refresh(rctx, dep, rid, state.SourceStatus)
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case err == nil && rec != nil:
		return &comfygatev1.GetStatusResponse{Request: recordToProto(rec, s.urls)}, nil
	case err == nil:
		// An answer that names no status this version knows (none at all,
		// or a new word): not recorded, and not a state to answer instead
		// of the record, which would then seem to go back to nothing. The
		// record stands, and the caller is told what RunComfy said.
		err = &runcomfy.APIError{Op: "status", HTTPStatus: http.StatusOK,
			Message: fmt.Sprintf("answer names no status this gateway knows (%q)", u.UpstreamStatus)}
	case ctx.Err() != nil:
		// The caller gave up or ran out of time: nobody reads a fallback.
		return nil, fmt.Errorf("status of request %s: %w", rid, ctx.Err())
	}
	// Upstream is down or slow, or its answer could not be recorded: the
	// record is the best knowledge there is, and the caller is told so.
	s.log.WarnContext(ctx, "status not refreshed; answering from the record", "request_id", rid, "error", err)
	return &comfygatev1.GetStatusResponse{
		Request:      recordToProto(stored, s.urls),
		RefreshError: s.refreshError(ctx, comfygatev1.GatewayService_GetStatus_FullMethodName, err),
	}, nil
}

// attachStatus answers GetStatus of a request the gateway has no record of:
// read from RunComfy and recorded (attached) if the caller may attach, within
// the caller's own deadline. There is no record to fall back on, so an
// upstream failure is the call's error.
func (s *Service) attachStatus(ctx context.Context, dep, rid string) (*comfygatev1.GetStatusResponse, error) {
	rec, u, err := s.attach(ctx, dep, rid)
	switch {
	case errors.Is(err, errNotYours), u == nil:
		return nil, err
	case err != nil || rec == nil:
		if err != nil {
			s.log.WarnContext(ctx, "upstream status not recorded", "request_id", rid, "error", err)
		}
		return &comfygatev1.GetStatusResponse{Request: unrecorded(*u)}, nil
	}
	return &comfygatev1.GetStatusResponse{Request: recordToProto(rec, s.urls)}, nil
}

// fresh reports whether rec may be answered without asking RunComfy: it is
// final (nothing can change it), or RunComfy confirmed it less than freshFor
// ago (the poll interval: a callback or a poll would have moved it since).
func (s *Service) fresh(rec *state.Record) bool {
	return rec.Terminal() || s.now().Sub(rec.SyncedAt) < s.freshFor
}

// refreshError describes a failed read-through as the same failure would be
// reported as the error of method: toStatus chooses its code, message and
// upstream code, so a refresh_error and an error never disagree.
func (s *Service) refreshError(ctx context.Context, method string, err error) *comfygatev1.RefreshError {
	st := status.Convert(toStatus(ctx, s.log, method, err))
	re := &comfygatev1.RefreshError{Code: code.Code(st.Code()).String(), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			re.UpstreamCode = info.GetMetadata()["upstream_code"]
		}
	}
	return re
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
	if rec == nil || !visible(ctx, rec, u.DeploymentID) {
		return nil
	}
	return rec
}
