package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
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
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/gatewaytest"
)

// TestBinaryAPIKeys runs the real binary with --api-keys-file: calls without a
// known key are refused on both transports (health excepted), SIGHUP swaps the
// keys in, a broken file leaves the previous keys in use, SIGTERM still exits 0,
// and no secret ever reaches the log.
func TestBinaryAPIKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const (
		keyA          = "cgk-tenant-a-3f9c2d1e8b7a6f50"
		keyB          = "cgk-tenant-b-77e1c0ffee9d4b12"
		keyC          = "cgk-tenant-c-5a5a5a5a0b0b0b0b"
		keyBroken     = "cgk-broken-line-1234567890abc"
		keyUnknown    = "cgk-nobody-00000000000000000"
		webhookSecret = "whs-0123456789abcdef-secret"
		upstreamToken = "rct-known-token-9f8e7d6c5b4a"
	)
	secrets := []string{keyA, keyB, keyC, keyBroken, keyUnknown, webhookSecret, upstreamToken}

	bin := buildBinary(t)
	dir := t.TempDir()
	keysFile := filepath.Join(dir, "api-keys")
	// writeKeys replaces the file at once, as a deploy tool would.
	writeKeys := func(content string) {
		t.Helper()
		tmp := filepath.Join(dir, "api-keys.new")
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, keysFile); err != nil {
			t.Fatal(err)
		}
	}
	writeKeys("# comfygate test keys\ntenant-a " + keyA + "\n")

	grpcAddr, httpAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
	cmd := exec.Command(bin, "--simulate", "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--api-keys-file", keysFile, "--webhook-secret", webhookSecret, "--shutdown-timeout", "10s")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, app.EnvPrefix) && !strings.HasPrefix(kv, app.TokenEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, app.TokenEnv+"="+upstreamToken)
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
	// Whatever happens below, the log must not hold a secret.
	t.Cleanup(func() {
		out := logs.String()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the log contains the secret %q:\n%s", s, out)
			}
		}
	})

	base := "http://" + httpAddr
	httpClient := &http.Client{Timeout: 10 * time.Second}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		eventually(t, what, logs, cond)
	}
	waitFor("ready", ready(base))

	// submit posts a REST Submit with the given Authorization header ("" for
	// none) and returns the HTTP status, the request id and the body.
	submit := func(authz string) (int, string, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+"/v1/deployments/dep-1/requests",
			strings.NewReader(`{"overrides":{"3":{"inputs":{"seed":7}}}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		var sub struct {
			Request struct {
				RequestID string `json:"request_id"`
			} `json:"request"`
		}
		_ = json.Unmarshal(body, &sub)
		return resp.StatusCode, sub.Request.RequestID, string(body)
	}
	expectREST := func(authz string, want int) string {
		t.Helper()
		code, id, body := submit(authz)
		if code != want {
			t.Errorf("REST submit with Authorization %q: HTTP %d, want %d; body %s", authz, code, want, body)
		}
		if want == http.StatusOK && id == "" {
			t.Errorf("REST submit with Authorization %q: no request id in %s", authz, body)
		}
		for _, s := range secrets {
			if strings.Contains(body, s) {
				t.Errorf("response to Authorization %q contains the secret %q: %s", authz, s, body)
			}
		}
		return id
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := comfygatev1.NewGatewayServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	withKey := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	getStatus := func(ctx context.Context, requestID string) codes.Code {
		t.Helper()
		_, err := client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: requestID})
		return status.Code(err)
	}

	// REST: no key, wrong keys and malformed headers are 401; tenant-a's key submits.
	for _, authz := range []string{
		"",
		"Bearer " + keyUnknown,
		"Bearer " + keyB, // not in the file yet
		"Bearer " + keyA + "x",
		"Bearer " + keyA[:len(keyA)-1],
		"Bearer",
		"Bearer ",
		keyA,
		"Basic " + keyA,
		"Token " + keyA,
	} {
		expectREST(authz, http.StatusUnauthorized)
	}
	requestID := expectREST("Bearer "+keyA, http.StatusOK)
	if t.Failed() {
		t.FailNow()
	}

	// gRPC: GetStatus without a key or with a wrong one is Unauthenticated;
	// with tenant-a's key it is OK.
	if code := getStatus(ctx, requestID); code != codes.Unauthenticated {
		t.Errorf("GetStatus without a key: %v, want Unauthenticated", code)
	}
	if code := getStatus(withKey(keyUnknown), requestID); code != codes.Unauthenticated {
		t.Errorf("GetStatus with an unknown key: %v, want Unauthenticated", code)
	}
	if code := getStatus(withKey(keyA), requestID); code != codes.OK {
		t.Errorf("GetStatus with tenant-a's key: %v, want OK; logs:\n%s", code, logs)
	}
	// The stream is guarded too.
	stream, err := client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: requestID})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("WatchRequest without a key: %v, want Unauthenticated", err)
	}

	// Health needs no key, on gRPC and HTTP.
	health := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", comfygatev1.GatewayService_ServiceDesc.ServiceName} {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health check of %q without a key: %v, %v", svc, resp, err)
		}
	}
	if resp, err := httpClient.Get(base + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz without a key: %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// SIGHUP swaps the keys: tenant-b comes in, tenant-a goes.
	writeKeys("tenant-b " + keyB + "\n# tenant-a removed\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("tenant-b's key accepted after SIGHUP", func() bool {
		code, _, _ := submit("Bearer " + keyB)
		return code == http.StatusOK
	})
	expectREST("Bearer "+keyA, http.StatusUnauthorized)
	if code := getStatus(withKey(keyA), requestID); code != codes.Unauthenticated {
		t.Errorf("GetStatus with tenant-a's removed key: %v, want Unauthenticated", code)
	}
	if code := getStatus(withKey(keyB), "no-such-request"); code == codes.Unauthenticated {
		t.Errorf("GetStatus with tenant-b's key: Unauthenticated")
	}
	if !strings.Contains(logs.String(), "API keys reloaded") {
		t.Errorf("no reload in the log:\n%s", logs)
	}

	// A broken file is not taken, not even its good lines: tenant-b's key keeps
	// working, tenant-c's (next to the broken line) is not let in.
	writeKeys("tenant-c " + keyC + "\ntenant-x " + keyBroken + " extra-field\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("broken file reported", func() bool {
		return strings.Contains(logs.String(), "API keys not reloaded")
	})
	expectREST("Bearer "+keyB, http.StatusOK)
	expectREST("Bearer "+keyC, http.StatusUnauthorized)
	expectREST("Bearer "+keyA, http.StatusUnauthorized)
	if out := logs.String(); !strings.Contains(out, "line 2") {
		t.Errorf("the reload error does not name the line:\n%s", out)
	}

	// A vanished file likewise.
	if err := os.Remove(keysFile); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("missing file reported", func() bool {
		return strings.Count(logs.String(), "API keys not reloaded") >= 2
	})
	expectREST("Bearer "+keyB, http.StatusOK)

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
	if !strings.Contains(logs.String(), "drained") {
		t.Errorf("no drain in logs:\n%s", logs)
	}
}

// TestBinaryRefusesBadKeysFile: a keys file that does not load stops the
// gateway at start, with the line named and no key shown.
func TestBinaryRefusesBadKeysFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const good, short = "cgk-good-key-0123456789abcdef", "cgk-short-1"
	bin := buildBinary(t)
	keysFile := filepath.Join(t.TempDir(), "api-keys")
	if err := os.WriteFile(keysFile, []byte("tenant-a "+good+"\ntenant-b "+short+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--simulate", "--grpc-addr", gatewaytest.FreeAddr(t), "--http-addr", gatewaytest.FreeAddr(t), "--api-keys-file", keysFile)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Fatalf("exit: %v; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "line 2") {
		t.Errorf("the error does not name the line:\n%s", out)
	}
	for _, s := range []string{good, short} {
		if strings.Contains(string(out), s) {
			t.Errorf("the output contains the key %q:\n%s", s, out)
		}
	}
}

// TestBinarySIGHUPDuringDrain: a reload signal that arrives while the gateway
// drains after SIGTERM (a key rotation meeting a rolling deploy) must not kill
// it: the drain completes and the process exits 0.
func TestBinarySIGHUPDuringDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const key = "cgk-tenant-a-3f9c2d1e8b7a6f50"
	bin := buildBinary(t)
	keysFile := filepath.Join(t.TempDir(), "api-keys")
	if err := os.WriteFile(keysFile, []byte("tenant-a "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := gatewaytest.FreeAddr(t)
	cmd := exec.Command(bin, "--simulate", "--grpc-addr", gatewaytest.FreeAddr(t), "--http-addr", httpAddr,
		"--api-keys-file", keysFile, "--shutdown-timeout", "10s")
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
	waitLog := func(s string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(logs.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log in time:\n%s", s, logs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog("msg=serving")

	// A request whose body is still on its way keeps the drain busy until the
	// connection closes.
	conn, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/deployments/dep-1/requests HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer "+key+"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the server start reading the body

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLog("msg=draining")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the signal lands while the drain waits
	conn.Close()

	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM then SIGHUP during the drain: %v (%v); logs:\n%s", err, cmd.ProcessState, logs)
		}
	case <-time.After(12 * time.Second):
		t.Fatalf("did not exit within the shutdown timeout; logs:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "drained") {
		t.Errorf("no drain in logs:\n%s", logs)
	}
}

// TestBinaryKeysFilePermissions: the real binary takes the optional third
// field (`TENANT KEY attach`) next to two-field lines, answers an unknown id
// and another tenant's id with the same NotFound whether the caller may attach
// or not, refuses an unknown permission at start and on SIGHUP (naming the
// line, never the key, and keeping the keys in use), and exits 0 on SIGTERM.
func TestBinaryKeysFilePermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const (
		keyA = "cgk-attach-a-0f1e2d3c4b5a69788"
		keyB = "cgk-plain-b-8a7b6c5d4e3f20119"
		keyX = "cgk-bogus-x-77665544332211009"
	)
	secrets := []string{keyA, keyB, keyX}
	bin := buildBinary(t)
	dir := t.TempDir()
	keysFile := filepath.Join(dir, "api-keys")
	writeKeys := func(content string) {
		t.Helper()
		tmp := filepath.Join(dir, "api-keys.new")
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, keysFile); err != nil {
			t.Fatal(err)
		}
	}
	noSecret := func(what, out string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s contains the key %q:\n%s", what, s, out)
			}
		}
	}

	// An unknown permission stops the gateway at start.
	for _, tt := range []struct{ name, content, wantLine string }{
		{"unknown permission", "tenant-a " + keyA + " attach\ntenant-x " + keyX + " bogus\n", "line 2"},
		{"unknown permission next to attach", "tenant-x " + keyX + " attach,bogus\n", "line 1"},
		{"four fields", "tenant-a " + keyA + "\n\ntenant-x " + keyX + " attach attach\n", "line 3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writeKeys(tt.content)
			cmd := exec.Command(bin, "--simulate", "--grpc-addr", gatewaytest.FreeAddr(t), "--http-addr", gatewaytest.FreeAddr(t), "--api-keys-file", keysFile)
			out, err := cmd.CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
				t.Fatalf("exit: %v; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.wantLine) {
				t.Errorf("the error does not name %s:\n%s", tt.wantLine, out)
			}
			noSecret("the output", string(out))
		})
	}

	// Two-field and three-field lines load together.
	writeKeys("# tenant-a may attach\ntenant-a " + keyA + " attach\ntenant-b " + keyB + "\n")
	grpcAddr, httpAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
	cmd := exec.Command(bin, "--simulate", "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--api-keys-file", keysFile, "--shutdown-timeout", "10s")
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
	t.Cleanup(func() { noSecret("the log", logs.String()) })
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		eventually(t, what, logs, cond)
	}
	waitFor("ready", ready("http://"+httpAddr))

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := comfygatev1.NewGatewayServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	withKey := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	sub, err := client.Submit(withKey(keyB), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatalf("tenant-b (two-field line) submit: %v", err)
	}
	ridB := sub.GetRequest().GetRequestId()
	notFound := status.New(codes.NotFound, "no such request").Proto()
	checkNotFound := func() {
		t.Helper()
		for _, c := range []struct{ who, key, rid string }{
			{"tenant-a (attach), tenant-b's id", keyA, ridB},
			{"tenant-a (attach), an unknown id", keyA, "no-such-request"},
			{"tenant-b, an unknown id", keyB, "no-such-request"},
		} {
			_, err := client.GetStatus(withKey(c.key), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: c.rid})
			if got := status.Convert(err).Proto(); !proto.Equal(got, notFound) {
				t.Errorf("%s: %v, want %v", c.who, got, notFound)
			}
		}
		if _, err := client.GetStatus(withKey(keyB), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: ridB}); err != nil {
			t.Errorf("tenant-b status of its own request: %v", err)
		}
	}
	checkNotFound()

	// A reload with an unknown permission is refused, naming the line; the
	// keys in use stay, permissions included.
	writeKeys("tenant-a " + keyA + " atach\ntenant-b " + keyB + "\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("broken file reported", func() bool {
		return strings.Contains(logs.String(), "API keys not reloaded")
	})
	if out := logs.String(); !strings.Contains(out, "line 1") || !strings.Contains(out, "unknown permission") {
		t.Errorf("the reload error does not name the line and the reason:\n%s", out)
	}
	checkNotFound()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v; logs:\n%s", err, logs)
		}
	case <-time.After(12 * time.Second):
		t.Fatalf("did not exit within the shutdown timeout; logs:\n%s", logs)
	}
}
