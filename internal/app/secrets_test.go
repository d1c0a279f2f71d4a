package app

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	secretA = "webhook-secret-a-0123456789abcdef"
	secretB = "webhook-secret-b-0123456789abcdef"
)

// TestWebhookSecretSources: the secrets come from --webhook-secret-file or
// COMFYGATE_WEBHOOK_SECRET without a warning; a secret on the command line
// still works, flagged for a warning (it shows in process listings).
func TestWebhookSecretSources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := write("secrets", "# current first\n"+secretA+"\n\n"+secretB+"\n")
	commas := write("commas", secretA+", "+secretB+"\n")
	empty := write("empty", "# nothing\n\n")
	open := write("open", secretA+"\n")
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    []string
		warn    bool
		loose   bool
		wantErr string
	}{
		{name: "file others may read", args: []string{"--webhook-secret-file", open}, want: []string{secretA}, loose: true},
		{name: "file, one per line", args: []string{"--webhook-secret-file", file}, want: []string{secretA, secretB}},
		{name: "file, comma-separated", args: []string{"--webhook-secret-file", commas}, want: []string{secretA, secretB}},
		{name: "file from the environment", env: map[string]string{"COMFYGATE_WEBHOOK_SECRET_FILE": file}, want: []string{secretA, secretB}},
		{name: "environment", env: map[string]string{"COMFYGATE_WEBHOOK_SECRET": secretA}, want: []string{secretA}},
		{name: "flag warns", args: []string{"--webhook-secret", secretA}, want: []string{secretA}, warn: true},
		{name: "flag over environment warns", args: []string{"--webhook-secret", secretB}, env: map[string]string{"COMFYGATE_WEBHOOK_SECRET": secretA}, want: []string{secretB}, warn: true},
		{name: "flag and file", args: []string{"--webhook-secret", secretA, "--webhook-secret-file", file}, wantErr: "exclude each other"},
		{name: "empty file", args: []string{"--webhook-secret-file", empty}, wantErr: "holds no secret"},
		{name: "missing file", args: []string{"--webhook-secret-file", filepath.Join(dir, "nope")}, wantErr: "--webhook-secret-file"},
		{name: "short secret in file", args: []string{"--webhook-secret-file", write("short", "short\n")}, wantErr: "shorter than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(append([]string{"--simulate"}, tt.args...), env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				for _, sec := range []string{secretA, secretB} {
					if strings.Contains(err.Error(), sec) {
						t.Errorf("error %q shows a secret", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.WebhookSecrets; !slices.Equal(got, tt.want) {
				t.Errorf("secrets = %q, want %q", got, tt.want)
			}
			if got := cfg.webhookSecretFlag; got != tt.warn {
				t.Errorf("warn = %v, want %v", got, tt.warn)
			}
			if got := cfg.webhookSecretFileOpen; got != tt.loose {
				t.Errorf("file open to others = %v, want %v", got, tt.loose)
			}
		})
	}
}

// TestDebugAddrFollowsTheLoopbackRule: the profiler's listener, like the
// others, may leave loopback only with API keys or --insecure.
func TestDebugAddrFollowsTheLoopbackRule(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("t "+secretA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "loopback", args: []string{"--debug-addr", "127.0.0.1:6060"}},
		{name: "all interfaces without keys", args: []string{"--debug-addr", "0.0.0.0:6060"}, wantErr: "--debug-addr 0.0.0.0:6060 is not a loopback address"},
		{name: "all interfaces with keys", args: []string{"--debug-addr", "0.0.0.0:6060", "--api-keys-file", keys}},
		{name: "all interfaces, insecure", args: []string{"--debug-addr", ":6060", "--insecure"}},
		{name: "not host:port", args: []string{"--debug-addr", "6060"}, wantErr: "--debug-addr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(append([]string{"--simulate"}, tt.args...), env(nil), io.Discard)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatal(err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
