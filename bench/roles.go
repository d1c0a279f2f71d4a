package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/bareproxy"
	"github.com/comfygate/comfygate/server"
)

// serveRole runs the harness as one of the references, in a process of its
// own like the gateway it is compared with, until ctx ends. upstream is the
// simulator's URL, for bare-proxy, or Redis's address, for bare-ingest.
func serveRole(ctx context.Context, role, addr, upstream string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	switch role {
	case "noop-http":
		// What any Go HTTP service pays per request: read the body, answer.
		return serveHTTP(ctx, lis, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"outcome":"applied"}`)
		}))
	case "bare-ingest":
		rdb := redis.NewClient(&redis.Options{Addr: upstream})
		defer rdb.Close()
		return serveHTTP(ctx, lis, bareIngest(rdb))
	case "bare-grpc":
		return serveGRPC(ctx, lis, bareWatcher{})
	case "bare-proxy":
		p := bareproxy.New(upstream, benchToken)
		defer p.Close()
		return serveGRPC(ctx, lis, p)
	default:
		lis.Close()
		return fmt.Errorf("unknown role %q", role)
	}
}

// bareWatcher answers WatchRequest with one state, as the gateway's snapshot,
// then only waits; and Submit at once, with no upstream call: the floor of a
// gRPC round trip on this machine.
type bareWatcher struct {
	comfygatev1.UnimplementedGatewayServiceServer
}

func (bareWatcher) Submit(_ context.Context, req *comfygatev1.SubmitRequest) (*comfygatev1.SubmitResponse, error) {
	return &comfygatev1.SubmitResponse{Request: &comfygatev1.RequestState{
		RequestId: "bare", DeploymentId: req.GetDeploymentId(), Status: comfygatev1.Status_STATUS_QUEUED, Seq: 1,
	}}, nil
}

func (bareWatcher) WatchRequest(req *comfygatev1.WatchRequestRequest, stream comfygatev1.GatewayService_WatchRequestServer) error {
	err := stream.Send(&comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{
		RequestId: req.GetRequestId(), DeploymentId: req.GetDeploymentId(),
		Status: comfygatev1.Status_STATUS_QUEUED, UpstreamStatus: "in_queue", Seq: 1,
	}})
	if err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// serveHTTP serves h on lis until ctx ends.
func serveHTTP(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: h}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveGRPC serves the gateway's service as impl on lis until ctx ends,
// with the gateway's own limit on streams per connection, so that a client
// spreads its streams over connections the same way.
func serveGRPC(ctx context.Context, lis net.Listener, impl comfygatev1.GatewayServiceServer) error {
	srv := grpc.NewServer(grpc.MaxConcurrentStreams(server.DefaultMaxConcurrentStreams))
	comfygatev1.RegisterGatewayServiceServer(srv, impl)
	stop := context.AfterFunc(ctx, srv.Stop)
	defer stop()
	return srv.Serve(lis)
}

// bareIngest is the least a callback receiver that keeps its state in Redis
// does: decode the body, then write the request's record and publish it in
// one round trip (a pipelined HSET and PUBLISH), and answer. No token, no
// seq or order check, no merge, no poll schedule, index, usage or log.
func bareIngest(rdb *redis.Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var cb struct {
			RequestID string `json:"request_id"`
			Status    string `json:"status"`
		}
		if err := json.Unmarshal(body, &cb); err != nil || cb.RequestID == "" {
			http.Error(w, "not a callback", http.StatusBadRequest)
			return
		}
		pipe := rdb.Pipeline()
		pipe.HSet(r.Context(), "bare:req:"+cb.RequestID, "status", cb.Status, "data", body)
		pipe.Publish(r.Context(), "bare:req:"+cb.RequestID, body)
		if _, err := pipe.Exec(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"outcome":"applied"}`)
	})
}

// startRole starts the harness as a reference server and waits for it to
// listen; args go to the role's command line after its own.
func (e *env) startRole(ctx context.Context, role string, args ...string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc(e.dir, role, e.selfBin, append([]string{"-role", role, "-addr", addr}, args...))
	if err != nil {
		return nil, "", err
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return p, addr, nil
		}
		if err := p.exited(); err != nil {
			return nil, "", err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, "", fmt.Errorf("%s did not listen on %s", role, addr)
		}
	}
}
