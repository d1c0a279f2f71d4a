package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/internal/webhooktest"
)

// TestBinaryTenantsFile runs the real binary with --tenants-file: its keys
// authenticate, a submit's webhook is signed with the tenant's secret, and
// SIGHUP swaps keys and secrets (a rotation) in; no key or secret reaches the
// log.
func TestBinaryTenantsFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const (
		keyA = "cgk-tenants-a-3f9c2d1e8b7a6f50"
		keyB = "cgk-tenants-b-77e1c0ffee9d4b12"
	)
	var secrets []string
	for range 2 {
		s, err := hooks.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, s.String())
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	write := func(key, secret string) {
		t.Helper()
		content := fmt.Sprintf("tenants:\n  team:\n    keys:\n      - key: %q\n    webhooks:\n      secrets: [%q]\n", key, secret)
		if err := os.WriteFile(file+".new", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
	}
	write(keyA, secrets[0])

	type delivery struct {
		header http.Header
		body   []byte
	}
	var (
		mu  sync.Mutex
		got []delivery
	)
	rcv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, delivery{r.Header.Clone(), body})
		mu.Unlock()
	}))
	defer rcv.Close()

	grpcAddr, httpAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
	cmd := exec.Command(buildBinary(t), "--simulate", "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--tenants-file", file, "--webhook-allow-private", "--webhook-retry-min", "100ms")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, app.EnvPrefix) && !strings.HasPrefix(kv, app.TokenEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	logs := gatewaytest.NewSyncBuffer()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Errorf("exit: %v", err)
		}
		for _, s := range append([]string{keyA, keyB}, secrets...) {
			if strings.Contains(logs.String(), s) {
				t.Errorf("the log holds the secret %q", s)
			}
		}
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	}()
	base := "http://" + httpAddr
	hc := &http.Client{Timeout: 10 * time.Second}
	gatewaytest.WaitUntil(t, "ready", func() bool {
		resp, err := hc.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// submit submits with key, its webhook going to path, and returns the
	// HTTP status and the request id.
	submit := func(key, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+"/v1/deployments/dep-1/requests", strings.NewReader(`{"overrides": {}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Comfygate-Webhook", rcv.URL+path)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sub struct {
			Request struct {
				RequestID string `json:"request_id"`
			} `json:"request"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&sub)
		return resp.StatusCode, sub.Request.RequestID
	}
	// terminal waits for the terminal event of rid and returns it.
	terminal := func(rid string) delivery {
		t.Helper()
		var d delivery
		gatewaytest.WaitUntil(t, "the terminal event of "+rid, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, g := range got {
				if strings.Contains(string(g.body), rid) {
					d = g
					return true
				}
			}
			return false
		})
		return d
	}

	code, rid := submit(keyA, "/first")
	if code != http.StatusOK {
		t.Fatalf("submit with the file's key: HTTP %d", code)
	}
	if d := terminal(rid); webhooktest.Verify(secrets[0], d.header, d.body, time.Now()) != nil {
		t.Errorf("event not signed with the tenant's secret: %v", d.header)
	}

	// SIGHUP: keyB replaces keyA, the second secret replaces the first.
	write(keyB, secrets[1])
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	gatewaytest.WaitUntil(t, "the reloaded key", func() bool {
		code, _ := submit(keyA, "/never")
		return code == http.StatusUnauthorized
	})
	code, rid = submit(keyB, "/second")
	if code != http.StatusOK {
		t.Fatalf("submit with the reloaded key: HTTP %d", code)
	}
	if d := terminal(rid); webhooktest.Verify(secrets[1], d.header, d.body, time.Now()) != nil || webhooktest.Verify(secrets[0], d.header, d.body, time.Now()) == nil {
		t.Errorf("after the reload, the event is not signed with the new secret alone: %v", d.header)
	}

	// A broken file keeps what is in use.
	if err := os.WriteFile(file, []byte("tenants: {team: {webhooks: {secrets: [nope]}}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	gatewaytest.WaitUntil(t, "the refused reload's log line", func() bool { return strings.Contains(logs.String(), "not reloaded") })
	if code, _ := submit(keyB, "/third"); code != http.StatusOK {
		t.Errorf("after a broken file, the key in use: HTTP %d", code)
	}
}
