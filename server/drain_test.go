package server_test

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// TestDrainEndsWatchStreamsWithTheirLastSeq: when the server drains, an open
// watch ends at once with UNAVAILABLE naming its last seq and status (gRPC: an
// ErrorInfo; REST: a final error line), so the client resumes elsewhere with
// after_seq and after_status, and the drain does not wait for the stream.
func TestDrainEndsWatchStreamsWithTheirLastSeq(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	stream, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(g.httpBase + "/v1/deployments/dep-1/requests/" + rid + ":watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewReader(resp.Body)
	if _, err := lines.ReadString('\n'); err != nil { // the current state
		t.Fatal(err)
	}

	start := time.Now()
	if err := g.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("drain took %v: it waited for the open streams", took)
	}
	_, err = stream.Recv()
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", err)
	}
	lastSeq, lastStatus := "", ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			lastSeq, lastStatus = info.GetMetadata()["last_seq"], info.GetMetadata()["last_status"]
		}
	}
	if want := strconv.FormatInt(first.GetRequest().GetSeq(), 10); lastSeq != want {
		t.Errorf("last_seq = %q, want %q", lastSeq, want)
	}
	if want := first.GetRequest().GetStatus().String(); lastStatus != want {
		t.Errorf("last_status = %q, want %q", lastStatus, want)
	}
	last, _ := lines.ReadString('\n')
	if !strings.Contains(last, `"code":14`) || !strings.Contains(last, "after_seq=1 after_status=STATUS_QUEUED") {
		t.Errorf("REST watch ended with %q, want an UNAVAILABLE line naming after_seq and after_status", last)
	}
}
