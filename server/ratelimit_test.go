package server_test

import (
	"net/http"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// TestSubmitRateIsPerTenant: a tenant past its burst gets RESOURCE_EXHAUSTED
// with a RetryInfo (REST 429) and RunComfy is not called; another tenant is not
// affected.
func TestSubmitRateIsPerTenant(t *testing.T) {
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) { o.submitRate, o.submitBurst = 0.5, 2 })
	ctx := ctxT(t)
	submit := func(key string) error {
		_, err := g.client.Submit(as(ctx, key), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
		return err
	}
	for i := range 2 {
		if err := submit(keyA); err != nil {
			t.Fatalf("submit %d within the burst: %v", i+1, err)
		}
	}
	err := submit(keyA)
	st := status.Convert(err)
	if got, want := st.Code(), codes.ResourceExhausted; got != want {
		t.Fatalf("third submit: %v, want %v", got, want)
	}
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("no positive RetryInfo: %v", st.Details())
	}
	if got := g.restAs(t, keyA, http.MethodPost, "/v1/deployments/dep-1/requests", `{}`); got != http.StatusTooManyRequests {
		t.Errorf("REST over the limit: %d, want 429", got)
	}
	if got := g.sim.Calls("submit"); got != 2 {
		t.Errorf("RunComfy saw %d submits, want 2", got)
	}
	if err := submit(keyB); err != nil {
		t.Errorf("tenant-b limited by tenant-a's submits: %v", err)
	}
}
