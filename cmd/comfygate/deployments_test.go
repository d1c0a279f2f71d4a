package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/gatewaytest"
)

// TestBinaryDeploymentsFileReload runs the real binary with
// --deployments-file: SIGHUP puts an edited file in force (a new default
// deadline applies to the next submit), and a broken edit leaves the
// version in force as it was, with its line in the log.
func TestBinaryDeploymentsFileReload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "deployments.yaml")
	write := func(content string) {
		t.Helper()
		tmp := file + ".new"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write("default:\n  max_queue_duration: 10m\n")

	httpAddr := gatewaytest.FreeAddr(t)
	p := startGatewayProcess(t, bin, nil, "--simulate", "--grpc-addr", gatewaytest.FreeAddr(t), "--http-addr", httpAddr,
		"--deployments-file", file, "--shutdown-timeout", "10s")
	logs := p.stderr
	base := "http://" + httpAddr
	httpClient := &http.Client{Timeout: 10 * time.Second}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		eventually(t, what, logs, cond)
	}
	waitFor("ready", ready(base))
	// queueDeadline submits and returns the request's max_queue_duration.
	queueDeadline := func() string {
		t.Helper()
		resp, err := httpClient.Post(base+"/v1/deployments/dep-1/requests", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var sub struct {
			Request struct {
				MaxQueueDuration string `json:"max_queue_duration"`
			} `json:"request"`
		}
		if err := json.Unmarshal(body, &sub); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("submit: HTTP %d %s", resp.StatusCode, body)
		}
		return sub.Request.MaxQueueDuration
	}
	if got := queueDeadline(); got != "600s" {
		t.Fatalf("max_queue_duration %q, want the file's 600s", got)
	}
	write("default:\n  max_queue_duration: 20m\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("the edited file in force", func() bool { return queueDeadline() == "1200s" })
	write("default:\n  max_queue_duration: 20 minutes\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("the broken file refused", func() bool {
		return strings.Contains(logs.String(), "deployments file not reloaded") && strings.Contains(logs.String(), "line 2:")
	})
	if got := queueDeadline(); got != "1200s" {
		t.Fatalf("after a broken edit, max_queue_duration %q, want the version in force, 1200s", got)
	}
	p.stop(t)
}
