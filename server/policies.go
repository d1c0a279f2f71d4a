package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/comfygate/comfygate/deployments"
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// Policies gives each deployment its default deadlines and its concurrency
// caps; *deployments.File provides it.
type Policies interface {
	For(deploymentID string) deployments.Policy
}

// The REST headers that carry a submit's deadlines (SubmitRequest's
// max_queue_duration and max_run_duration), as gRPC metadata.
const (
	maxQueueHeader = "comfygate-max-queue-duration"
	maxRunHeader   = "comfygate-max-run-duration"
)

// slotHoldMargin is how long a concurrency slot reserved for a submit
// outlives the submit's own upstream timeout: a replica that dies mid-submit
// holds it no longer than that.
const slotHoldMargin = 30 * time.Second

// policy is the deployment's policy; the zero Policy without a deployments
// file.
func (s *Service) policy(dep string) deployments.Policy {
	if s.policies == nil {
		return deployments.Policy{}
	}
	return s.policies.For(dep)
}

// submitDeadlines returns the deadlines a submit sets: its fields, or over
// REST its headers, each else its deployment's default. named describes the
// ones the submit set itself, for its idempotency fingerprint ("" when
// none): a retry with other deadlines is another submit.
func (s *Service) submitDeadlines(ctx context.Context, req *comfygatev1.SubmitRequest, p deployments.Policy) (queue, run time.Duration, named string, err error) {
	queue, qSet, err := deadline(ctx, "max_queue_duration", req.GetMaxQueueDuration(), maxQueueHeader, "Comfygate-Max-Queue-Duration")
	if err != nil {
		return 0, 0, "", err
	}
	run, rSet, err := deadline(ctx, "max_run_duration", req.GetMaxRunDuration(), maxRunHeader, "Comfygate-Max-Run-Duration")
	if err != nil {
		return 0, 0, "", err
	}
	if qSet || rSet {
		named = fmt.Sprintf("\x00deadlines\x00%t:%d/%t:%d", qSet, queue, rSet, run)
	}
	if !qSet {
		queue = p.MaxQueueDuration
	}
	if !rSet {
		run = p.MaxRunDuration
	}
	return queue, run, named, nil
}

// deadline reads one deadline: the field when set, else the header (REST).
// set is false when neither is given; a zero given is "none", whatever the
// deployment's default.
func deadline(ctx context.Context, field string, v *durationpb.Duration, header, headerName string) (d time.Duration, set bool, err error) {
	switch values := metadata.ValueFromIncomingContext(ctx, header); {
	case v != nil:
		if err := v.CheckValid(); err != nil {
			return 0, false, &fieldError{field: field, reason: "is not a valid duration"}
		}
		d = v.AsDuration()
	case len(values) > 1:
		return 0, false, &fieldError{field: headerName, reason: "must be given once"}
	case len(values) == 1:
		if d, err = time.ParseDuration(strings.TrimSpace(values[0])); err != nil {
			return 0, false, &fieldError{field: headerName, reason: fmt.Sprintf("%q is not a duration such as \"90s\" or \"10m\" (\"0\": none)", clip(values[0]))}
		}
		field = headerName
	default:
		return 0, false, nil
	}
	if d != 0 && (d < deployments.MinDuration || d > deployments.MaxDuration) {
		return 0, false, &fieldError{field: field, reason: fmt.Sprintf("%s is out of range: from %s to %s, or 0 for none", d, deployments.MinDuration, deployments.MaxDuration)}
	}
	return d, true, nil
}

// clip shortens a caller's value quoted in an error.
func clip(s string) string {
	const most = 64
	if len(s) > most {
		return strings.ToValidUTF8(s[:most], "") + "…"
	}
	return s
}

// reserveSlot takes a concurrency slot for a submit to a capped deployment,
// before RunComfy is called; release gives it back unless bind was called
// with the request it started. Both are no-ops for an uncapped deployment.
func (s *Service) reserveSlot(ctx context.Context, dep string, p deployments.Policy) (*slot, error) {
	if !p.Capped() || s.slots == nil {
		return nil, nil
	}
	tenant := tenantOf(ctx)
	token, err := s.slots.Reserve(ctx, dep, tenant, state.Caps{Deployment: p.MaxConcurrency, PerTenant: p.MaxConcurrencyPerTenant}, s.submitTimeout+slotHoldMargin)
	if ce := (*state.CapError)(nil); errors.As(err, &ce) {
		s.metrics.refused(limitConcurrency)
	}
	if err != nil {
		return nil, fmt.Errorf("submit to deployment %s refused before calling RunComfy: %w", dep, err)
	}
	return &slot{s: s, dep: dep, tenant: tenant, token: token}, nil
}

// slot is a submit's reserved concurrency slot.
type slot struct {
	s                  *Service
	dep, tenant, token string
	done               bool
}

// bind makes the slot requestID's, held until the request ends.
func (sl *slot) bind(ctx context.Context, requestID string) {
	if sl == nil || sl.done {
		return
	}
	sl.done = true
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := sl.s.slots.Bind(bctx, sl.token, sl.dep, sl.tenant, requestID); err != nil {
		// The reservation expires by itself; until then it counts.
		sl.s.log.WarnContext(ctx, "concurrency slot not bound to its request", "request_id", requestID, "error", err)
	}
}

// keep leaves the slot to expire with its reservation: the submit got no
// answer, and a job may have started that the cap must count.
func (sl *slot) keep() {
	if sl != nil {
		sl.done = true
	}
}

// release gives the slot back if no request took it.
func (sl *slot) release(ctx context.Context) {
	if sl == nil || sl.done {
		return
	}
	sl.done = true
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := sl.s.slots.Free(rctx, sl.token, sl.dep, sl.tenant); err != nil {
		sl.s.log.WarnContext(ctx, "concurrency slot not freed; it frees itself when its reservation expires", "error", err)
	}
}
