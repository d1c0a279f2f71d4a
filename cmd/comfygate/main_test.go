package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/gatewaytest"
)

// buildBinary compiles the real comfygate binary once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "comfygate")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// eventually polls cond until it holds, or fails t after 10 s, showing
// the gateway's log.
func eventually(t *testing.T, what string, logs fmt.Stringer, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in time; logs:\n%s", what, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ready reports whether the gateway at base answers its readiness probe
// (which needs no key).
func ready(base string) func() bool {
	return func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// TestBinaryServesAndDrainsOnSIGTERM runs the real binary as `make run` does
// (--simulate), takes a request through REST and gRPC, then stops it with SIGTERM:
// the process must drain and exit 0. (In-flight calls finishing during the drain
// is pinned in package server, where upstream latency can be injected.)
func TestBinaryServesAndDrainsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	grpcAddr, httpAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
	cmd := exec.Command(bin, "--simulate", "--grpc-addr", grpcAddr, "--shutdown-timeout", "10s")
	cmd.Env = append(os.Environ(), "COMFYGATE_HTTP_ADDR="+httpAddr)
	logs := gatewaytest.NewSyncBuffer()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	base := "http://" + httpAddr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready in time; logs:\n%s", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, err := http.Post(base+"/v1/deployments/dep-1/requests", "application/json",
		strings.NewReader(`{"overrides":{"3":{"inputs":{"seed":18446744073709551615}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		Request struct {
			RequestID string `json:"request_id"`
			Status    string `json:"status"`
		} `json:"request"`
	}
	err = json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || sub.Request.RequestID == "" {
		t.Fatalf("REST submit: HTTP %d, %v, %+v", resp.StatusCode, err, sub)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := comfygatev1.NewGatewayServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: sub.Request.RequestID})
	if err != nil {
		t.Fatalf("gRPC GetStatus: %v", err)
	}
	if st.GetRequest().GetStatus() == comfygatev1.Status_STATUS_UNSPECIFIED {
		t.Errorf("status unspecified: %v", st)
	}

	// With --simulate and no public URL the simulator calls this gateway back, so
	// a watch follows the request live to its end.
	stream, err := client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: sub.Request.RequestID})
	if err != nil {
		t.Fatal(err)
	}
	var last *comfygatev1.RequestState
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("watch: %v; logs:\n%s", err, logs)
		}
		last = msg.GetRequest()
	}
	if last.GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || len(last.GetOutputUrls()) == 0 {
		t.Errorf("watch ended with %v", last)
	}

	// A watcher of a request still running when SIGTERM comes: its stream ends
	// with UNAVAILABLE at once, so it can resume on another replica.
	open, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"long"}`})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: open.GetRequest().GetRequestId()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pending.Recv(); err != nil {
		t.Fatal(err)
	}
	watchEnded := make(chan error, 1)
	go func() {
		for {
			if _, err := pending.Recv(); err != nil {
				watchEnded <- err
				return
			}
		}
	}()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			t.Fatalf("exit code %d after SIGTERM; logs:\n%s", exitErr.ExitCode(), logs)
		} else if err != nil {
			t.Fatal(err)
		}
	case <-time.After(12 * time.Second):
		t.Fatalf("did not exit within the shutdown timeout; logs:\n%s", logs)
	}
	select {
	case err := <-watchEnded:
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "after_seq") {
			t.Errorf("open watch ended with %v, want UNAVAILABLE naming after_seq", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("open watch did not end on SIGTERM")
	}
	if !strings.Contains(logs.String(), "drained") {
		t.Errorf("no drain in logs:\n%s", logs)
	}
}
