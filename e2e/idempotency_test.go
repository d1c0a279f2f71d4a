package e2e

import (
	"sync"
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// TestIdempotentRetriesAcrossReplicas: a client retries one submit, with one
// idempotency key, many times at once on three replicas (real processes sharing
// Redis): RunComfy sees a single submit and every call answers the same
// request.
func TestIdempotentRetriesAcrossReplicas(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: queueTime, runTime: runTime})
	const calls = 30
	ids := make(chan string, calls)
	var wg sync.WaitGroup
	for i := range calls {
		g := c.gateways()[i%3]
		wg.Go(func() {
			resp, err := g.api.Submit(ctx, &comfygatev1.SubmitRequest{
				DeploymentId:   deployment,
				InputJson:      `{"prompt": "once only", "seed": 18446744073709551615}`,
				IdempotencyKey: "client-retry-7",
			})
			if err != nil {
				t.Errorf("submit on %s: %v", g.name, err)
				return
			}
			ids <- resp.GetRequest().GetRequestId()
		})
	}
	wg.Wait()
	close(ids)
	seen := map[string]int{}
	for id := range ids {
		seen[id]++
	}
	if len(seen) != 1 {
		t.Errorf("callers got %d different requests (%v), want one", len(seen), seen)
	}
	if got := c.submits.Load(); got != 1 {
		t.Errorf("RunComfy saw %d submits, want 1", got)
	}
	// The same key with another input is refused on any replica.
	_, err := c.b.api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: `{"prompt": "other"}`, IdempotencyKey: "client-retry-7"})
	if err == nil {
		t.Error("the same key with another input was accepted")
	}
	if got := c.submits.Load(); got != 1 {
		t.Errorf("RunComfy saw %d submits after the refused one, want 1", got)
	}
}
