package flagenv

import (
	"flag"
	"strings"
	"testing"
)

func TestSetFromEnvAndPrintFlags(t *testing.T) {
	tests := []struct {
		name      string
		envOf     EnvOf
		env       map[string]string
		args      []string
		wantAddr  string
		wantN     int
		wantErr   string
		wantUsage []string
		notUsage  []string
	}{
		{name: "variable sets the flag", envOf: Prefixed("APP_"), env: map[string]string{"APP_LISTEN_ADDR": "h:1"},
			wantAddr: "h:1", wantN: 3,
			wantUsage: []string{"--listen-addr host:port\n", "(env APP_LISTEN_ADDR, default :80)", "--verbose\n", "(env APP_VERBOSE)", "(env APP_N, default 3)"}},
		{name: "command line wins", envOf: Prefixed("APP_"), env: map[string]string{"APP_LISTEN_ADDR": "h:1", "APP_N": "7"},
			args: []string{"--listen-addr", "h:2"}, wantAddr: "h:2", wantN: 7},
		{name: "bad values are all named", envOf: Prefixed("APP_"), env: map[string]string{"APP_N": "seven", "APP_VERBOSE": "maybe"},
			wantErr: "APP_N"},
		{name: "only the listed flags", envOf: Only(map[string]string{"n": "N_VAR"}), env: map[string]string{"APP_LISTEN_ADDR": "h:1", "N_VAR": "9"},
			wantAddr: ":80", wantN: 9, wantUsage: []string{"(env N_VAR, default 3)", "(default :80)"}, notUsage: []string{"APP_"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("app", flag.ContinueOnError)
			addr := fs.String("listen-addr", ":80", "where to listen (`host:port`)")
			n := fs.Int("n", 3, "how many")
			fs.Bool("verbose", false, "say more")
			err := SetFromEnv(fs, tt.envOf, func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "APP_VERBOSE") {
					t.Fatalf("err = %v, want both variables named", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if *addr != tt.wantAddr || *n != tt.wantN {
				t.Errorf("addr, n = %q, %d; want %q, %d", *addr, *n, tt.wantAddr, tt.wantN)
			}
			var out strings.Builder
			PrintFlags(&out, fs, tt.envOf)
			for _, w := range tt.wantUsage {
				if !strings.Contains(out.String(), w) {
					t.Errorf("usage lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.notUsage {
				if strings.Contains(out.String(), w) {
					t.Errorf("usage has %q:\n%s", w, out.String())
				}
			}
		})
	}
}
