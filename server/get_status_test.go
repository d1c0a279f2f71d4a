package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

func TestStatusFallsBackToTheRecordWhenUpstreamFails(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{"status": {HTTPStatus: 503}}})
	st, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: sub.GetRequest().GetRequestId()})
	if err != nil {
		t.Fatalf("GetStatus of a recorded request while upstream fails: %v", err)
	}
	if got, want := st.GetRequest().GetSeq(), sub.GetRequest().GetSeq(); got != want || got == 0 {
		t.Errorf("seq = %d, want the recorded %d", got, want)
	}
}

func TestReadsAreRetried(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{"status": {HTTPStatus: 503, Times: 2}}})
	if _, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: sub.GetRequest().GetRequestId()}); err != nil {
		t.Fatalf("GetStatus after two 503s: %v", err)
	}
	if got, want := g.sim.Calls("status"), 3; got != want {
		t.Errorf("upstream status calls = %d, want %d", got, want)
	}
}

func TestSlowUpstreamHonoursDeadline(t *testing.T) {
	g := startGateway(t)
	g.sim.SetFaults(runcomfysim.Faults{Latency: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: "r-1"})
	if got, want := status.Code(err), codes.DeadlineExceeded; got != want {
		t.Fatalf("code = %v, want %v", got, want)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("call took %v: the deadline did not reach upstream", elapsed)
	}
}
