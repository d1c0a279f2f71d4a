package server

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// noUpstream fails every call: lookup must never reach RunComfy.
type noUpstream struct{ Upstream }

func tenancyService(t *testing.T) (*Service, *state.Tracker) {
	t.Helper()
	b := memory.New(nil)
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := state.NewHub(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewService(ServiceConfig{Upstream: noUpstream{}, Tracker: tr, Watches: hub, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s, tr
}

type noResults struct{}

func (noResults) Result(context.Context, string, string) (*runcomfy.ResultResponse, error) {
	return nil, errors.New("no RunComfy here")
}

func as(tenant string, attach bool) context.Context {
	return context.WithValue(context.Background(), callerKey{}, caller{tenant: tenant, attach: attach})
}

// TestLookup: who may see a recorded request, and who claims one nobody owns.
func TestLookup(t *testing.T) {
	tests := []struct {
		name      string
		owner     string // "" records the request with no owner; "-" records nothing
		dep       string // the deployment asked for
		ctx       context.Context
		wantErr   error
		wantOwner string
		attached  bool
	}{
		{name: "the owner", owner: "a", dep: "d", ctx: as("a", false), wantOwner: "a"},
		{name: "another tenant", owner: "a", dep: "d", ctx: as("b", false), wantErr: errNotYours},
		{name: "another tenant that may attach", owner: "a", dep: "d", ctx: as("c", true), wantErr: errNotYours},
		{name: "another deployment", owner: "a", dep: "other", ctx: as("a", false), wantErr: errNotYours},
		{name: "nobody's, caller may not attach", owner: "", dep: "d", ctx: as("b", false), wantErr: errNotYours},
		{name: "nobody's, caller may attach: claimed on trust", owner: "", dep: "d", ctx: as("c", true), wantOwner: "c", attached: true},
		{name: "not recorded", owner: "-", dep: "d", ctx: as("a", true), wantErr: state.ErrNotFound},
		{name: "no caller in the context", owner: "a", dep: "d", ctx: context.Background(), wantErr: errNotYours},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, tr := tenancyService(t)
			if tt.owner != "-" {
				src := state.SourceSubmit
				if tt.owner == "" {
					src = state.SourcePoll
				}
				if _, _, err := tr.Apply(context.Background(), state.Update{RequestID: "r", DeploymentID: "d", Source: src, State: runcomfy.StateQueued, Owner: tt.owner, CreatedAt: time.Now()}); err != nil {
					t.Fatal(err)
				}
			}
			rec, err := s.lookup(tt.ctx, tt.dep, "r")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || rec != nil {
					t.Fatalf("lookup = %v, %v; want %v", rec, err, tt.wantErr)
				}
				if tt.wantErr == state.ErrNotFound && errors.Is(err, errNotYours) {
					t.Errorf("an unrecorded request reads as another tenant's")
				}
				return
			}
			if err != nil || rec.Owner != tt.wantOwner || rec.OwnerAttached != tt.attached {
				t.Fatalf("lookup = %+v, %v; want owner %q (attached %v)", rec, err, tt.wantOwner, tt.attached)
			}
			if !visible(tt.ctx, rec, tt.dep) {
				t.Errorf("the record lookup returned is not visible to its caller")
			}
		})
	}
}

// TestAttachNeedsThePermission: a caller that may not attach never reaches
// RunComfy for a request the gateway does not know.
func TestAttachNeedsThePermission(t *testing.T) {
	s, _ := tenancyService(t)
	rec, u, err := s.attach(as("b", false), "d", "r")
	if !errors.Is(err, errMayNotAttach) || !errors.Is(err, state.ErrNotFound) || rec != nil || u != nil {
		t.Fatalf("attach = %v, %v, %v; want errMayNotAttach before any upstream call", rec, u, err)
	}
}

func TestVisible(t *testing.T) {
	rec := &state.Record{RequestID: "r", DeploymentID: "d", Owner: "a"}
	tests := []struct {
		ctx  context.Context
		dep  string
		want bool
	}{
		{as("a", false), "d", true},
		{as("a", true), "other", false},
		{as("b", true), "d", false},
		{as("", true), "d", false},
	}
	for _, tt := range tests {
		if got := visible(tt.ctx, rec, tt.dep); got != tt.want {
			t.Errorf("visible(%+v, %q) = %v, want %v", callerOf(tt.ctx), tt.dep, got, tt.want)
		}
	}
}
