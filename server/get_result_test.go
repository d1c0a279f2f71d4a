package server_test

import (
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

func TestFailedResultCarriesError(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	g.sim.SetFaults(runcomfysim.Faults{ErrorArray: true})
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	if err := g.sim.Finish(rid, runcomfysim.Outcome{State: "failed"}); err != nil {
		t.Fatal(err)
	}
	res, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.GetRequest().GetStatus(), comfygatev1.Status_STATUS_FAILED; got != want {
		t.Fatalf("status = %v, want %v", got, want)
	}
	if e := res.GetRequest().GetError(); e == nil || e.GetMessage() == "" {
		t.Errorf("error = %v, want a message", e)
	}
}
