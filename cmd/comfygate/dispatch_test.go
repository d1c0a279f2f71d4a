package main

import (
	"bytes"
	"errors"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/cli"
	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// mainHelperEnv makes TestMainHelper act as the comfygate binary.
const mainHelperEnv = "COMFYGATE_TEST_RUN_MAIN"

// TestMainHelper is not a test: run by TestMainDispatchesCommands as a child
// process (the os/exec pattern), it runs main with the arguments after "--",
// so the real dispatch and exit codes are tested without linking a binary.
func TestMainHelper(t *testing.T) {
	if os.Getenv(mainHelperEnv) != "1" {
		t.Skip("runs only as a child of TestMainDispatchesCommands")
	}
	for i, a := range os.Args {
		if a == "--" {
			os.Args = append([]string{"comfygate"}, os.Args[i+1:]...)
			break
		}
	}
	main()
	os.Exit(0) // the server's --help returns from main
}

// TestMainDispatchesCommands runs the client commands through main in a process
// of their own: main dispatches on the first argument, exit codes reach the
// shell, and with no command (or a flag first) the binary is still the server.
func TestMainDispatchesCommands(t *testing.T) {
	sim := runcomfysim.New(runcomfysim.Options{Manual: true})
	sim.SetOutcome(func(string, []byte) runcomfysim.Outcome {
		return runcomfysim.Outcome{State: runcomfysim.OutcomeFailed,
			Error: &runcomfysim.Failure{Type: "ValueError", Message: "the prompt is empty"}}
	})
	upstream := httptest.NewServer(sim.Handler())
	t.Cleanup(upstream.Close)
	t.Cleanup(sim.Close) // before upstream.Close: no callback is still in flight
	g := gatewaytest.Start(t, gatewaytest.Setup{Upstream: upstream.URL})
	addr := g.GRPCAddr
	run := func(stdin string, args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestMainHelper$", "--"}, args...)...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, app.EnvPrefix) {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, mainHelperEnv+"=1", cli.AddrEnv+"="+addr, cli.DeploymentEnv+"=dep-main")
		cmd.Stdin = strings.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}

	code, out, errOut := run(`{"prompt": "fail"}`, "submit")
	id := strings.TrimSpace(out)
	if code != cli.ExitOK || !runcomfy.ValidID(id) {
		t.Fatalf("submit: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for range 2 {
		if err := sim.Advance(id); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name       string
		args       []string
		want       int
		wantOutput string
	}{
		{"watch of a failed request", []string{"watch", id}, cli.ExitFailed, "error: ValueError: the prompt is empty"},
		{"usage error", []string{"result"}, cli.ExitUsage, "want one REQUEST_ID"},
		{"the server's help is unchanged", []string{"--help"}, cli.ExitOK, "Usage: comfygate [flags]"},
		{"--help lists the commands", []string{"--help"}, cli.ExitOK, "Modes and commands:"},
		{"help lists the commands", []string{"help"}, cli.ExitOK, "Modes and commands:"},
		{"help names the server's flags", []string{"help"}, cli.ExitOK, "--grpc-addr"},
		{"help of a command", []string{"help", "watch"}, cli.ExitOK, "Usage: comfygate watch [flags] REQUEST_ID"},
		{"unknown command", []string{"sumbit"}, cli.ExitUsage, `unknown command "sumbit"; run 'comfygate help'`},
		{"help of an unknown command", []string{"help", "sumbit"}, cli.ExitUsage, `unknown command "sumbit"`},
		{"a flag first is the server", []string{"--grpc-addr", "nope", "status"}, 1, "unexpected arguments"},
		{"a client flag first gets a hint", []string{"--deployment", "dep-main", "status", id}, 1, `"status" is a client command: give it first, then its flags`},
		{"version", []string{"version"}, cli.ExitOK, ", go1."},
		{"--version", []string{"--version"}, cli.ExitOK, ", go1."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run("", tc.args...)
			if code != tc.want || !strings.Contains(out+errOut, tc.wantOutput) {
				t.Errorf("exit %d, want %d with %q; stdout %q, stderr %q", code, tc.want, tc.wantOutput, out, errOut)
			}
		})
	}
	t.Run("help has a line for every command", func(t *testing.T) {
		_, out, _ := run("", "help")
		for _, c := range append(cli.Commands(), cli.Command{Name: "version"}, cli.Command{Name: "help"}) {
			if !strings.Contains(out, "\n  "+c.Name+" ") {
				t.Errorf("help has no line for %s:\n%s", c.Name, out)
			}
		}
	})
	t.Run("the CLI pointed at the HTTP port says so", func(t *testing.T) {
		addr = g.HTTPAddr
		defer func() { addr = g.GRPCAddr }()
		code, out, errOut := run("", "status", id)
		if code != cli.ExitError || !strings.Contains(errOut, "it is the gateway's HTTP port") || !strings.Contains(errOut, "--grpc-addr") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})
}
