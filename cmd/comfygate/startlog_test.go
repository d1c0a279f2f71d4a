package main

import (
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
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

// TestRequestedLogFormat reads the format as the flag parser would.
func TestRequestedLogFormat(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--log-format", "json"}, want: "json"},
		{args: []string{"-log-format=json"}, want: "json"},
		{args: []string{"--log-format=text"}, env: "json", want: "text"},
		{env: "json", want: "json"},
		{args: []string{"log-format", "json"}, want: ""},
		{args: []string{"--log-format"}, want: ""},
	} {
		got := requestedLogFormat(tt.args, env(map[string]string{"COMFYGATE_LOG_FORMAT": tt.env}))
		if got != tt.want {
			t.Errorf("requestedLogFormat(%q, env %q) = %q, want %q", tt.args, tt.env, got, tt.want)
		}
	}
}
