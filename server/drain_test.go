package server_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// TestDrainFinishesInFlightCalls stops the server while a gRPC call and a REST
// call wait on a slow upstream: both must complete, the listeners must close, and
// Run must return without error.
func TestDrainFinishesInFlightCalls(t *testing.T) {
	g := startGateway(t)
	callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := g.client.Submit(callCtx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()

	g.sim.SetFaults(runcomfysim.Faults{Latency: 400 * time.Millisecond})
	grpcDone := make(chan error, 1)
	go func() {
		_, err := g.client.GetStatus(callCtx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
		grpcDone <- err
	}()
	restDone := make(chan int, 1)
	go func() {
		resp, err := http.Get(g.httpBase + "/v1/deployments/dep-1/requests/" + rid + "/result")
		if err != nil {
			restDone <- 0
			return
		}
		resp.Body.Close()
		restDone <- resp.StatusCode
	}()
	// Let both calls reach the upstream before stopping.
	deadline := time.Now().Add(5 * time.Second)
	for g.sim.Calls("status") < 1 || g.sim.Calls("result") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("calls never reached upstream")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}

	if err := <-grpcDone; err != nil {
		t.Errorf("in-flight gRPC call failed during drain: %v", err)
	}
	if code := <-restDone; code != http.StatusOK {
		t.Errorf("in-flight REST call: HTTP %d during drain", code)
	}
	if _, err := http.Get(g.httpBase + "/readyz"); err == nil {
		t.Error("HTTP listener still accepting after drain")
	}
}
