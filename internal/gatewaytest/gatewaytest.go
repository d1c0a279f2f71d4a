// Package gatewaytest runs a whole gateway in the test's process, built by
// package app from command-line flags exactly as the binary builds it, for
// the tests of the parts that talk to one (the client commands, main).
package gatewaytest

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/freeport"
)

// Gateway is a gateway running in this process.
type Gateway struct {
	GRPCAddr, HTTPAddr string
	// Logs holds what it logged, as text.
	Logs *SyncBuffer
	// Stop ends it and returns Run's error; it runs at cleanup at the latest.
	Stop func() error
}

// Setup says how to start a Gateway.
type Setup struct {
	// Upstream is the RunComfy base URL (a simulator's).
	Upstream string
	// Token is RunComfy's API token; default one any simulator accepts.
	Token string
	// WebhookSecret signs the callback URLs, which point at the gateway's
	// own HTTP listener.
	WebhookSecret string
	// NoCallbacks leaves --public-url out: submits ask RunComfy for no
	// callbacks.
	NoCallbacks        bool
	GRPCAddr, HTTPAddr string      // "" picks free ports
	Args               []string    // more flags
	ProbeTLS           *tls.Config // set when the gateway serves TLS
	// Getenv answers the environment variables but the token (an object
	// store's credentials); nil answers none.
	Getenv func(string) string
}

// Start starts a gateway on s.Upstream and waits until /readyz says ready.
func Start(t testing.TB, s Setup) *Gateway {
	t.Helper()
	g := &Gateway{GRPCAddr: s.GRPCAddr, HTTPAddr: s.HTTPAddr, Logs: NewSyncBuffer()}
	if g.GRPCAddr == "" {
		g.GRPCAddr = FreeAddr(t)
	}
	if g.HTTPAddr == "" {
		g.HTTPAddr = FreeAddr(t)
	}
	if s.WebhookSecret == "" {
		s.WebhookSecret = "gatewaytest-webhook-secret-0123456789"
	}
	if s.Token == "" {
		s.Token = "rct-gatewaytest-token"
	}
	args := []string{
		"--grpc-addr", g.GRPCAddr, "--http-addr", g.HTTPAddr, "--runcomfy-url", s.Upstream,
		"--webhook-secret", s.WebhookSecret, "--shutdown-timeout", "5s", "--log-level", "warn",
	}
	if !s.NoCallbacks {
		args = append(args, "--public-url", "http://"+g.HTTPAddr)
	}
	args = append(args, s.Args...)
	cfg, err := app.ParseConfig(args, func(k string) string {
		if k == app.TokenEnv {
			return s.Token
		}
		if s.Getenv != nil {
			return s.Getenv(k)
		}
		return ""
	}, g.Logs)
	if err != nil {
		t.Fatalf("gateway flags: %v", err)
	}
	log := slog.New(slog.NewTextHandler(g.Logs, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithCancel(context.Background())
	gateway, err := app.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("gateway: %v", err)
	}
	var runErr error
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		runErr = gateway.Run(ctx)
	}()
	g.Stop = sync.OnceValue(func() error {
		cancel()
		<-exited
		return runErr
	})
	t.Cleanup(func() {
		if err := g.Stop(); err != nil {
			t.Errorf("gateway: %v; logs:\n%s", err, g.Logs)
		}
	})

	scheme := "http"
	if s.ProbeTLS != nil {
		scheme = "https"
	}
	probe := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: s.ProbeTLS}}
	defer probe.CloseIdleConnections()
	WaitUntil(t, "gateway ready", func() bool {
		select {
		case <-exited:
			t.Fatalf("gateway exited: %v; logs:\n%s", runErr, g.Logs)
		default:
		}
		resp, err := probe.Get(scheme + "://" + g.HTTPAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return g
}

// WaitUntil polls cond for up to 10 seconds.
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in time", what)
		}
	}
}

// FreeAddr is a loopback address with a port free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// SyncBuffer is a bytes.Buffer safe to read while another goroutine (or a
// child process's output copier) writes to it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// NewSyncBuffer returns an empty SyncBuffer.
func NewSyncBuffer() *SyncBuffer { return &SyncBuffer{} }

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Contains reports whether what was written so far contains s.
func (b *SyncBuffer) Contains(s string) bool { return strings.Contains(b.String(), s) }
