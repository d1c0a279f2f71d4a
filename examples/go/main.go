// Command go is the README's Go example: it submits a job to a comfygate
// gateway with the generated client (gen/comfygate/v1), follows it with
// WatchRequest to its end and prints the output URLs.
//
//	export COMFYGATE_ADDR=127.0.0.1:9090      # the gateway's gRPC address (the default)
//	export COMFYGATE_DEPLOYMENT=my-deployment # the RunComfy deployment id
//	export COMFYGATE_API_KEY=...              # when the gateway has --api-keys-file
//	go run ./examples/go examples/job.json
//
// The argument is the deployment's JSON input (RunComfy's submit body), sent
// byte for byte; examples/job.json when none is given. It prints the request
// id, one line per state change ("SEQ STATUS") and, once the request has
// succeeded, its output URLs, one a line. The exit status is 0 when the
// request succeeded, 1 when it failed, 2 when it was cancelled, 3 when a call
// failed and 4 for a bad configuration (nothing sent), as the comfygate
// command's.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

func main() {
	os.Exit(run())
}

func run() int {
	addr := os.Getenv("COMFYGATE_ADDR")
	if addr == "" {
		addr = "127.0.0.1:9090"
	}
	deployment := os.Getenv("COMFYGATE_DEPLOYMENT")
	if deployment == "" {
		fmt.Fprintln(os.Stderr, "set COMFYGATE_DEPLOYMENT to the deployment id")
		return 4
	}
	path := "examples/job.json"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	input, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if key := os.Getenv("COMFYGATE_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	// Plaintext, as `comfygate --simulate` serves; a gateway with --tls-cert
	// needs grpc.WithTransportCredentials(credentials.NewTLS(...)) instead.
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}
	defer cc.Close()
	client := comfygatev1.NewGatewayServiceClient(cc)

	submitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sub, err := client.Submit(submitCtx, &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: string(input)})
	if err != nil {
		return callFailed("submit", err)
	}
	requestID := sub.GetRequest().GetRequestId()
	fmt.Println("request", requestID)

	// The stream sends the current state, then every change in seq order, and
	// ends (io.EOF) after the final one.
	stream, err := client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: deployment, RequestId: requestID})
	if err != nil {
		return callFailed("watch", err)
	}
	var last *comfygatev1.RequestState
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// UNAVAILABLE with the ErrorInfo reason DRAINING: the gateway is
			// shutting down; a new WatchRequest with after_epoch and after_seq
			// set from the last state resumes on another replica.
			return callFailed("watch", err)
		}
		last = msg.GetRequest()
		fmt.Println(last.GetSeq(), last.GetStatus())
	}

	switch last.GetStatus() {
	case comfygatev1.Status_STATUS_SUCCEEDED:
		for _, u := range last.GetOutputUrls() {
			fmt.Println(u)
		}
		return 0
	case comfygatev1.Status_STATUS_CANCELLED:
		return 2
	default:
		fmt.Fprintf(os.Stderr, "the request failed: %s\n", last.GetError().GetMessage())
		return 1
	}
}

// callFailed prints a failed call's gRPC status and its ErrorInfo detail, if
// any (see the README's error table), and returns the exit status 3.
func callFailed(call string, err error) int {
	st := status.Convert(err)
	fmt.Fprintf(os.Stderr, "%s: %s: %s\n", call, st.Code(), st.Message())
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			fmt.Fprintf(os.Stderr, "  reason %s (domain %s), %v\n", info.GetReason(), info.GetDomain(), info.GetMetadata())
		}
	}
	return 3
}
