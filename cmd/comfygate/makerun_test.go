package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/gatewaytest"
)

// TestMakeRunOnATerminal runs `make run` as a person does, on a terminal (a
// pty from script(1)), with flags in ARGS and a version stamped by make:
// the gateway listens where ARGS say, shows the stamped version in its
// start-up line, /metrics and the OpenAPI info, and Ctrl-C (the terminal's
// interrupt character) drains it, after which make itself exits 0.
func TestMakeRunOnATerminal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds with make and runs the binary")
	}
	for _, tool := range []string{"make", "script"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (Debian: make, bsdutils): %v", tool, err)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
	const stamp = "v0.0.0-maketest"
	// Built first, as make run would, so that the wait for the gateway
	// below does not count the build, which a machine busy with the other
	// tests may take minutes over: make run's own build then finds the
	// binary up to date.
	build := exec.Command("make", "-s", "-C", root, "build", "VERSION="+stamp, "COMMIT=0123abcd")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, b)
	}
	makeCmd := "make -s -C " + root + " run VERSION=" + stamp + " COMMIT=0123abcd ARGS='--grpc-addr " + grpcAddr + " --http-addr " + httpAddr + "'"
	cmd := exec.Command("script", "-qefc", makeCmd, "/dev/null")
	cmd.Env = append(os.Environ(), "TERM=dumb")
	keys, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := gatewaytest.NewSyncBuffer()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	defer func() {
		select {
		case <-exited:
			return
		default:
		}
		// Ctrl-C first, as a person would: the terminal interrupts make and
		// the gateway, which run in the pty's session; killing script alone
		// would leave them running.
		_, _ = keys.Write([]byte{3})
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for code, _ := get("/readyz"); code != http.StatusOK; code, _ = get("/readyz") {
		select {
		case <-exited:
			t.Fatalf("make run exited (%v) before the gateway was ready:\n%s", waitErr, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway of make run never got ready at %s:\n%s", httpAddr, out)
		}
	}
	if _, metrics := get("/metrics"); !strings.Contains(metrics, `comfygate_build_info{commit="0123abcd",goversion="go1.`) || !strings.Contains(metrics, `version="`+stamp+`"`) {
		t.Errorf("/metrics has no build info for %s", stamp)
	}
	_, doc := get("/openapi.json")
	var openAPI struct {
		Info struct{ Version string } `json:"info"`
	}
	if err := json.Unmarshal([]byte(doc), &openAPI); err != nil || openAPI.Info.Version != stamp {
		t.Errorf("OpenAPI info version %q (%v), want %s", openAPI.Info.Version, err, stamp)
	}

	// Ctrl-C, as the terminal sends it.
	if _, err := keys.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("make run exited with %v after Ctrl-C, want 0:\n%s", waitErr, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("make run still running 30s after Ctrl-C:\n%s", out)
	}
	for _, want := range []string{`msg="comfygate starting" version=` + stamp + ` commit=0123abcd`, "msg=drained"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out.String(), "Interrupt") {
		t.Errorf("make reported the interrupt as its own failure:\n%s", out)
	}
	version, err := exec.Command(filepath.Join(root, "bin", "comfygate"), "--version").Output()
	if err != nil || !strings.HasPrefix(string(version), "comfygate "+stamp+" (commit 0123abcd, go1.") {
		t.Errorf("bin/comfygate --version: %q, %v", version, err)
	}
}
