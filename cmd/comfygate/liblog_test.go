package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/grpclog"

	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/internal/testcert"
)

// jsonLogger logs every level, as JSON, to a buffer.
func jsonLogger() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// logLine is one parsed line of a JSON log.
type logLine map[string]any

func (l logLine) str(key string) string {
	s, _ := l[key].(string)
	return s
}

// parseLogLines parses every complete line of out as a JSON log record with a
// time, a level and a message, failing t on any other line.
func parseLogLines(t *testing.T, out string) []logLine {
	t.Helper()
	var lines []logLine
	for text := range strings.Lines(out) {
		var l logLine
		if err := json.Unmarshal([]byte(text), &l); err != nil {
			t.Errorf("not a JSON line: %q (%v)", text, err)
			continue
		}
		for _, key := range []string{"time", "level", "msg"} {
			if _, ok := l[key].(string); !ok {
				t.Errorf("line without a %q string: %q", key, text)
			}
		}
		lines = append(lines, l)
	}
	return lines
}

// TestLibraryLoggerAdapters: each library's logger, over a JSON slog handler,
// writes one line with the library's name, the mapped level and its message.
func TestLibraryLoggerAdapters(t *testing.T) {
	// grpc runs f on a grpclog adapter over log; exitCode records Fatal's exit.
	var exitCode atomic.Int32
	grpc := func(f func(g *grpcLogger)) func(*slog.Logger) {
		return func(log *slog.Logger) {
			var target atomic.Pointer[slog.Logger]
			target.Store(log)
			f(&grpcLogger{target: &target, fallback: grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard), exit: func(code int) { exitCode.Store(int32(code)) }})
		}
	}
	tests := []struct {
		name      string
		log       func(*slog.Logger)
		wantLevel string // "" when nothing is logged
		wantMsg   string
		wantAttrs map[string]any
		wantExit  int32
	}{
		{
			name:      "grpc Info is Debug",
			log:       grpc(func(g *grpcLogger) { g.Info("channel ", "created") }),
			wantLevel: "DEBUG", wantMsg: "channel created",
			wantAttrs: map[string]any{"logger": "grpc"},
		},
		{
			name:      "grpc Infof is Debug",
			log:       grpc(func(g *grpcLogger) { g.Infof("channel #%d created", 3) }),
			wantLevel: "DEBUG", wantMsg: "channel #3 created",
			wantAttrs: map[string]any{"logger": "grpc"},
		},
		{
			name:      "grpc component InfoDepth is Debug, with the component",
			log:       grpc(func(g *grpcLogger) { g.InfoDepth(1, "[core]", "[Server #1] grpc: Server.Serve failed") }),
			wantLevel: "DEBUG", wantMsg: "[Server #1] grpc: Server.Serve failed",
			wantAttrs: map[string]any{"logger": "grpc", "grpc_component": "core"},
		},
		{
			name:      "grpc Warningf is Warn",
			log:       grpc(func(g *grpcLogger) { g.Warningf("addrConn.createTransport failed to connect to %q", "127.0.0.1:1") }),
			wantLevel: "WARN", wantMsg: `addrConn.createTransport failed to connect to "127.0.0.1:1"`,
			wantAttrs: map[string]any{"logger": "grpc"},
		},
		{
			name:      "grpc component WarningDepth is Warn",
			log:       grpc(func(g *grpcLogger) { g.WarningDepth(1, "[transport]", "closing") }),
			wantLevel: "WARN", wantMsg: "closing",
			wantAttrs: map[string]any{"logger": "grpc", "grpc_component": "transport"},
		},
		{
			name:      "grpc Errorln is Error",
			log:       grpc(func(g *grpcLogger) { g.Errorln("bad", 42) }),
			wantLevel: "ERROR", wantMsg: "bad 42",
			wantAttrs: map[string]any{"logger": "grpc"},
		},
		{
			name:      "grpc ErrorDepth without a component keeps its first argument",
			log:       grpc(func(g *grpcLogger) { g.ErrorDepth(1, "[not a component]", "x") }),
			wantLevel: "ERROR", wantMsg: "[not a component] x",
			wantAttrs: map[string]any{"logger": "grpc"},
		},
		{
			name:      "grpc Fatalf is Error, then exit 1",
			log:       grpc(func(g *grpcLogger) { g.Fatalf("cannot go on: %v", "reason") }),
			wantLevel: "ERROR", wantMsg: "cannot go on: reason",
			wantAttrs: map[string]any{"logger": "grpc", "fatal": true},
			wantExit:  1,
		},
		{
			name:      "grpc FatalDepth is Error, then exit 1",
			log:       grpc(func(g *grpcLogger) { g.FatalDepth(1, "[core]", "cannot go on") }),
			wantLevel: "ERROR", wantMsg: "cannot go on",
			wantAttrs: map[string]any{"logger": "grpc", "grpc_component": "core", "fatal": true},
			wantExit:  1,
		},
		{
			name: "go-redis is Warn",
			log: func(log *slog.Logger) {
				redisLogger{log: log.With(loggerKey, redisLoggerName)}.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v\n", 2, "refused")
			},
			wantLevel: "WARN", wantMsg: "redis: connection pool: failed to dial after 2 attempts: refused",
			wantAttrs: map[string]any{"logger": "go-redis"},
		},
		{
			name: "OpenTelemetry Error is Error, with error",
			log: func(log *slog.Logger) {
				otelLogger(log.Handler()).Error(errors.New("missing '="), "parse headers", "input", "bogus")
			},
			wantLevel: "ERROR", wantMsg: "parse headers",
			wantAttrs: map[string]any{"logger": "otel", "error": "missing '=", "input": "bogus"},
		},
		{
			name:      "OpenTelemetry Warn (V 1) is Warn",
			log:       func(log *slog.Logger) { otelLogger(log.Handler()).V(1).Info("limit reached") },
			wantLevel: "WARN", wantMsg: "limit reached",
			wantAttrs: map[string]any{"logger": "otel"},
		},
		{
			name:      "OpenTelemetry Info (V 4) is Debug",
			log:       func(log *slog.Logger) { otelLogger(log.Handler()).V(4).Info("TracerProvider created") },
			wantLevel: "DEBUG", wantMsg: "TracerProvider created",
			wantAttrs: map[string]any{"logger": "otel"},
		},
		{
			name: "OpenTelemetry Debug (V 8) is not logged",
			log:  func(log *slog.Logger) { otelLogger(log.Handler()).V(8).Info("exporting spans") },
		},
		{
			name: "OpenTelemetry error handler is Error",
			log: func(log *slog.Logger) {
				var r logRoute
				r.target.Store(log)
				r.handleOTelError(errors.New("traces export: connection refused"))
			},
			wantLevel: "ERROR", wantMsg: "traces export: connection refused",
			wantAttrs: map[string]any{"logger": "otel"},
		},
		{
			name: "standard log is Warn",
			log: func(log *slog.Logger) {
				std := stdlog.New(logWriter{log: log.With(loggerKey, stdLoggerName), level: slog.LevelWarn}, "", 0)
				std.Printf("http: TLS handshake error from %s: EOF", "127.0.0.1:1")
			},
			wantLevel: "WARN", wantMsg: "http: TLS handshake error from 127.0.0.1:1: EOF",
			wantAttrs: map[string]any{"logger": "log"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exitCode.Store(0)
			log, buf := jsonLogger()
			tc.log(log)
			lines := parseLogLines(t, buf.String())
			if tc.wantLevel == "" {
				if len(lines) != 0 {
					t.Fatalf("got %d lines, want none: %q", len(lines), buf)
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("got %d lines, want 1: %q", len(lines), buf)
			}
			got := lines[0]
			if got.str("level") != tc.wantLevel || got.str("msg") != tc.wantMsg {
				t.Errorf("got %s %q, want %s %q", got.str("level"), got.str("msg"), tc.wantLevel, tc.wantMsg)
			}
			for k, want := range tc.wantAttrs {
				if got[k] != want {
					t.Errorf("%s = %v, want %v (line %q)", k, got[k], want, buf)
				}
			}
			if _, ok := got["grpc_component"]; ok && tc.wantAttrs["grpc_component"] == nil {
				t.Errorf("unexpected grpc_component: %q", buf)
			}
			if got := exitCode.Load(); got != tc.wantExit {
				t.Errorf("exit code %d, want %d", got, tc.wantExit)
			}
		})
	}
}

// TestGRPCLoggerVerbosityAndFallback: V holds at verbosity 0 only; with no
// logger routed, grpclog's lines go where grpc-go's own logger sends them.
func TestGRPCLoggerVerbosityAndFallback(t *testing.T) {
	var target atomic.Pointer[slog.Logger]
	var fallback bytes.Buffer
	g := &grpcLogger{target: &target, fallback: grpclog.NewLoggerV2WithVerbosity(io.Discard, io.Discard, &fallback, 2), exit: func(int) {}}
	if !g.V(2) || g.V(3) {
		t.Errorf("with no logger routed, V(2), V(3) = %v, %v; want the fallback's true, false", g.V(2), g.V(3))
	}
	g.Errorf("to the %s", "fallback")
	g.WarningDepth(1, "[core]", "dropped by the fallback")
	if got := fallback.String(); !strings.Contains(got, "ERROR: to the fallback") || strings.Contains(got, "dropped") {
		t.Errorf("fallback got %q", got)
	}

	log, buf := jsonLogger()
	target.Store(log)
	tests := []struct {
		level int
		want  bool
	}{{-1, true}, {0, true}, {1, false}, {2, false}}
	for _, tc := range tests {
		t.Run(fmt.Sprint("V", tc.level), func(t *testing.T) {
			if got := g.V(tc.level); got != tc.want {
				t.Errorf("V(%d) = %v, want %v", tc.level, got, tc.want)
			}
		})
	}
	if buf.Len() != 0 {
		t.Errorf("V logged %q", buf)
	}
}

// TestGRPCDefaultLoggerFollowsEnv: the logger put back after the last run is
// grpc-go's own default, by GRPC_GO_LOG_SEVERITY_LEVEL and
// GRPC_GO_LOG_VERBOSITY_LEVEL.
func TestGRPCDefaultLoggerFollowsEnv(t *testing.T) {
	tests := []struct {
		name          string
		env           map[string]string
		wantVerbosity int
	}{
		{"unset", nil, 0},
		{"verbosity 2", map[string]string{"GRPC_GO_LOG_VERBOSITY_LEVEL": "2"}, 2},
		{"bad verbosity", map[string]string{"GRPC_GO_LOG_VERBOSITY_LEVEL": "x"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := grpcDefaultLogger(func(k string) string { return tc.env[k] })
			if !l.V(tc.wantVerbosity) || l.V(tc.wantVerbosity+1) {
				t.Errorf("verbosity is not %d", tc.wantVerbosity)
			}
		})
	}
}

// TestRouteLibraryLogsAndRestore drives each library through its own API
// while routeLibraryLogs is in force, then checks that restore puts the
// previous loggers back.
func TestRouteLibraryLogsAndRestore(t *testing.T) {
	// The standard log package writes to before, as a previous owner set it.
	before := gatewaytest.NewSyncBuffer()
	prevWriter, prevFlags, prevPrefix, prevDefault := stdlog.Writer(), stdlog.Flags(), stdlog.Prefix(), slog.Default()
	t.Cleanup(func() {
		stdlog.SetOutput(prevWriter)
		stdlog.SetFlags(prevFlags)
		stdlog.SetPrefix(prevPrefix)
		slog.SetDefault(prevDefault)
	})
	stdlog.SetOutput(before)
	stdlog.SetFlags(0)
	stdlog.SetPrefix("before: ")
	defaultBefore := slog.Default()

	out := gatewaytest.NewSyncBuffer()
	restore := routeLibraryLogs(slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))

	grpclog.Component("liblogtest").Warningf("component %s", "warning")
	if _, err := runtime.NewPattern(99, nil, nil, ""); err == nil {
		t.Error("grpc-gateway accepted a pattern of version 99")
	}
	rdb := redis.NewClient(&redis.Options{Addr: gatewaytest.FreeAddr(t), DialerRetries: 1, MaxRetries: -1})
	if err := rdb.Ping(t.Context()).Err(); err == nil {
		t.Error("ping of a closed port succeeded")
	}
	rdb.Close()
	otel.Handle(errors.New("liblogtest otel error"))
	tp := sdktrace.NewTracerProvider() // logs "TracerProvider created"
	if err := tp.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	stdlog.Print("liblogtest std log")
	slog.Info("liblogtest slog default")
	restore()

	want := []struct{ logger, level, msg string }{
		{"grpc", "WARN", "component warning"},
		{"grpc-gateway", "ERROR", "unsupported version: 99"},
		{"go-redis", "WARN", "redis: connection pool: failed to dial after 1 attempts"},
		{"otel", "ERROR", "liblogtest otel error"},
		{"otel", "DEBUG", "TracerProvider created"},
		{"log", "WARN", "liblogtest std log"},
		{"", "INFO", "liblogtest slog default"},
	}
	lines := parseLogLines(t, out.String())
	for _, w := range want {
		t.Run(w.msg, func(t *testing.T) {
			for _, l := range lines {
				if l.str("logger") == w.logger && l.str("level") == w.level && strings.Contains(l.str("msg"), w.msg) {
					return
				}
			}
			t.Errorf("no %s line from %q with %q in:\n%s", w.level, w.logger, w.msg, out.String())
		})
	}
	if got, want := grpclog.Component("liblogtest").V(0), true; got != want {
		t.Errorf("after restore, V(0) = %v", got)
	}

	// After restore, nothing reaches the routed logger any more: the standard
	// log package and slog are as before, and OpenTelemetry's errors reach
	// its default, the standard log package.
	stdlog.Print("liblogtest after restore")
	otel.Handle(errors.New("liblogtest otel error after restore"))
	grpclog.Component("liblogtest").Info("liblogtest grpc after restore")
	if strings.Contains(out.String(), "after restore") {
		t.Errorf("a line logged after restore reached the routed logger:\n%s", out.String())
	}
	if got := before.String(); got != "before: liblogtest after restore\nbefore: liblogtest otel error after restore\n" {
		t.Errorf("the standard log package, restored, got %q", got)
	}
	if slog.Default() != defaultBefore || stdlog.Flags() != 0 || stdlog.Prefix() != "before: " {
		t.Errorf("slog default or log flags and prefix not restored")
	}
}

// gatewayProcess is the comfygate binary running with JSON logs.
type gatewayProcess struct {
	cmd            *exec.Cmd
	stdout, stderr *gatewaytest.SyncBuffer
	exited         chan error
}

// startGatewayProcess runs bin with args and env added to a clean
// environment; it is killed at cleanup if still running.
func startGatewayProcess(t *testing.T, bin string, env []string, args ...string) *gatewayProcess {
	t.Helper()
	p := &gatewayProcess{
		cmd:    exec.Command(bin, args...),
		stdout: gatewaytest.NewSyncBuffer(),
		stderr: gatewaytest.NewSyncBuffer(),
		exited: make(chan error, 1),
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, app.EnvPrefix) && !strings.HasPrefix(kv, "OTEL_") && !strings.HasPrefix(kv, "GRPC_GO_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// lines parses the complete lines written so far.
func (p *gatewayProcess) lines() []logLine {
	var lines []logLine
	out := p.stderr.String()
	for text := range strings.Lines(out[:strings.LastIndexByte(out, '\n')+1]) {
		var l logLine
		if json.Unmarshal([]byte(text), &l) == nil {
			lines = append(lines, l)
		}
	}
	return lines
}

// logged reports whether a line from logger has msg in its message.
func logged(lines []logLine, logger, msg string) bool {
	for _, l := range lines {
		if l.str("logger") == logger && strings.Contains(l.str("msg"), msg) {
			return true
		}
	}
	return false
}

// waitFor polls the log until every wanted line is there.
func (p *gatewayProcess) waitFor(t *testing.T, want []wantLine) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		lines := p.lines()
		var missing []wantLine
		for _, w := range want {
			if !logged(lines, w.logger, w.msg) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("exited (%v) before logging %v; stderr:\n%s", err, missing, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not logged in time: %v; stderr:\n%s", missing, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *gatewayProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v; stderr:\n%s", err, p.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("did not exit after SIGTERM; stderr:\n%s", p.stderr)
	}
}

// wantLine is a line the test expects from a library: its logger attribute
// and part of its message.
type wantLine struct{ logger, msg string }

// rawExchange writes data to addr, half-closes, and reads until the server
// closes the connection.
func rawExchange(t *testing.T, addr, data string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, data); err != nil {
		t.Fatal(err)
	}
	// The server may have closed the connection already: then these fail,
	// and that is as good an end as any.
	_ = conn.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, conn)
}

// TestBinaryLibraryLogsAreJSON runs the real binary with --log-format json,
// makes grpc-go, grpc-gateway, go-redis, OpenTelemetry and net/http log what
// they can, and requires every line the process writes to be a JSON record.
func TestBinaryLibraryLogsAreJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	common := []string{"--simulate", "--log-format", "json", "--log-level", "debug", "--shutdown-timeout", "5s"}

	tests := []struct {
		name    string
		env     []string
		args    []string
		trigger func(t *testing.T, grpcAddr, httpAddr string)
		want    []wantLine
	}{
		{
			// A healthy gateway that traces to a collector that is not there.
			name: "plaintext, tracing",
			env: []string{
				"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + gatewaytest.FreeAddr(t),
				"OTEL_EXPORTER_OTLP_HEADERS=bogus", // OpenTelemetry's logger: "parse headers"
				"OTEL_BSP_SCHEDULE_DELAY=50",       // export soon after a span ends
				"OTEL_EXPORTER_OTLP_TIMEOUT=500",   // and give up soon: the error handler
			},
			trigger: func(t *testing.T, grpcAddr, httpAddr string) {
				// HTTP/1 on the gRPC port, and a client that leaves mid-preface.
				rawExchange(t, grpcAddr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				rawExchange(t, grpcAddr, "PRI * HTTP/2.0\r\n")
				// A malformed request on the HTTP port (net/http answers 400).
				rawExchange(t, httpAddr, "GARBAGE\r\n\r\n")
				// A Content-Type grpc-gateway cannot parse (it logs it, then
				// uses its default marshaler); the request is traced.
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+httpAddr+"/v1/deployments/dep-1/requests/00000000-0000-4000-8000-000000000000", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "text/;;;")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("REST GetStatus: HTTP %d, want 404", resp.StatusCode)
				}
			},
			want: []wantLine{
				{"grpc", "Channel created"},
				{"grpc", "received bogus greeting from client"},
				{"grpc", "failed to receive the preface from client"},
				{"grpc", "addrConn.createTransport failed to connect"},
				{"grpc-gateway", "Failed to parse Content-Type"},
				{"otel", "parse headers"},
				{"otel", "TracerProvider created"},
				{"otel", "traces export"},
			},
		},
		{
			// TLS, and a Redis that is not there.
			name: "TLS, Redis down",
			args: func() []string {
				certFile, keyFile := testcert.New(t).WriteFiles(t, t.TempDir())
				return []string{"--tls-cert", certFile, "--tls-key", keyFile, "--redis-url", "redis://" + gatewaytest.FreeAddr(t) + "/0"}
			}(),
			trigger: func(t *testing.T, grpcAddr, httpAddr string) {
				// Plaintext on both TLS listeners.
				rawExchange(t, grpcAddr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.Get("http://" + httpAddr + "/healthz")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("plaintext to the TLS listener: HTTP %d, want 400", resp.StatusCode)
				}
			},
			want: []wantLine{
				{"grpc", "first record does not look like a TLS handshake"},
				{"", "http: TLS handshake error"}, // server.go's ErrorLog, not a library's
				{"go-redis", "failed to dial"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			grpcAddr, httpAddr := gatewaytest.FreeAddr(t), gatewaytest.FreeAddr(t)
			args := append(append([]string{"--grpc-addr", grpcAddr, "--http-addr", httpAddr}, common...), tc.args...)
			p := startGatewayProcess(t, bin, tc.env, args...)
			p.waitFor(t, []wantLine{{"", "serving"}})
			tc.trigger(t, grpcAddr, httpAddr)
			p.waitFor(t, tc.want)
			p.stop(t)

			stderr := p.stderr.String()
			if !strings.HasSuffix(stderr, "\n") {
				t.Errorf("stderr does not end with a complete line: %q", stderr[strings.LastIndexByte(stderr, '\n')+1:])
			}
			lines := parseLogLines(t, stderr)
			parseLogLines(t, p.stdout.String())
			// What was waited for is still there once the logs are complete, and
			// every line went through the gateway's handler.
			for _, w := range tc.want {
				if !logged(lines, w.logger, w.msg) {
					t.Errorf("no line from %q with %q", w.logger, w.msg)
				}
			}
			if t.Failed() {
				t.Logf("stderr:\n%s", stderr)
			}
		})
	}
}
