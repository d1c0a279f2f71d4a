package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/backoff"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// releaseTimeout bounds the write that settles a failed submit's idempotency
// key; it runs on a context of its own, since the submit's may be spent.
const releaseTimeout = 5 * time.Second

// releaseKey settles the idempotency key of a submit that failed. When no job
// can have started, the key is freed: a retry may try again. When one may
// have (sent, not answered), the key is kept, marked unanswered, for as long
// as a completed key: a retry with it is refused instead of starting a second
// paid job.
func (s *Service) releaseKey(ctx context.Context, scope, hash string, mayHaveStarted bool) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	var err error
	if mayHaveStarted {
		err = s.idem.Complete(rctx, scope, state.IdempotencyEntry{BodyHash: hash, Unanswered: true}, idempotencyTTL)
	} else {
		err = s.idem.Drop(rctx, scope)
	}
	if err != nil {
		s.log.WarnContext(ctx, "idempotency key of a failed submit not settled; it frees itself when its claim expires", "error", err)
	}
}

// recordRetryFor bounds how long a submit that started a job tries to settle
// its idempotency key and record the job while the store does not answer:
// only they name the job for a retry, and the webhooks and deadlines the
// submit asked for, which no callback or poll can bring back.
const recordRetryFor = 10 * time.Second

// untilAvailable runs f until it returns anything but an error wrapping
// state.ErrUnavailable, within recordRetryFor and ctx, and returns its last
// error.
func untilAvailable(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, recordRetryFor)
	defer cancel()
	pace := backoff.Exponential{Base: 100 * time.Millisecond, Max: time.Second}
	for attempt := 0; ; attempt++ {
		err := f(ctx)
		if !errors.Is(err, state.ErrUnavailable) {
			return err
		}
		t := time.NewTimer(pace.Delay(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// recordSubmitted records a job the submit started, trying again while the
// store is unavailable (untilAvailable).
func (s *Service) recordSubmitted(ctx context.Context, u state.Update) (rec *state.Record, err error) {
	err = untilAvailable(ctx, func(ctx context.Context) error {
		rec, _, err = s.tracker.Apply(ctx, u)
		return err
	})
	return rec, err
}

// recordReplay records, for a replay of a submit whose key names request rid,
// what that submit named beyond RunComfy's answer (its owner, webhooks and
// deadlines), as the first submit did once RunComfy answered. The first may
// not have: its replica can stop between completing the key and recording the
// request, when a callback may already have made the record without them
// (and its events then go to no endpoint), or nothing has. A record that
// holds them already is left as it is. It returns the record, or nil when it
// could not be recorded now or is not the caller's.
func (s *Service) recordReplay(ctx context.Context, dep, rid string, hooks []state.WebhookTarget, maxQueue, maxRun time.Duration) *state.Record {
	if rid == "" {
		return nil
	}
	now := s.now()
	rec, _, err := s.tracker.Apply(ctx, state.Update{
		RequestID: rid, DeploymentID: dep, Source: state.SourceSubmit, State: runcomfy.StateQueued,
		CreatedAt: now, ObservedAt: now, Owner: tenantOf(ctx),
		Webhooks: hooks, MaxQueue: maxQueue, MaxRun: maxRun,
	})
	if err != nil || rec == nil || !visible(ctx, rec, dep) {
		if err != nil {
			s.log.WarnContext(ctx, "replayed submit not recorded", "request_id", rid, "error", err)
		}
		return nil
	}
	return rec
}

// Submit validates the input, forwards it to RunComfy byte for byte, and records
// the new request.
func (s *Service) Submit(ctx context.Context, req *comfygatev1.SubmitRequest) (*comfygatev1.SubmitResponse, error) {
	dep := req.GetDeploymentId()
	if err := validateID("deployment_id", dep); err != nil {
		return nil, err
	}
	if err := validateInput(req.GetInputJson()); err != nil {
		return nil, err
	}
	key, err := idempotencyKey(ctx, req.GetIdempotencyKey())
	if err != nil {
		return nil, err
	}
	hooks, named, err := s.submitWebhooks(ctx, req)
	if err != nil {
		return nil, err
	}
	policy := s.policy(dep)
	maxQueue, maxRun, deadlines, err := s.submitDeadlines(ctx, req, policy)
	if err != nil {
		return nil, err
	}
	// What the submit names beyond its body (its webhook, its deadlines) is
	// part of its idempotency fingerprint.
	named += deadlines
	var scope string
	if key != "" {
		var done *comfygatev1.SubmitResponse
		scope, done, err = s.claimIdempotency(ctx, key, dep, req.GetInputJson(), named)
		if err != nil {
			return nil, err
		}
		if done != nil {
			if rec := s.recordReplay(ctx, dep, done.GetRequest().GetRequestId(), hooks, maxQueue, maxRun); rec != nil {
				done = &comfygatev1.SubmitResponse{Request: recordToProto(rec, s.urls)}
			}
			// A replay waits as the first submit would have.
			return s.waitPreferred(ctx, done), nil
		}
	}
	// Only submits that reach RunComfy count: a replay of a known key is free.
	if err := s.limits.submit(ctx, tenantOf(ctx)); err != nil {
		if scope != "" {
			_ = s.idem.Drop(ctx, scope)
		}
		return nil, err
	}
	if s.backend != nil && (scope == "" || !claimProves(s.backend)) {
		if err := s.backend.Ping(ctx); err != nil {
			if scope != "" {
				_ = s.idem.Drop(context.WithoutCancel(ctx), scope)
			}
			return nil, fmt.Errorf("submit to deployment %s refused before calling RunComfy: %w", dep, err)
		}
	}
	// Counted before RunComfy is called, and given back unless a request
	// started (the deferred release is a no-op once bound).
	sl, err := s.reserveSlot(ctx, dep, policy)
	if err != nil {
		if scope != "" {
			_ = s.idem.Drop(context.WithoutCancel(ctx), scope)
		}
		return nil, err
	}
	defer sl.release(ctx)
	input, err := s.resolveUploads(ctx, req.GetInputJson())
	if err != nil {
		if scope != "" {
			_ = s.idem.Drop(context.WithoutCancel(ctx), scope)
		}
		return nil, fmt.Errorf("submit to deployment %s not sent: %w", dep, err)
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up (its deadline, or gone) while the submit
		// waited (for room in the bytes in flight, for the store): nothing
		// has been sent, and nothing is, since its answer would reach no one
		// and a retry would start the job again.
		if scope != "" {
			_ = s.idem.Drop(context.WithoutCancel(ctx), scope)
		}
		return nil, fmt.Errorf("submit to deployment %s not sent: %w", dep, err)
	}
	var hash string
	stopSending := func() {}
	if scope != "" {
		hash = bodyHash(dep, req.GetInputJson(), named)
		stop, err := s.sendingKey(ctx, scope, hash)
		if err != nil {
			_ = s.idem.Drop(context.WithoutCancel(ctx), scope)
			return nil, fmt.Errorf("submit to deployment %s not sent: %w", dep, err)
		}
		// Stopped before the key is settled below, so that no late word
		// undoes the settlement; deferred too, for the paths in between.
		defer stop()
		stopSending = stop
	}
	var opts runcomfy.SubmitOptions
	if s.callbacks != nil {
		opts = runcomfy.SubmitOptions{WebhookURL: s.callbacks.CallbackURL(dep, tenantOf(ctx)), IntermediateStatus: true}
	}
	// Once the submit is on the wire RunComfy may start a paid job whatever the
	// caller does next, so a caller hanging up must not abandon the answer that
	// names the job, nor its record: both run on their own deadline.
	upCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.submitTimeout)
	defer cancel()
	// The input's bytes go as they are: a copy would hold a large input twice.
	resp, err := s.upstream.Submit(upCtx, dep, json.RawMessage(bytesOf(input)), opts)
	if err != nil {
		var apiErr *runcomfy.APIError
		if !errors.As(err, &apiErr) && upCtx.Err() != nil {
			// The submit's own deadline ended the call: it was sent, and
			// nothing came back.
			err = &runcomfy.APIError{Op: "submit", Err: err}
			errors.As(err, &apiErr)
		}
		mayHaveStarted := apiErr != nil && submitMayHaveStarted(apiErr)
		if mayHaveStarted {
			sl.keep()
		}
		if scope != "" {
			stopSending()
			s.releaseKey(ctx, scope, hash, mayHaveStarted)
		}
		return nil, fmt.Errorf("submit to deployment %s: %w", dep, err)
	}
	answered := s.now()
	// Settling the key and recording the job share one recordRetryFor: a
	// store that does not answer holds the caller that long in all, and the
	// job is recorded later (Defer).
	settleCtx, cancelSettle := context.WithTimeout(upCtx, recordRetryFor)
	defer cancelSettle()
	if scope != "" {
		stopSending()
		e := state.IdempotencyEntry{BodyHash: hash, RequestID: resp.RequestID}
		if err := untilAvailable(settleCtx, func(ctx context.Context) error {
			return s.idem.Complete(ctx, scope, e, idempotencyTTL)
		}); err != nil {
			s.log.ErrorContext(ctx, "idempotency key not completed", "request_id", resp.RequestID, "error", err)
		}
	}
	// A callback may have recorded the request already (RunComfy can call back
	// before answering): then this update is a duplicate and the record as the
	// callback left it is returned.
	submitted := state.Update{
		RequestID:    resp.RequestID,
		DeploymentID: dep,
		Source:       state.SourceSubmit,
		State:        runcomfy.StateQueued,
		CreatedAt:    answered,
		ObservedAt:   answered,
		Owner:        tenantOf(ctx),
		Webhooks:     hooks,
		MaxQueue:     maxQueue,
		MaxRun:       maxRun,
	}
	rec, err := s.recordSubmitted(settleCtx, submitted)
	if errors.Is(err, state.ErrUnavailable) && !s.tracker.Defer(submitted) {
		s.log.ErrorContext(ctx, "submitted request not kept to record later: too many waiting", "request_id", resp.RequestID)
	}
	if err == nil && rec != nil {
		// The slot is the request's until it ends; a record that ended
		// already (its callbacks came first) frees it.
		sl.bind(ctx, resp.RequestID)
	}
	if err == nil && rec != nil && !visible(ctx, rec, dep) {
		// Recorded as another tenant's (it cannot happen to a new id; the
		// caller still learns only what it submitted).
		rec = nil
	}
	if err != nil || rec == nil {
		// The job exists and is paid for: the caller must learn its id even if
		// it could not be recorded (it is recorded once the store answers
		// again: Defer).
		s.log.ErrorContext(ctx, "submitted request not recorded", "request_id", resp.RequestID, "deployment_id", dep, "error", err)
		return &comfygatev1.SubmitResponse{Request: &comfygatev1.RequestState{
			RequestId:    resp.RequestID,
			DeploymentId: dep,
			Status:       comfygatev1.Status_STATUS_QUEUED,
			CreatedAt:    timestamp(answered), // when RunComfy answered, as the record will say
		}}, nil
	}
	return s.waitPreferred(ctx, &comfygatev1.SubmitResponse{Request: recordToProto(rec, s.urls)}), nil
}
