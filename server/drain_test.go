package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/server"
)

// TestDrainFinishesInFlightCalls stops the server while a gRPC call and a REST
// call wait on a slow upstream: both must complete, readiness must turn off, and
// Run must return without error.
func TestDrainFinishesInFlightCalls(t *testing.T) {
	sim := runcomfysim.New(runcomfysim.Options{Token: simToken, Manual: true})
	simSrv := httptest.NewServer(sim.Handler())
	defer func() {
		simSrv.Close()
		sim.Close()
	}()
	up, err := runcomfy.New(runcomfy.Config{BaseURL: simSrv.URL, Token: simToken})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, err := server.NewService(server.ServiceConfig{Upstream: up, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: log, ShutdownTimeout: 5 * time.Second}, svc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := comfygatev1.NewGatewayServiceClient(conn)
	callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := client.Submit(callCtx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()

	const latency = 400 * time.Millisecond
	sim.SetFaults(runcomfysim.Faults{Latency: latency})
	grpcDone := make(chan error, 1)
	go func() {
		_, err := client.GetStatus(callCtx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
		grpcDone <- err
	}()
	restDone := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + srv.HTTPAddr() + "/v1/deployments/dep-1/requests/" + rid + "/result")
		if err != nil {
			restDone <- 0
			return
		}
		resp.Body.Close()
		restDone <- resp.StatusCode
	}()
	// Let both calls reach the upstream before stopping.
	deadline := time.Now().Add(5 * time.Second)
	for sim.Calls("status") < 1 || sim.Calls("result") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("calls never reached upstream")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()

	if err := <-grpcDone; err != nil {
		t.Errorf("in-flight gRPC call failed during drain: %v", err)
	}
	if code := <-restDone; code != http.StatusOK {
		t.Errorf("in-flight REST call: HTTP %d during drain", code)
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := http.Get("http://" + srv.HTTPAddr() + "/readyz"); err == nil {
		t.Error("HTTP listener still accepting after drain")
	}
}
