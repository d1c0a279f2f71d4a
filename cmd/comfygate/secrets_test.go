package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/gatewaytest"
)

const secretA = "webhook-secret-a-0123456789abcdef"

// TestBinaryKeepsSecretsOutOfSight: the real binary warns about a secret
// given as a flag, and its profiler does not serve the command line that
// holds it.
func TestBinaryKeepsSecretsOutOfSight(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	grpcAddr, httpAddr, debugAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--simulate", "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--debug-addr", debugAddr, "--public-url", "http://"+httpAddr, "--webhook-secret", secretA, "--log-format", "json")
	logs := gatewaytest.NewSyncBuffer()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + debugAddr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for {
		if code, _, err := get("/debug/pprof/"); err == nil && code == http.StatusOK {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the profiler never answered:\n%s", logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if !strings.Contains(logs.String(), "--webhook-secret-file") || !strings.Contains(logs.String(), `"level":"WARN"`) {
		t.Errorf("no warning about the secret flag:\n%s", logs)
	}
	if strings.Contains(logs.String(), secretA) {
		t.Errorf("the log shows the secret:\n%s", logs)
	}
	for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof/cmdline?debug=1", "/debug/pprof/"} {
		code, body, err := get(path)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(body, secretA) {
			t.Errorf("%s shows the secret", path)
		}
		if strings.HasPrefix(path, "/debug/pprof/cmdline") && code != http.StatusNotFound {
			t.Errorf("%s: HTTP %d, want 404", path, code)
		}
	}
}
