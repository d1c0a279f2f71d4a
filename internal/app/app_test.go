package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/internal/redistest"
)

// TestMain fails the package when a test leaves a goroutine running: New
// starts none, and Run stops all it started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// canListen reports whether addr can be listened on now.
func canListen(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// gatewayArgs are the flags of a simulated gateway on the given addresses,
// with its state in Redis, so that every part New can build is built.
func gatewayArgs(t *testing.T, grpcAddr, httpAddr, debugAddr string) []string {
	t.Helper()
	rs, err := redistest.Find()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	return []string{"--simulate", "--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--debug-addr", debugAddr,
		"--redis-url", rs.URL, "--redis-prefix", redistest.Prefix(t), "--shutdown-timeout", "2s"}
}

// TestNewReleasesWhatItBuiltOnFailure: when a part fails to build, New
// returns the error with every listener it had opened closed and no
// goroutine left (TestMain), so that the process can exit at once.
func TestNewReleasesWhatItBuiltOnFailure(t *testing.T) {
	for _, part := range []string{"--grpc-addr", "--http-addr", "--debug-addr"} {
		t.Run(part, func(t *testing.T) {
			addrs := map[string]string{"--grpc-addr": freeAddr(t), "--http-addr": freeAddr(t), "--debug-addr": freeAddr(t)}
			taken, err := net.Listen("tcp", addrs[part])
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Close()
			cfg, err := ParseConfig(gatewayArgs(t, addrs["--grpc-addr"], addrs["--http-addr"], addrs["--debug-addr"]), env(nil), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			a, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler))
			if err == nil || a != nil || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("New = %v, %v; want no App and the port in use", a, err)
			}
			for flag, addr := range addrs {
				if flag != part && !canListen(addr) {
					t.Errorf("%s %s is still held after the failed start", flag, addr)
				}
			}
		})
	}
}

// TestNewRefusesWhatValidateRefuses: New runs Validate itself, so a caller
// that skipped ParseConfig builds nothing from a bad configuration.
func TestNewRefusesWhatValidateRefuses(t *testing.T) {
	cfg, err := ParseConfig([]string{"--simulate"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.PublicURL = "http://gw.example.com/?"
	cfg.WebhookSecrets = []string{"a-secret-long-enough-0123456789"}
	grpcAddr := cfg.GRPCAddr
	if _, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "--public-url") {
		t.Fatalf("New = %v, want the public URL refused", err)
	}
	if !canListen(grpcAddr) {
		t.Errorf("%s was opened for a configuration Validate refuses", grpcAddr)
	}
}

// TestRunServesAndStopsEverything: Run serves the parts New built until its
// context ends, then returns nil with every listener closed and no goroutine
// left (TestMain).
func TestRunServesAndStopsEverything(t *testing.T) {
	grpcAddr, httpAddr, debugAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg, err := ParseConfig(gatewayArgs(t, grpcAddr, httpAddr, debugAddr), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	for _, url := range []string{"http://" + httpAddr + "/readyz", "http://" + debugAddr + "/debug/pprof/"} {
		for {
			resp, err := client.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case err := <-done:
				t.Fatalf("Run returned early: %v", err)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	for _, addr := range []string{grpcAddr, httpAddr, debugAddr} {
		if !canListen(addr) {
			t.Errorf("%s is still held after Run returned", addr)
		}
	}
}
