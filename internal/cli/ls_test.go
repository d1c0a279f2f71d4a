package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/gatewaytest"
)

// TestCLIList: ls prints the caller's requests newest first as a table or
// JSON, filtered by status and deployment and cut at --limit; --watch
// lists again until interrupted; a bad --status is a usage error.
func TestCLIList(t *testing.T) {
	sim, upstream := cliUpstream(t)
	g := startGateway(t, gatewaytest.Setup{Upstream: upstream})
	environ := map[string]string{AddrEnv: g.GRPCAddr}
	withDep := map[string]string{AddrEnv: g.GRPCAddr, DeploymentEnv: cliDeployment}
	var ids []string
	for range 3 {
		ids = append(ids, submitID(t, withDep, `{"overrides": {}}`))
	}
	// The first one runs to its end, and the gateway records it.
	for range 2 {
		if err := sim.Advance(ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	// watch ends once the gateway has recorded the end (a callback may
	// still be on its way when Advance returns).
	if code, _, errOut := runCLIWait(t, cliCall{env: withDep, args: []string{"watch", ids[0]}}); code != ExitOK {
		t.Fatalf("watch: %d %s", code, errOut)
	}

	code, out, errOut := runCLIWait(t, cliCall{env: environ, args: []string{"ls"}})
	if code != ExitOK || !strings.HasPrefix(out, "REQUEST") {
		t.Fatalf("ls: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, id := range ids {
		if !strings.Contains(out, id) {
			t.Errorf("ls does not list %s:\n%s", id, out)
		}
	}
	if !strings.Contains(out, "succeeded") || strings.Count(out, "queued") != 2 {
		t.Errorf("ls statuses:\n%s", out)
	}

	code, out, _ = runCLIWait(t, cliCall{env: environ, args: []string{"ls", "--json", "--status", "succeeded"}})
	if states := jsonStates(t, out); code != ExitOK || len(states) != 1 || states[0].GetRequestId() != ids[0] ||
		states[0].GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || states[0].GetRunDuration() == nil {
		t.Errorf("ls --json --status succeeded: exit %d\n%s", code, out)
	}
	code, out, _ = runCLIWait(t, cliCall{env: environ, args: []string{"ls", "--json", "--limit", "2", "--status", "queued"}})
	if states := jsonStates(t, out); code != ExitOK || len(states) != 2 {
		t.Errorf("ls --limit 2: exit %d\n%s", code, out)
	}
	code, out, _ = runCLIWait(t, cliCall{env: map[string]string{AddrEnv: g.GRPCAddr, DeploymentEnv: "dep-other"}, args: []string{"ls"}})
	if code != ExitOK || !strings.Contains(out, "(no requests)") {
		t.Errorf("ls on another deployment: exit %d\n%s", code, out)
	}
	code, _, errOut = runCLIWait(t, cliCall{env: environ, args: []string{"ls", "--status", "done"}})
	if code != ExitUsage || !strings.Contains(errOut, `--status "done"`) {
		t.Errorf("ls --status done: exit %d, stderr %q", code, errOut)
	}

	// usage: the one that ended, by deployment.
	code, out, errOut = runCLIWait(t, cliCall{env: environ, args: []string{"usage"}})
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != ExitOK || len(lines) != 2 ||
		!strings.HasPrefix(lines[1], cliDeployment) || strings.Fields(lines[1])[1] != "1" {
		t.Errorf("usage: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = runCLIWait(t, cliCall{env: environ, args: []string{"usage", "--json"}})
	if code != ExitOK || !strings.Contains(out, `"succeeded":"1"`) {
		t.Errorf("usage --json: exit %d, %s", code, out)
	}
	if code, _, errOut := runCLIWait(t, cliCall{env: environ, args: []string{"usage", "--since", "0s"}}); code != ExitUsage || !strings.Contains(errOut, "--since") {
		t.Errorf("usage --since 0s: exit %d, %s", code, errOut)
	}

	// --watch lists again until interrupted.
	r := &cliRun{stdout: gatewaytest.NewSyncBuffer(), stderr: gatewaytest.NewSyncBuffer(), done: make(chan int, 1)}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		r.done <- Run(ctx, []string{"ls", "--watch"}, env(environ), Stdio{in: strings.NewReader(""), out: r.stdout, err: r.stderr})
	}()
	deadline := time.After(20 * time.Second)
	for strings.Count(r.stdout.String(), "REQUEST") < 2 {
		select {
		case code := <-r.done:
			t.Fatalf("ls --watch ended (%d) before listing twice:\n%s%s", code, r.stdout, r.stderr)
		case <-deadline:
			t.Fatalf("ls --watch did not list twice:\n%s", r.stdout)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if code := r.wait(t); code != ExitInterrupted {
		t.Errorf("ls --watch interrupted: exit %d", code)
	}
}
