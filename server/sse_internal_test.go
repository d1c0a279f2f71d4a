package server

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// scriptedWatch is a GatewayService whose WatchRequest a test scripts, so the
// events handler's framing can be driven through moments the real service
// reaches only with timing luck: a long silence, an error at a chosen point.
type scriptedWatch struct {
	comfygatev1.UnimplementedGatewayServiceServer
	watch func(comfygatev1.GatewayService_WatchRequestServer) error
}

func (s *scriptedWatch) WatchRequest(_ *comfygatev1.WatchRequestRequest, stream comfygatev1.GatewayService_WatchRequestServer) error {
	return s.watch(stream)
}

// serveEvents runs the events handler, with a short keep-alive, in front of a
// real gRPC server running script, and returns its base URL.
func serveEvents(t *testing.T, keepAlive time.Duration, script func(comfygatev1.GatewayService_WatchRequestServer) error) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	comfygatev1.RegisterGatewayServiceServer(gs, &scriptedWatch{watch: script})
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h := newEventsHandler(comfygatev1.NewGatewayServiceClient(conn), slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.keepAlive = keepAlive
	mux := http.NewServeMux()
	mux.Handle(eventsRoute, h)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		conn.Close()
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("gRPC Serve: %v", err)
		}
	})
	return srv.URL + "/v1/deployments/d/requests/r/events"
}

func stateAt(seq int64) *comfygatev1.WatchRequestResponse {
	return &comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{RequestId: "r", DeploymentId: "d", Seq: seq}}
}

// TestEventsFraming drives the handler through each way a stream can go and
// checks the status and the exact lines the client receives (the data of
// state events aside, checked end to end in sse_test.go).
func TestEventsFraming(t *testing.T) {
	const keepAlive = 30 * time.Millisecond
	tests := []struct {
		name       string
		script     func(comfygatev1.GatewayService_WatchRequestServer) error
		wantStatus int
		want       []string // the body's lines, "data: {...state...}" shortened to "data: state"
	}{
		{
			name: "silence, then a state: keep-alives open the stream first",
			script: func(s comfygatev1.GatewayService_WatchRequestServer) error {
				time.Sleep(10 * keepAlive)
				return s.Send(stateAt(4))
			},
			wantStatus: http.StatusOK,
			want:       []string{": keepalive", ": keepalive", "id: 4", "event: state", "data: state", "event: end", `data: {"last_seq":"4"}`},
		},
		{
			name: "an error after the first event",
			script: func(s comfygatev1.GatewayService_WatchRequestServer) error {
				if err := s.Send(stateAt(1)); err != nil {
					return err
				}
				return status.Error(codes.Internal, "internal error")
			},
			wantStatus: http.StatusOK,
			want:       []string{"id: 1", "event: state", "data: state", "event: error", `data: {"code":13, "message":"internal error", "details":[]}`},
		},
		{
			name: "refused before the first event",
			script: func(comfygatev1.GatewayService_WatchRequestServer) error {
				return status.Error(codes.Unavailable, "backend down")
			},
			wantStatus: http.StatusServiceUnavailable,
			want:       []string{`{"code":14, "message":"backend down", "details":[]}`},
		},
		{
			name: "drained before the first event: a stream, so EventSource resumes",
			script: func(s comfygatev1.GatewayService_WatchRequestServer) error {
				return toStatus(s.Context(), slog.New(slog.DiscardHandler), "", &drainingError{last: state.Position{Epoch: 3, Seq: 7}})
			},
			wantStatus: http.StatusOK,
			want: []string{"event: error", `data: {"code":14, "message":"this replica is shutting down; reconnect with after_epoch=3 after_seq=7", ` +
				`"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo", "reason":"DRAINING", "domain":"comfygate", "metadata":{"last_epoch":"3", "last_seq":"7"}}]}`},
		},
		{
			name: "drained after a state: its status is named too",
			script: func(s comfygatev1.GatewayService_WatchRequestServer) error {
				return toStatus(s.Context(), slog.New(slog.DiscardHandler), "", &drainingError{last: state.Position{Epoch: 3, Seq: 7}, status: comfygatev1.Status_STATUS_RUNNING})
			},
			wantStatus: http.StatusOK,
			want: []string{"event: error", `data: {"code":14, "message":"this replica is shutting down; reconnect with after_epoch=3 after_seq=7 after_status=STATUS_RUNNING", ` +
				`"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo", "reason":"DRAINING", "domain":"comfygate", "metadata":{"last_epoch":"3", "last_seq":"7", "last_status":"STATUS_RUNNING"}}]}`},
		},
		{
			name:       "ended with nothing after the resume point",
			script:     func(comfygatev1.GatewayService_WatchRequestServer) error { return nil },
			wantStatus: http.StatusNoContent,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := serveEvents(t, keepAlive, tt.script)
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("HTTP %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			var got []string
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				line := sc.Text()
				switch {
				case line == "":
					continue
				case strings.HasPrefix(line, `data: {"request_id"`):
					line = "data: state"
				}
				// protojson may space its output differently from build to build.
				got = append(got, strings.ReplaceAll(line, ", ", ","))
			}
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = strings.ReplaceAll(w, ", ", ",")
			}
			// Keep-alives depend on timing: require at least the ones wanted.
			for len(got) > len(want) && got[0] == ": keepalive" && len(want) > 0 && want[0] == ": keepalive" {
				got = got[1:]
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("body:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestEventsClientLeaving: a client that goes away ends the watch behind it,
// also while the stream is silent.
func TestEventsClientLeaving(t *testing.T) {
	watchEnded := make(chan struct{})
	url := serveEvents(t, 10*time.Millisecond, func(s comfygatev1.GatewayService_WatchRequestServer) error {
		<-s.Context().Done()
		close(watchEnded)
		return s.Context().Err()
	})
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != ": keepalive\n" {
		t.Fatalf("first line %q, %v; want a keep-alive", line, err)
	}
	cancel()
	select {
	case <-watchEnded:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch went on after its client left")
	}
}
