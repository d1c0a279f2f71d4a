package server

import (
	"context"
	"errors"
	"fmt"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// GetStatus returns the request's state. A finished request is answered from its
// record; an unfinished one is read upstream, and what upstream says is applied
// first, so the answer is both fresh and versioned. A request the gateway has
// no record of is read from RunComfy only for a caller that may attach.
func (s *Service) GetStatus(ctx context.Context, req *comfygatev1.GetStatusRequest) (*comfygatev1.GetStatusResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	stored, err := s.lookup(ctx, dep, rid)
	known := err == nil
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case err != nil && !errors.Is(err, state.ErrNotFound):
		return nil, fmt.Errorf("status of request %s: %w", rid, err)
	case known && stored.Terminal():
		return &comfygatev1.GetStatusResponse{Request: recordToProto(stored)}, nil
	}
	var (
		rec *state.Record
		u   *state.Update
	)
	if known {
		rec, u, err = s.refresh(ctx, dep, rid, "status")
	} else {
		rec, u, err = s.attach(ctx, dep, rid, "status")
	}
	switch {
	case errors.Is(err, errNotYours):
		return nil, err
	case u == nil && known:
		// Upstream is down or slow; the record is the best knowledge there is.
		s.log.WarnContext(ctx, "status read failed; answering from the record", "request_id", rid, "error", err)
		return &comfygatev1.GetStatusResponse{Request: recordToProto(stored)}, nil
	case u == nil:
		return nil, err
	case err != nil || rec == nil:
		if err != nil {
			s.log.WarnContext(ctx, "upstream status not recorded", "request_id", rid, "error", err)
		}
		return &comfygatev1.GetStatusResponse{Request: unrecorded(*u)}, nil
	}
	return &comfygatev1.GetStatusResponse{Request: recordToProto(rec)}, nil
}

// errNotYours: the request may exist, but the caller may not see it: it
// belongs to another tenant (or deployment), or nobody owns it and the caller
// may not attach. Callers map it to NotFound, exactly as an unknown id, so a
// tenant cannot even learn that the id exists, and never ask RunComfy about it.
var errNotYours = fmt.Errorf("request not visible to this tenant: %w", state.ErrNotFound)

// errMayNotAttach: the gateway has no record of the request, and the caller may
// not attach one, so RunComfy is not asked. Its answer is the one of an unknown
// id and of another tenant's (NotFound), so it tells the caller nothing.
var errMayNotAttach = fmt.Errorf("request unknown to the gateway; attaching needs the attach permission: %w", state.ErrNotFound)

// lookup returns the stored record of a request of deployment dep that the
// caller's tenant may see. A record nobody owns yet (recorded from a callback or
// attached before keys were in use) is claimed by the first tenant that asks,
// if it may attach: claiming a request is attaching it.
// state.ErrNotFound means nothing is recorded; errNotYours that it may not be
// seen by the caller, and must not be looked up upstream either.
func (s *Service) lookup(ctx context.Context, dep, rid string) (*state.Record, error) {
	rec, err := s.tracker.Get(ctx, rid)
	if err != nil {
		return nil, err
	}
	tenant := tenantOf(ctx)
	switch {
	case rec.DeploymentID != dep:
		return nil, errNotYours
	case rec.Owner == tenant:
		return rec, nil
	case rec.Owner != "", !mayAttach(ctx):
		return nil, errNotYours
	}
	claimed, _, err := s.tracker.Apply(ctx, state.Update{RequestID: rid, DeploymentID: dep, Source: "claim", State: rec.State, Owner: tenant})
	if err != nil {
		return nil, err
	}
	if claimed == nil || claimed.Owner != tenant {
		return nil, errNotYours
	}
	return claimed, nil
}

// attach records a request RunComfy knows but this gateway does not, for the
// caller's tenant, if the caller may attach; otherwise it returns
// errMayNotAttach without asking RunComfy, so a tenant cannot make the gateway
// call upstream for ids it guesses. Its results are refresh's.
func (s *Service) attach(ctx context.Context, dep, rid, source string) (*state.Record, *state.Update, error) {
	if !mayAttach(ctx) {
		return nil, nil, errMayNotAttach
	}
	return s.refresh(ctx, dep, rid, source)
}

// refresh reads a request from RunComfy and records what it says for the
// caller's tenant. It returns the record (nil when the upstream status is one
// this version does not know), the upstream observation, and an error: when the
// upstream read failed the observation is nil. Callers make sure the caller may
// see the request (lookup) or may attach it (attach) first.
func (s *Service) refresh(ctx context.Context, dep, rid, source string) (*state.Record, *state.Update, error) {
	rec, u, err := s.tracker.Refresh(ctx, s.upstream, dep, rid, source, tenantOf(ctx))
	if rec != nil && (rec.Owner != tenantOf(ctx) || rec.DeploymentID != dep) {
		// Someone else's request was recorded meanwhile.
		return nil, u, errNotYours
	}
	return rec, u, err
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
	if rec == nil || rec.DeploymentID != u.DeploymentID || rec.Owner != u.Owner {
		return nil
	}
	return rec
}
