package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
)

// TestSubmitWithoutAnAnswerSaysAJobMayExist: a submit RunComfy received but
// did not answer may have started a paid job, and the error says so (message
// and ErrorInfo); one that never reached RunComfy (connection refused) does
// not. The gateway's own rejected token keeps its upstream code.
func TestSubmitWithoutAnAnswerSaysAJobMayExist(t *testing.T) {
	hang := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-hang // received, never answered
	}))
	defer hung.Close()
	defer close(hang)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		c, _, err := http.NewResponseController(w).Hijack() // received, then the connection breaks
		if err == nil {
			c.Close()
		}
	}))
	defer broken.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + closed.Addr().String()
	closed.Close()
	rejected := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error_code":401001,"error_message":"Invalid token"}`)
	}))
	defer rejected.Close()

	tests := []struct {
		name       string
		url        string
		wantCode   codes.Code
		wantReason string
		mayExist   bool
	}{
		{name: "sent, no answer in time", url: hung.URL, wantCode: codes.DeadlineExceeded, wantReason: "UPSTREAM_NO_ANSWER", mayExist: true},
		{name: "sent, connection broken", url: broken.URL, wantCode: codes.Unavailable, wantReason: "UPSTREAM_NO_ANSWER", mayExist: true},
		{name: "connection refused", url: refused, wantCode: codes.Unavailable, wantReason: "UPSTREAM_UNAVAILABLE"},
		{name: "gateway token rejected", url: rejected.URL, wantCode: codes.Internal, wantReason: "UPSTREAM_401001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, err := runcomfy.New(runcomfy.Config{BaseURL: tt.url, Token: "secret-token-0123456789", Timeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			_, err = up.Submit(ctx, "dep", []byte(`{}`), runcomfy.SubmitOptions{})
			if err == nil {
				t.Fatal("submit succeeded")
			}
			st := status.Convert(toStatus(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), comfygatev1.GatewayService_Submit_FullMethodName, err))
			if st.Code() != tt.wantCode {
				t.Errorf("code %v (%s), want %v", st.Code(), st.Message(), tt.wantCode)
			}
			var info *errdetails.ErrorInfo
			for _, d := range st.Details() {
				if i, ok := d.(*errdetails.ErrorInfo); ok {
					info = i
				}
			}
			if info == nil {
				t.Fatalf("no ErrorInfo in %v", st.Details())
			}
			if info.GetReason() != tt.wantReason {
				t.Errorf("reason %q, want %q", info.GetReason(), tt.wantReason)
			}
			if got := info.GetMetadata()["job_may_exist"] == "true"; got != tt.mayExist {
				t.Errorf("job_may_exist %v, want %v (message %q)", got, tt.mayExist, st.Message())
			}
			for _, text := range []string{st.Message(), info.String()} {
				if strings.Contains(text, "secret-token") {
					t.Errorf("the gateway's token shows: %q", text)
				}
			}
		})
	}
}

// TestSubmitMayHaveStarted: which failed submits may have started a job.
// RunComfy's own error answers (an error code, or an error status of its
// own) say that none started; a failure after the submit was sent, without
// a usable answer, does not.
func TestSubmitMayHaveStarted(t *testing.T) {
	broken := errors.New("unexpected EOF")
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	tests := []struct {
		name string
		err  *runcomfy.APIError
		want bool
	}{
		{"connection refused", &runcomfy.APIError{Err: refused}, false},
		{"connection broken before the answer", &runcomfy.APIError{Err: broken}, true},
		{"timed out", &runcomfy.APIError{Err: context.DeadlineExceeded}, true},
		{"success broken off mid-body", &runcomfy.APIError{HTTPStatus: 200, Err: broken}, true},
		{"error answer broken off mid-body", &runcomfy.APIError{HTTPStatus: 422, Err: broken}, false},
		{"success naming no request", &runcomfy.APIError{HTTPStatus: 200, Message: "answer carries no request_id"}, true},
		{"HTTP 200 with an error code", &runcomfy.APIError{HTTPStatus: 200, Code: 10002}, false},
		{"proxy HTTP 502", &runcomfy.APIError{HTTPStatus: 502}, true},
		{"proxy HTTP 504", &runcomfy.APIError{HTTPStatus: 504}, true},
		{"HTTP 504 with RunComfy's code", &runcomfy.APIError{HTTPStatus: 504, Code: 500001}, false},
		{"HTTP 500 without a code", &runcomfy.APIError{HTTPStatus: 500}, false},
		{"HTTP 503 without a code", &runcomfy.APIError{HTTPStatus: 503}, false},
		{"internal error 500001", &runcomfy.APIError{HTTPStatus: 500, Code: 500001}, false},
		{"rate limited", &runcomfy.APIError{HTTPStatus: 429}, false},
		{"token rejected", &runcomfy.APIError{HTTPStatus: 401, Code: 401001}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := submitMayHaveStarted(tt.err); got != tt.want {
				t.Errorf("submitMayHaveStarted(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestUndecodableKeepsOnlyTheServicesMessages pins that the codec's failures
// are kept for the messages of the services served only (no method takes
// back another's), and only until taken.
func TestUndecodableKeepsOnlyTheServicesMessages(t *testing.T) {
	var u undecodable
	broken := errors.New("cannot parse")
	if u.put(&errdetails.RetryInfo{}, broken) {
		t.Error("the failure of a message no served method takes kept, want it left to grpc-go")
	}
	health := &healthpb.HealthCheckRequest{}
	if !u.put(health, broken) || status.Code(u.after(nil, health)) != codes.InvalidArgument {
		t.Error("a health check's failure not kept and taken back")
	}
	req := &comfygatev1.GetStatusRequest{}
	if !u.put(req, broken) {
		t.Fatal("a GetStatusRequest's failure not kept")
	}
	if err := u.after(nil, req); status.Code(err) != codes.InvalidArgument {
		t.Errorf("after a receipt that succeeded = %v, want INVALID_ARGUMENT", err)
	}
	if err := u.after(nil, req); err != nil {
		t.Errorf("after it was taken = %v, want nil", err)
	}
	// A receipt that failed after the codec: its own error, and nothing kept.
	u.put(req, broken)
	second := status.Error(codes.Internal, "received multiple request messages")
	if err := u.after(second, req); err != second {
		t.Errorf("after a failed receipt = %v, want its error", err)
	}
	n := 0
	u.m.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d failures still kept, want none", n)
	}
}
