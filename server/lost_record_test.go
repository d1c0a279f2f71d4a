package server_test

import (
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/state/redisstore"
)

// TestReadOfALostRecordPutsItBack pins that a request whose record Redis
// lost (restarted empty, evicted) is answered at once by the replica that
// remembers it, put back, not NOT_FOUND until the reconciler's next look for
// a loss (there is no reconciler here): its owner would take the job for
// gone. A replica that never knew the request still answers NOT_FOUND.
func TestReadOfALostRecordPutsItBack(t *testing.T) {
	srv, err := redistest.Find()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	prefix := redistest.Prefix(t)
	// Tenants' keys, which may not attach: a request unknown to the gateway
	// is not looked up at RunComfy for them.
	keys := withKeys(t)
	a := redisReplica(t, srv, prefix, keys)
	other := redisReplica(t, srv, prefix, keys, func(o *gatewayOptions) { o.sharedSim, o.sharedSimURL = a.sim, a.simURL })
	ctx := as(ctxT(t), keyA)
	sub, err := a.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"seed":1}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	// As an eviction would; a restart empty loses every key the same way.
	store, err := redisstore.New(srv.Client(t), redisstore.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, rid); err != nil {
		t.Fatal(err)
	}

	if _, err := other.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); status.Code(err) != codes.NotFound {
		t.Errorf("GetStatus on a replica that never knew it = %v, want NOT_FOUND", err)
	}
	got, err := a.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatalf("GetStatus of the lost request on the replica that submitted it: %v", err)
	}
	if r := got.GetRequest(); r.GetRequestId() != rid || r.GetStatus() != comfygatev1.Status_STATUS_QUEUED || r.GetEpoch() <= sub.GetRequest().GetEpoch() {
		t.Errorf("GetStatus = %v, want the request queued, put back in a later epoch than %d", r, sub.GetRequest().GetEpoch())
	}
	// Put back in the store: every replica reads it now.
	if _, err := other.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Errorf("GetStatus on the other replica once it was put back: %v", err)
	}
}
