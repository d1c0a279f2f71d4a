package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
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

// runGateway runs a gateway on free ports with args until the test ends; it
// returns the test's context, a gRPC client and the HTTP listener's base URL.
func runGateway(t *testing.T, getenv func(string) string, args ...string) (context.Context, comfygatev1.GatewayServiceClient, string) {
	t.Helper()
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	cfg, err := ParseConfig(append([]string{"--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--shutdown-timeout", "2s"}, args...), getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return ctx, comfygatev1.NewGatewayServiceClient(conn), "http://" + httpAddr
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

// TestSeparateListeners: with --webhook-addr and --admin-addr, each listener
// serves its audience only. The simulator calls back the webhook listener,
// so a submitted job reaches its end through it; the API listener serves no
// callbacks and no metrics; the admin listener serves metrics, health and
// the profiler and no API.
func TestSeparateListeners(t *testing.T) {
	webhookAddr, adminAddr := freeAddr(t), freeAddr(t)
	_, _, base := runGateway(t, env(nil), "--simulate", "--webhook-addr", webhookAddr, "--admin-addr", adminAddr)
	httpAddr := strings.TrimPrefix(base, "http://")
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	do := func(method, url, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in time", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	until("ready", func() bool { code, _ := do("GET", "http://"+httpAddr+"/readyz", ""); return code == http.StatusOK })

	for _, tt := range []struct {
		method, url string
		want        int
	}{
		{"GET", "http://" + httpAddr + "/metrics", http.StatusNotFound},
		{"POST", "http://" + httpAddr + "/webhooks/runcomfy/dep-1/t/x/token", http.StatusNotFound},
		{"GET", "http://" + httpAddr + "/debug/pprof/", http.StatusNotFound},
		{"GET", "http://" + httpAddr + "/healthz", http.StatusOK},
		{"GET", "http://" + httpAddr + "/openapi.json", http.StatusOK},
		{"GET", "http://" + adminAddr + "/metrics", http.StatusOK},
		{"GET", "http://" + adminAddr + "/healthz", http.StatusOK},
		{"GET", "http://" + adminAddr + "/readyz", http.StatusOK},
		{"GET", "http://" + adminAddr + "/debug/pprof/", http.StatusOK},
		{"GET", "http://" + adminAddr + "/debug/pprof/cmdline", http.StatusNotFound},
		{"GET", "http://" + adminAddr + "/v1/deployments/dep-1/requests/req-1", http.StatusNotFound},
		{"GET", "http://" + adminAddr + "/openapi.json", http.StatusNotFound},
		{"GET", "http://" + webhookAddr + "/metrics", http.StatusNotFound},
		{"GET", "http://" + webhookAddr + "/healthz", http.StatusNotFound},
		{"GET", "http://" + webhookAddr + "/v1/deployments/dep-1/requests/req-1", http.StatusNotFound},
		{"POST", "http://" + webhookAddr + "/webhooks/runcomfy/dep-1/t/x/token", http.StatusUnauthorized},
	} {
		if code, body := do(tt.method, tt.url, "{}"); code != tt.want {
			t.Errorf("%s %s: HTTP %d, want %d\n%s", tt.method, tt.url, code, tt.want, body)
		}
	}

	// A job's callbacks come in through the webhook listener: it ends
	// without a poll (the poll interval is far longer than the job).
	code, body := do("POST", "http://"+httpAddr+"/v1/deployments/dep-1/requests", `{"overrides": {}}`)
	if code != http.StatusOK {
		t.Fatalf("submit: HTTP %d\n%s", code, body)
	}
	var submitted struct {
		Request struct {
			RequestID string `json:"request_id"`
		} `json:"request"`
	}
	if err := json.Unmarshal([]byte(body), &submitted); err != nil || submitted.Request.RequestID == "" {
		t.Fatalf("submit answered %s", body)
	}
	until("callbacks applied through the webhook listener", func() bool {
		_, metrics := do("GET", "http://"+adminAddr+"/metrics", "")
		return strings.Contains(metrics, `comfygate_callbacks_total{outcome="applied"} `) &&
			!strings.Contains(metrics, `comfygate_callbacks_total{outcome="applied"} 0`)
	})
	_, metrics := do("GET", "http://"+adminAddr+"/metrics", "")
	if !strings.Contains(metrics, "comfygate_build_info{") {
		t.Errorf("no comfygate_build_info in /metrics")
	}
}

// TestLocalNamesOnlyWithoutKeys: a gateway without API keys on loopback
// answers only localhost and IP addresses as Host (a page whose name is
// rebound to 127.0.0.1 is refused); with keys, any name.
func TestLocalNamesOnlyWithoutKeys(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("team local-names-key-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		rebound int // the answer to Host: rebound.example
	}{
		{"without keys", nil, http.StatusForbidden},
		{"with keys", []string{"--api-keys-file", keys}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, _, base := runGateway(t, env(nil), append([]string{"--simulate"}, tc.args...)...)
			httpAddr := strings.TrimPrefix(base, "http://")
			client := &http.Client{Timeout: time.Second}
			defer client.CloseIdleConnections()
			get := func(host string) int {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/healthz", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = host
				resp, err := client.Do(req)
				if err != nil {
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			for get(httpAddr) != http.StatusOK {
				select {
				case <-ctx.Done():
					t.Fatal("the gateway did not serve in time")
				case <-time.After(10 * time.Millisecond):
				}
			}
			if code := get("rebound.example"); code != tc.rebound {
				t.Errorf("Host rebound.example: HTTP %d, want %d", code, tc.rebound)
			}
			if code := get("localhost"); code != http.StatusOK {
				t.Errorf("Host localhost: HTTP %d, want 200", code)
			}
		})
	}
}

// TestNewRefusesARedisOfAnotherKind: a --redis-url whose Redis is not what
// the URL says (a cluster node named as one server, one server named as a
// cluster, a refused password) stops the start with an error that says so,
// rather than a gateway that answers every save with an error; a Redis that
// does not answer yet does not (it may come later; /readyz tells).
func TestNewRefusesARedisOfAnotherKind(t *testing.T) {
	rc, err := redistest.StartCluster(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	plain, err := redistest.StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plain.Stop)
	locked, err := redistest.StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(locked.Stop)
	if err := locked.Client(t).ConfigSet(t.Context(), "requirepass", "right-secret").Err(); err != nil {
		t.Fatal(err)
	}
	// One prefix for all the cases: the last starts where "the cluster"
	// started.
	prefix := redistest.Prefix(t)
	for _, tt := range []struct {
		name, url, want string
	}{
		{"a cluster node as one server", "redis://" + rc.Nodes[0].Addr + "/0", "redis+cluster://"},
		{"one server as a cluster", "redis+cluster://" + plain.Addr, "cluster support disabled"},
		{"a refused password", "redis://:wrong-secret@" + locked.Addr + "/0", "WRONGPASS"},
		{"nothing listening", "redis://" + freeAddr(t) + "/0", ""},
		{"the cluster", "redis+cluster://" + strings.Join(rc.Addrs(), ","), ""},
		{"the cluster in other buckets than the replicas before", "redis+cluster://" + strings.Join(rc.Addrs(), ","), "buckets"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--simulate", "--grpc-addr", freeAddr(t), "--http-addr", freeAddr(t),
				"--redis-url", tt.url, "--redis-prefix", prefix, "--shutdown-timeout", "2s"}
			if tt.want == "buckets" {
				// The replica before, "the cluster", started with 16.
				args = append(args, "--redis-buckets", "4")
			}
			cfg, err := ParseConfig(args, env(nil), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			a, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New = %v; want a gateway", err)
				}
				// Run with its context ended releases everything New built.
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				if err := a.Run(ctx); err != nil {
					t.Errorf("Run = %v", err)
				}
				return
			}
			if err == nil || a != nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "--redis-url") {
				t.Fatalf("New = %v, %v; want an error naming --redis-url and %q", a, err, tt.want)
			}
			if strings.Contains(err.Error(), "wrong-secret") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}
