// Package bareproxy is the least a gRPC proxy in front of RunComfy does, the
// reference the gateway's Submit is measured against: in the bench harness,
// as a process of its own, and in BenchmarkSubmit, in the benchmark's.
package bareproxy

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// Server answers Submit by posting the submit's inputs upstream (keep-alive
// HTTP/1.1, as a direct caller does) and returning the request id it gets,
// with no authentication, record, idempotency, limits, logs or metrics. What
// it adds to the direct call is the floor of what any gRPC gateway adds on
// the same machine.
type Server struct {
	comfygatev1.UnimplementedGatewayServiceServer
	upstream, token string
	client          *http.Client
}

// New returns a proxy to the RunComfy API at upstream (its base URL), calling
// it with token.
func New(upstream, token string) *Server {
	return &Server{upstream: upstream, token: token, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
}

// Close closes the proxy's idle upstream connections.
func (p *Server) Close() { p.client.CloseIdleConnections() }

// Submit posts the submit upstream and answers with the request it started.
func (p *Server) Submit(ctx context.Context, req *comfygatev1.SubmitRequest) (*comfygatev1.SubmitResponse, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, p.upstream+"/prod/v1/deployments/"+req.GetDeploymentId()+"/inference",
		strings.NewReader(req.GetInputJson()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	hreq.Header.Set("Authorization", "Bearer "+p.token)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(hreq)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	defer resp.Body.Close()
	var answer struct {
		RequestID string `json:"request_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || resp.StatusCode != http.StatusOK {
		return nil, status.Errorf(codes.Unavailable, "upstream answered %s (%v)", resp.Status, err)
	}
	return &comfygatev1.SubmitResponse{Request: &comfygatev1.RequestState{
		RequestId: answer.RequestID, DeploymentId: req.GetDeploymentId(), Status: comfygatev1.Status_STATUS_QUEUED, Seq: 1,
	}}, nil
}
