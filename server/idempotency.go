package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/metadata"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/backoff"
	"github.com/comfygate/comfygate/state"
)

// idempotencyTTL is how long an idempotency key stands for its first submit.
const idempotencyTTL = 24 * time.Hour

// idempotencyWait bounds how long a retry waits for the same key's submit
// running elsewhere (another replica, a concurrent call) to finish.
const idempotencyWait = 60 * time.Second

// claimLease is how long an idempotency claim stands for a submit that is not
// yet sent, and how long a sent one's sender is taken for alive after it last
// said so (sendingKey).
const claimLease = 10 * time.Second

// claimLeaseSkew is how far two replicas' clocks may differ: a sent claim is
// taken for abandoned only this long after the Until its sender wrote.
const claimLeaseSkew = 2 * time.Second

// sendingKey marks the claimed key sent, before the submit goes to RunComfy,
// and keeps saying its sender is alive until stop is called (which waits for
// the last word): a retry waits for a live sender's answer, and is refused
// once the sender is gone, since a job may have started. An error means the
// key could not be marked: the submit must not be sent.
func (s *Service) sendingKey(ctx context.Context, scope, hash string) (stop func(), err error) {
	mark := func(ctx context.Context) error {
		e := state.IdempotencyEntry{BodyHash: hash, Sent: true, Until: s.now().Add(claimLease)}
		return s.idem.Complete(ctx, scope, e, idempotencyTTL)
	}
	if err := mark(ctx); err != nil {
		return nil, fmt.Errorf("idempotency key: %w", err)
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(claimLease / 3)
		defer tick.Stop()
		for {
			select {
			case <-hctx.Done():
				return
			case <-tick.C:
				_ = mark(hctx) // a missed word is made up by the next
			}
		}
	}()
	return func() { cancel(); <-done }, nil
}

// errIdempotencyMismatch: the key was first used for another submit.
var errIdempotencyMismatch = errors.New("idempotency key was already used for another submit: its deployment, input, webhooks or deadlines differ from this one's")

// errIdempotencyUnanswered: the key's first submit reached RunComfy and got no
// answer naming a request; a job may exist, so the submit is not sent again.
var errIdempotencyUnanswered = errors.New("the submit with this idempotency key reached RunComfy and got no answer, so a job may have started and be billed; " +
	"it is not sent again: check the deployment's requests on RunComfy, and submit with a new key to start another job")

// idempotencyKey is the key from the request, or else from the
// Idempotency-Key header the REST gateway forwards as metadata.
func idempotencyKey(ctx context.Context, field string) (string, error) {
	key := field
	if key == "" {
		switch v := metadata.ValueFromIncomingContext(ctx, "idempotency-key"); {
		case len(v) > 1:
			return "", &fieldError{field: "idempotency-key", reason: "must be given once"}
		case len(v) == 1:
			key = v[0]
		}
	}
	return key, checkIdempotencyKey("idempotency_key", key)
}

// checkIdempotencyKey refuses a key the gateway cannot store and carry as it
// is: longer than 255 bytes, or anything but printable ASCII.
func checkIdempotencyKey(field, key string) error {
	if len(key) > 255 {
		return &fieldError{field: field, reason: "is longer than 255 characters"}
	}
	if !printableASCII(key) {
		return &fieldError{field: field, reason: "may contain only printable ASCII"}
	}
	return nil
}

// bodyHash identifies a submit: its deployment, its exact input and the
// webhook it names (named, "" for none: a submit naming none hashes as
// before webhooks existed), so a retry that names another webhook is not
// taken for the same submit.
func bodyHash(dep, input, named string) string {
	h := sha256.New()
	h.Write([]byte(dep))
	h.Write([]byte{0})
	h.Write(bytesOf(input)) // read only: no copy of a large input
	if named != "" {
		h.Write([]byte("\x00webhook\x00" + named))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// claimIdempotency claims key for this tenant and submit. It returns the claim's
// scope when the caller must submit, or the response of the submit the key
// already stands for (waiting for it when still under way).
func (s *Service) claimIdempotency(ctx context.Context, key, dep, input, named string) (string, *comfygatev1.SubmitResponse, error) {
	if s.idem == nil {
		return "", nil, errors.New("idempotency keys are not configured")
	}
	// Scoped per tenant; hashed, so the key (client text) never becomes a
	// storage key as it is.
	sum := sha256.Sum256([]byte(tenantOf(ctx) + "\x00" + key))
	scope := hex.EncodeToString(sum[:])
	want := state.IdempotencyEntry{BodyHash: bodyHash(dep, input, named)}
	wctx, cancel := context.WithTimeout(ctx, idempotencyWait)
	defer cancel()
	pace := backoff.Exponential{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond}
	for attempt := 0; ; attempt++ {
		// A claim lives claimLease until its submit is sent (sendingKey): a
		// claimant that dies first, or whose claim landed after it gave up
		// on the store's answer, holds retries back for that long at most.
		got, claimed, err := s.idem.Claim(wctx, scope, want, claimLease)
		switch {
		case err != nil:
			return "", nil, fmt.Errorf("idempotency key: %w", err)
		case claimed:
			return scope, nil, nil
		case got.BodyHash != want.BodyHash:
			return "", nil, errIdempotencyMismatch
		case got.Unanswered, got.Sent && s.now().After(got.Until.Add(claimLeaseSkew)):
			return "", nil, errIdempotencyUnanswered
		case got.RequestID != "":
			rec, err := s.tracker.Lookup(ctx, got.RequestID)
			if err != nil {
				// Recorded long ago and expired, or not recorded: the id is
				// what the caller needs.
				return "", &comfygatev1.SubmitResponse{Request: &comfygatev1.RequestState{
					RequestId: got.RequestID, DeploymentId: dep,
				}}, nil
			}
			return "", &comfygatev1.SubmitResponse{Request: recordToProto(rec, s.urls)}, nil
		}
		// The first submit with this key is under way: wait for its answer.
		t := time.NewTimer(pace.Delay(attempt))
		select {
		case <-wctx.Done():
			t.Stop()
			return "", nil, fmt.Errorf("waiting for the submit with the same idempotency key: %w", wctx.Err())
		case <-t.C:
		}
	}
}
