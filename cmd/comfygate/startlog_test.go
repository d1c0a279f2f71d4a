package main

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/internal/redistest"
)

// TestStartErrorsInTheLogFormat: a gateway that does not start says why in
// one line, a JSON record when --log-format json was asked for (by flag or
// environment), and never prints the whole flag list for a bad flag.
func TestStartErrorsInTheLogFormat(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct {
		name     string
		args     []string
		env      []string
		json     bool
		wantText string
	}{
		{name: "invalid configuration, json", args: []string{"--simulate", "--log-format", "json", "--debug-addr", "0.0.0.0:1"}, json: true, wantText: "not a loopback address"},
		{name: "unknown flag, json", args: []string{"--log-format=json", "--no-such-flag"}, json: true, wantText: "--help lists the flags"},
		{name: "json from the environment", args: []string{"--simulate", "--read-rate", "NaN"}, env: []string{"COMFYGATE_LOG_FORMAT=json"}, json: true, wantText: "--read-rate must be a finite number"},
		{name: "unknown flag, text", args: []string{"--no-such-flag"}, wantText: "--help lists the flags"},
		{name: "port in use, json", args: []string{"--simulate", "--log-format", "json", "--grpc-addr", taken.Addr().String()}, json: true, wantText: "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, tt.env...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if !strings.Contains(string(out), tt.wantText) {
				t.Errorf("output does not say %q:\n%s", tt.wantText, out)
			}
			if strings.Contains(string(out), "--grpc-addr host:port") {
				t.Errorf("the flag list was printed:\n%s", out)
			}
			if !tt.json {
				if len(lines) != 1 {
					t.Errorf("%d lines, want one:\n%s", len(lines), out)
				}
				return
			}
			for _, l := range lines {
				var rec map[string]any
				if err := json.Unmarshal([]byte(l), &rec); err != nil {
					t.Errorf("line %q is not JSON: %v", l, err)
				} else if rec["level"] == nil || rec["msg"] == nil {
					t.Errorf("record %v lacks level or msg", rec)
				}
			}
		})
	}
}

// TestBinaryWarnsWithoutRedisPersistence: with a Redis that keeps nothing on
// disk the gateway warns at start, since a restart of Redis would lose every
// record; with one that does, it says what it found.
func TestBinaryWarnsWithoutRedisPersistence(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	for _, tt := range []struct {
		name  string
		extra []string
		want  string
	}{
		{name: "nothing on disk", extra: []string{"--appendonly", "no", "--save", ""}, want: `"level":"WARN","msg":"Redis keeps nothing on disk`},
		{name: "append-only file", want: `"msg":"Redis persistence","aof":true,"rdb":false`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := redistest.StartPrivate(tt.extra...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Stop)
			cmd := exec.Command(bin, "--simulate", "--grpc-addr", gatewaytest.FreeAddr(t), "--http-addr", gatewaytest.FreeAddr(t),
				"--redis-url", srv.URL, "--log-format", "json")
			logs := gatewaytest.NewSyncBuffer()
			cmd.Stdout, cmd.Stderr = logs, logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = cmd.Process.Signal(os.Interrupt)
				_ = cmd.Wait()
			}()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(logs.String(), tt.want) {
				if time.Now().After(deadline) || strings.Contains(logs.String(), `"msg":"serving"`) {
					t.Fatalf("no %s at start:\n%s", tt.want, logs)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestStartFailuresExitWithKeys: with API keys (whose reloads on SIGHUP run
// for the process's life), a part that fails to build after the keys are
// loaded still ends the process, with status 1, at once; so does every
// configuration a constructor would refuse, found before anything is built.
func TestStartFailuresExitWithKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	keys := t.TempDir() + "/keys"
	if err := os.WriteFile(keys, []byte("team start-failure-key-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badKeys := t.TempDir() + "/bad-keys"
	if err := os.WriteFile(badKeys, []byte("no-key-on-this-line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badTenants := t.TempDir() + "/bad-tenants.yaml"
	if err := os.WriteFile(badTenants, []byte("tenants:\n  team:\n    webhooks:\n      secrets: [not-a-secret]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clashingTenants := t.TempDir() + "/clashing-tenants.yaml"
	if err := os.WriteFile(clashingTenants, []byte("tenants:\n  other:\n    keys:\n      - key: start-failure-key-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := t.TempDir() + "/missing"
	inUse := "address already in use"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"gRPC port in use", []string{"--grpc-addr", taken.Addr().String()}, inUse},
		{"HTTP port in use", []string{"--http-addr", taken.Addr().String()}, inUse},
		{"profiler port in use", []string{"--debug-addr", taken.Addr().String()}, inUse},
		{"keys file that does not load", []string{"--api-keys-file", badKeys}, "--api-keys-file"},
		{"tenants file that does not load", []string{"--tenants-file", badTenants}, "--tenants-file"},
		{"tenants file that disagrees with the keys file", []string{"--tenants-file", clashingTenants}, "--tenants-file and --api-keys-file"},
		{"webhook allowed hosts that are not hosts", []string{"--webhook-allow-hosts", "http://x/y"}, "--webhook-allow-hosts"},
		{"certificate that does not load", []string{"--tls-cert", missing, "--tls-key", missing}, "--tls-cert/--tls-key"},
		{"public URL the callbacks cannot use", []string{"--public-url", "http://gw.example.com/#", "--webhook-secret-file", keys}, "--public-url"},
		{"Redis URL that does not parse", []string{"--redis-url", "redis://127.0.0.1:notaport"}, "--redis-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--simulate", "--api-keys-file", keys, "--grpc-addr", gatewaytest.FreeAddr(t), "--http-addr", gatewaytest.FreeAddr(t)}, tt.args...)
			cmd := exec.Command(bin, args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Errorf("exit: %v, want status 1\n%s", err, out.String())
				}
				if !strings.Contains(out.String(), tt.want) {
					t.Errorf("output does not say why:\n%s", out.String())
				}
			case <-time.After(2 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				t.Fatalf("still running 2s after a start that failed:\n%s", out.String())
			}
		})
	}
}
