package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr []string
	}{
		{
			name: "defaults",
			want: config{addr: "127.0.0.1:8090", queueTime: time.Second, runTime: 2 * time.Second, cancelDelay: 500 * time.Millisecond,
				callbackRetries: 5, callbackBackoff: 50 * time.Millisecond},
		},
		{
			name: "token from env",
			env:  map[string]string{"RUNCOMFY_API_TOKEN": "env-tok"},
			want: config{addr: "127.0.0.1:8090", token: "env-tok", queueTime: time.Second, runTime: 2 * time.Second, cancelDelay: 500 * time.Millisecond,
				callbackRetries: 5, callbackBackoff: 50 * time.Millisecond},
		},
		{
			name: "flags win",
			args: []string{"--token", "flag-tok", "--addr", ":0", "--queue-time", "0s", "--run-time", "10ms",
				"--cancel-delay", "0s", "--public-url", "http://sim:8090", "--callback-retries", "8", "--callback-backoff", "100ms",
				"--output-bytes", "4194304", "--fetch-inputs"},
			env: map[string]string{"RUNCOMFY_API_TOKEN": "env-tok"},
			want: config{addr: ":0", token: "flag-tok", publicURL: "http://sim:8090", runTime: 10 * time.Millisecond,
				callbackRetries: 8, callbackBackoff: 100 * time.Millisecond, outputBytes: 4 << 20, fetchInputs: true},
		},
		{
			name: "zero retries",
			args: []string{"--callback-retries", "0"},
			want: config{addr: "127.0.0.1:8090", queueTime: time.Second, runTime: 2 * time.Second, cancelDelay: 500 * time.Millisecond,
				callbackBackoff: 50 * time.Millisecond},
		},
		{
			name: "every problem reported",
			args: []string{"--queue-time", "-1s", "--run-time", "-1s", "--addr", "", "--callback-retries", "-1",
				"--callback-backoff", "0s", "--output-bytes", "-1", "extra"},
			wantErr: []string{"queue-time", "run-time", "addr", "callback-retries", "callback-backoff", "output-bytes", "unexpected arguments"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConfig(tt.args, env(tt.env), io.Discard)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("got no error, want one mentioning %v", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := config{token: "tok", queueTime: time.Hour}
	go func() { done <- serve(ctx, ln, cfg, slog.New(slog.DiscardHandler)) }()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/prod/v1/deployments/d/inference", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("submit: got %d, want 200", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: got %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

// TestServeCallbackRetries checks that --callback-retries and --callback-backoff
// reach the simulator: a receiver that fails six times is reached on the seventh
// attempt only with six retries (the default, five, would give up first).
func TestServeCallbackRetries(t *testing.T) {
	var attempts atomic.Int64
	delivered := make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if attempts.Add(1) <= 6 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
		close(delivered)
	}))
	defer receiver.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := config{token: "tok", callbackRetries: 6, callbackBackoff: time.Millisecond}
	go func() { done <- serve(ctx, ln, cfg, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		<-done
	}()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/prod/v1/deployments/d/inference?webhook="+
		url.QueryEscape(receiver.URL+"/cb"), strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("submit: got %d, want 200", resp.StatusCode)
	}
	select {
	case <-delivered:
	case <-time.After(10 * time.Second):
		t.Fatalf("callback not delivered after %d attempts", attempts.Load())
	}
}

func TestRealMainHelp(t *testing.T) {
	if err := realMain(context.Background(), []string{"-h"}, func(string) string { return "" }, io.Discard); err != nil {
		t.Errorf("help: got %v, want nil", err)
	}
}

// TestServeFetchInputs checks that --fetch-inputs reaches the simulator: a submit
// naming an input URL that answers 404 is refused with 422, one that answers 200 is
// accepted, and both URLs were fetched.
func TestServeFetchInputs(t *testing.T) {
	var fetched atomic.Int64
	media := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		if r.URL.Path != "/ok.png" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "png bytes")
	}))
	defer media.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := config{token: "tok", queueTime: time.Hour, fetchInputs: true}
	go func() { done <- serve(ctx, ln, cfg, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		<-done
	}()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for _, tt := range []struct {
		path string
		want int
	}{
		{"/missing.png", http.StatusUnprocessableEntity},
		{"/ok.png", http.StatusOK},
	} {
		body := `{"overrides":{"12":{"inputs":{"image":"` + media.URL + tt.path + `"}}}}`
		req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/prod/v1/deployments/d/inference", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("submit %s: %v", tt.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("submit %s: got %d, want %d", tt.path, resp.StatusCode, tt.want)
		}
	}
	if got := fetched.Load(); got != 2 {
		t.Errorf("inputs fetched: got %d, want 2", got)
	}
}
