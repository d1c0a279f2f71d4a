package server_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/server"
)

// panickingService panics in Submit and answers GetStatus.
type panickingService struct {
	comfygatev1.UnimplementedGatewayServiceServer
}

func (panickingService) Submit(context.Context, *comfygatev1.SubmitRequest) (*comfygatev1.SubmitResponse, error) {
	panic("submit exploded")
}

func (panickingService) GetStatus(_ context.Context, req *comfygatev1.GetStatusRequest) (*comfygatev1.GetStatusResponse, error) {
	return &comfygatev1.GetStatusResponse{Request: &comfygatev1.RequestState{RequestId: req.GetRequestId()}}, nil
}

// TestUnaryPanicIsInternal pins that a panic in a unary handler answers
// INTERNAL with no detail, logs the panic with the handler's stack, and
// leaves the server serving, with many calls panicking at once.
func TestUnaryPanicIsInternal(t *testing.T) {
	logs := &syncBuffer{}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	}, panickingService{})
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, srv)
	ctx := ctxT(t)
	cc, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := comfygatev1.NewGatewayServiceClient(cc)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			_, err := c.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{}`})
			if status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error" {
				t.Errorf("Submit that panics = %v; want INTERNAL, internal error", err)
			}
		})
	}
	wg.Wait()
	r, err := c.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "d", RequestId: "r"})
	if err != nil || r.GetRequest().GetRequestId() != "r" {
		t.Fatalf("GetStatus after the panics = %v, %v; want the server still serving", r, err)
	}
	if l := logs.String(); !strings.Contains(l, "submit exploded") || !strings.Contains(l, "panickingService.Submit") {
		t.Errorf("the log lacks the panic or the handler's stack:\n%.2000s", l)
	}
}
