package server

import (
	"context"
	"fmt"

	"github.com/comfygate/comfygate/state"
)

// Tenancy: which requests a caller's tenant may see, and how a request comes
// to be a tenant's. Every RPC goes through these: lookup for a request the
// gateway has a record of, attach for one it has not, visible on every record
// it is about to answer with.

// visible reports whether rec, answered for a request of deployment dep, may
// be shown to the caller: it is the caller's tenant's, of that deployment.
func visible(ctx context.Context, rec *state.Record, dep string) bool {
	return rec.Owner == tenantOf(ctx) && rec.DeploymentID == dep
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
	rec, err := s.tracker.Lookup(ctx, rid)
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
	claimed, _, err := s.tracker.Apply(ctx, state.Update{RequestID: rid, DeploymentID: dep, Source: state.SourceClaim, State: rec.State, Owner: tenant})
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
func (s *Service) attach(ctx context.Context, dep, rid string) (*state.Record, *state.Update, error) {
	if !mayAttach(ctx) {
		return nil, nil, errMayNotAttach
	}
	// Source "attach": the caller's tenant becomes the owner by attaching,
	// not by proof, so a proven owner (the submit's tenant, named by a
	// signed callback URL) takes the request back.
	return s.refresh(ctx, dep, rid, state.SourceAttach)
}

// refresh reads a request from RunComfy and records what it says for the
// caller's tenant. It returns the record (nil when the upstream status is one
// this version does not know), the upstream observation, and an error: when the
// upstream read failed the observation is nil. Callers make sure the caller may
// see the request (lookup) or may attach it (attach) first.
func (s *Service) refresh(ctx context.Context, dep, rid string, source state.Source) (*state.Record, *state.Update, error) {
	rec, u, err := s.tracker.Refresh(ctx, s.upstream, dep, rid, source, tenantOf(ctx))
	if rec != nil && !visible(ctx, rec, dep) {
		// Someone else's request was recorded meanwhile.
		return nil, u, errNotYours
	}
	return rec, u, err
}
