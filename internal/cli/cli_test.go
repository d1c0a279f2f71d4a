package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/internal/testcert"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

const (
	cliDeployment    = "dep-cli"
	cliAPIKey        = "cgk-cli-tenant-0123456789abcdef"
	cliWebhookSecret = "whs-cli-test-0123456789abcdef"
	// unknownRequest is a well-formed id RunComfy does not know.
	unknownRequest = "00000000-0000-4000-8000-000000000000"
)

// cliUpstream is a RunComfy simulator in manual mode: a job moves only when the
// test advances it, so every state is seen, in order, with no sleeps. An input
// that mentions "fail" fails; any other succeeds with two images.
func cliUpstream(t *testing.T) (*runcomfysim.Sim, string) {
	t.Helper()
	sim := runcomfysim.New(runcomfysim.Options{Manual: true})
	sim.SetOutcome(func(_ string, input []byte) runcomfysim.Outcome {
		if bytes.Contains(input, []byte("fail")) {
			return runcomfysim.Outcome{State: runcomfysim.OutcomeFailed,
				Error: &runcomfysim.Failure{Type: "ValueError", Message: "the prompt is empty"}}
		}
		return runcomfysim.Outcome{Images: 2}
	})
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close) // before srv.Close: no callback is still in flight
	return sim, srv.URL
}

// startGateway starts a gateway in this process on upstream, with callbacks to
// its own HTTP listener, and waits until it is ready.
func startGateway(t *testing.T, s gatewaytest.Setup) *gatewaytest.Gateway {
	t.Helper()
	s.WebhookSecret = cliWebhookSecret
	return gatewaytest.Start(t, s)
}

// env is a getenv that reads m.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// cliCall is one client command line with what it sees.
type cliCall struct {
	env           map[string]string
	stdin         string
	inTTY, outTTY bool
	args          []string
}

// cliRun is a client command running in this process.
type cliRun struct {
	stdout, stderr *gatewaytest.SyncBuffer
	done           chan int
}

// startCLI runs the command on a goroutine, as main would.
func startCLI(t *testing.T, c cliCall) *cliRun {
	t.Helper()
	r := &cliRun{stdout: gatewaytest.NewSyncBuffer(), stderr: gatewaytest.NewSyncBuffer(), done: make(chan int, 1)}
	sio := Stdio{in: strings.NewReader(c.stdin), out: r.stdout, err: r.stderr, inTTY: c.inTTY, outTTY: c.outTTY}
	go func() { r.done <- Run(t.Context(), c.args, env(c.env), sio) }()
	return r
}

// wait returns the exit code.
func (r *cliRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-r.done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatalf("the command did not end; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
		return -1
	}
}

// waitOutput waits until stdout mentions word, in any case.
func (r *cliRun) waitOutput(t *testing.T, word string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(strings.ToLower(r.stdout.String()), word); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output in time; stdout:\n%s\nstderr:\n%s", word, r.stdout, r.stderr)
		}
	}
}

// runCLIWait runs the command to its end.
func runCLIWait(t *testing.T, c cliCall) (code int, stdout, stderr string) {
	t.Helper()
	r := startCLI(t, c)
	code = r.wait(t)
	return code, r.stdout.String(), r.stderr.String()
}

// clientEnv is the environment of a person using the gateway at addr.
func clientEnv(addr string, kv ...string) map[string]string {
	m := map[string]string{AddrEnv: addr, DeploymentEnv: cliDeployment, APIKeyEnv: cliAPIKey}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// submitID submits the input with the CLI and returns the request id.
func submitID(t *testing.T, environ map[string]string, input string) string {
	t.Helper()
	code, out, errOut := runCLIWait(t, cliCall{env: environ, stdin: input, args: []string{"submit"}})
	id := strings.TrimSpace(out)
	if code != ExitOK || strings.Contains(id, "\n") || id == "" {
		t.Fatalf("submit: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	return id
}

// jsonStates parses --json output: one RequestState a line.
func jsonStates(t *testing.T, out string) []*comfygatev1.RequestState {
	t.Helper()
	var states []*comfygatev1.RequestState
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		st := &comfygatev1.RequestState{}
		if err := protojson.Unmarshal([]byte(line), st); err != nil {
			t.Fatalf("line %q is not a RequestState: %v", line, err)
		}
		states = append(states, st)
	}
	return states
}

// checkSeqs fails unless the seqs strictly increase and the statuses are want.
func checkSeqs(t *testing.T, states []*comfygatev1.RequestState, want ...comfygatev1.Status) {
	t.Helper()
	var got []comfygatev1.Status
	for i, st := range states {
		got = append(got, st.GetStatus())
		if i > 0 && st.GetSeq() <= states[i-1].GetSeq() {
			t.Errorf("seq %d after seq %d: not increasing", st.GetSeq(), states[i-1].GetSeq())
		}
	}
	if !slicesEqual(got, want) {
		t.Errorf("statuses %v, want %v", got, want)
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// plainStates returns the states of watch's plain lines and the lines after them.
func plainStates(t *testing.T, lines []string) (states, rest []string) {
	t.Helper()
	// A state line on a pipe: elapsed time, then the state.
	plainLine := regexp.MustCompile(`^ *\d+\.\ds  ([a-z]+)`)
	for i, line := range lines {
		m := plainLine.FindStringSubmatch(line)
		if m == nil {
			return states, lines[i:]
		}
		states = append(states, m[1])
	}
	return states, nil
}

// TestCLIWatch follows requests to their end through submit --watch and watch,
// on a pipe, on a terminal and in JSON, and checks the exit code each outcome
// gives.
func TestCLIWatch(t *testing.T) {
	sim, upstream := cliUpstream(t)
	g := startGateway(t, gatewaytest.Setup{Upstream: upstream})
	environ := clientEnv(g.GRPCAddr, APIKeyEnv, "")
	inputFile := filepath.Join(t.TempDir(), "input.json")
	if err := os.WriteFile(inputFile, []byte(`{"prompt": "a cat"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		stdin string
		// args: "{file}" is the input file; "{id}" is a request submitted
		// first (else the command's first line gives the id).
		args []string
		tty  bool
		// cancel cancels the request once it runs, rather than letting it end.
		cancel bool
		want   int
		check  func(t *testing.T, stdout string)
	}{
		{
			name: "submit --watch from a file, on a pipe: plain lines, then the output URLs",
			args: []string{"submit", "--watch", "--input", "{file}"},
			want: ExitOK,
			check: func(t *testing.T, out string) {
				if strings.Contains(out, "\r") {
					t.Errorf("a carriage return on a pipe:\n%q", out)
				}
				lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
				states, rest := plainStates(t, lines[1:])
				if !slicesEqual(states, []string{"queued", "running", "succeeded"}) {
					t.Errorf("states %q, want queued, running, succeeded; output:\n%s", states, out)
				}
				if len(rest) != 2 || !strings.HasPrefix(rest[0], "http") || !strings.HasPrefix(rest[1], "http") {
					t.Errorf("want the two output URLs after the states, got %q", rest)
				}
			},
		},
		{
			name:  "submit --watch --json from stdin: one object per state; failed exits 1",
			stdin: `{"prompt": "fail"}`,
			args:  []string{"submit", "--watch", "--json"},
			want:  ExitFailed,
			check: func(t *testing.T, out string) {
				states := jsonStates(t, out)
				checkSeqs(t, states, comfygatev1.Status_STATUS_QUEUED, comfygatev1.Status_STATUS_RUNNING, comfygatev1.Status_STATUS_FAILED)
				if last := states[len(states)-1]; last.GetError().GetMessage() != "the prompt is empty" {
					t.Errorf("the last state's error is %v", last.GetError())
				}
			},
		},
		{
			name:   "watch of a request cancelled while it runs exits 2",
			args:   []string{"watch", "{id}"},
			cancel: true,
			want:   ExitCancelled,
			check: func(t *testing.T, out string) {
				// The cancel RunComfy took, then its end.
				states, rest := plainStates(t, strings.Split(strings.TrimSuffix(out, "\n"), "\n"))
				if !slicesEqual(states, []string{"queued", "running", "running", "cancelled"}) || len(rest) != 0 {
					t.Errorf("states %q then %q, want queued, running, running (cancelling), cancelled and nothing more", states, rest)
				}
				if !strings.Contains(out, "running, cancelling\n") {
					t.Errorf("no state says the cancel is under way: %q", out)
				}
			},
		},
		{
			name: "watch on a terminal: one live line, then the output URLs",
			args: []string{"watch", "{id}"},
			tty:  true,
			want: ExitOK,
			check: func(t *testing.T, out string) {
				lines := strings.Split(out, "\n")
				if len(lines) != 4 || lines[3] != "" {
					t.Fatalf("want the live line and two URLs, got %q", out)
				}
				live := strings.Split(lines[0], "\r")
				if !strings.Contains(lines[0], "\rqueued") || !strings.Contains(lines[0], "\rrunning") ||
					!strings.HasPrefix(live[len(live)-1], "succeeded  ") {
					t.Errorf("live line %q: want queued, running, then succeeded last", lines[0])
				}
				if !strings.HasPrefix(lines[1], "http") || !strings.HasPrefix(lines[2], "http") {
					t.Errorf("want the output URLs after the live line, got %q", lines[1:])
				}
			},
		},
		{
			name: "watch --json of a request that has started: seq from 1 to the end",
			args: []string{"watch", "--json", "{id}"},
			want: ExitOK,
			check: func(t *testing.T, out string) {
				checkSeqs(t, jsonStates(t, out), comfygatev1.Status_STATUS_QUEUED, comfygatev1.Status_STATUS_RUNNING, comfygatev1.Status_STATUS_SUCCEEDED)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := ""
			var args []string
			for _, a := range tc.args {
				switch a {
				case "{file}":
					a = inputFile
				case "{id}":
					id = submitID(t, environ, `{"prompt": "a dog"}`)
					a = id
				}
				args = append(args, a)
			}
			r := startCLI(t, cliCall{env: environ, stdin: tc.stdin, outTTY: tc.tty, args: args})
			r.waitOutput(t, "queued")
			if id == "" {
				first, _, _ := strings.Cut(r.stdout.String(), "\n")
				if strings.HasPrefix(first, "{") {
					id = jsonStates(t, first)[0].GetRequestId()
				} else {
					id = first
				}
			}
			if err := sim.Advance(id); err != nil {
				t.Fatal(err)
			}
			r.waitOutput(t, "running")
			if tc.cancel {
				code, out, errOut := runCLIWait(t, cliCall{env: environ, args: []string{"cancel", id}})
				if code != ExitOK || !strings.Contains(out, "accepted") {
					t.Errorf("cancel: exit %d, stdout %q, stderr %q", code, out, errOut)
				}
			}
			if err := sim.Advance(id); err != nil {
				t.Fatal(err)
			}
			code := r.wait(t)
			out := r.stdout.String()
			if code != tc.want {
				t.Errorf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", code, tc.want, out, r.stderr)
			}
			tc.check(t, out)
		})
	}
}

// TestCLICommands runs each command against a gateway that requires API keys:
// output, errors and exit codes, including every usage error.
func TestCLICommands(t *testing.T) {
	sim, upstream := cliUpstream(t)
	keysFile := filepath.Join(t.TempDir(), "api-keys")
	if err := os.WriteFile(keysFile, []byte("tenant-cli "+cliAPIKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, gatewaytest.Setup{Upstream: upstream, Args: []string{"--api-keys-file", keysFile}})
	environ := clientEnv(g.GRPCAddr)

	// finish drives a submitted request to its end and waits until the
	// gateway has recorded it.
	finish := func(input string, want int) string {
		t.Helper()
		id := submitID(t, environ, input)
		for range 2 {
			if err := sim.Advance(id); err != nil {
				t.Fatal(err)
			}
		}
		if code, out, errOut := runCLIWait(t, cliCall{env: environ, args: []string{"watch", id}}); code != want {
			t.Fatalf("watch: exit %d, want %d; stdout %q, stderr %q", code, want, out, errOut)
		}
		return id
	}
	ids := map[string]string{
		"{ok}":        finish(`{"prompt": "a cat"}`, ExitOK),
		"{failed}":    finish(`{"prompt": "fail"}`, ExitFailed),
		"{cancel-me}": submitID(t, environ, `{"prompt": "a queued cat"}`),
		"{queued}":    submitID(t, environ, `{"prompt": "another queued cat"}`),
	}
	dir := t.TempDir()
	// The input as a person might write it: spaces, key order and a seed no
	// float64 holds must reach RunComfy unchanged.
	const exactInput = "{ \"overrides\" : {\"3\": {\"inputs\": {\"seed\": 18446744073709551615, \"cfg\": 7}}} }\n"
	ids["{file}"] = filepath.Join(dir, "input.json")
	if err := os.WriteFile(ids["{file}"], []byte(exactInput), 0o600); err != nil {
		t.Fatal(err)
	}
	ids["{missing}"] = filepath.Join(dir, "missing.json")
	ids["{closed}"] = gatewaytest.FreeAddr(t)

	forwarded := func(want string) func(t *testing.T, out string) {
		return func(t *testing.T, out string) {
			rec, ok := sim.LastSubmit()
			if !ok || string(rec.Body) != want {
				t.Errorf("RunComfy received %q, want %q", rec.Body, want)
			}
		}
	}
	tests := []struct {
		name       string
		env        map[string]string // nil: environ
		stdin      string
		inTTY      bool
		args       []string // with the placeholders of ids
		want       int
		wantStdout []string
		wantStderr []string
		check      func(t *testing.T, stdout string)
	}{
		{name: "status of a succeeded request", args: []string{"status", "{ok}"}, want: ExitOK,
			wantStdout: []string{"status    succeeded\n", "output    http", "finished  "}},
		{name: "flags after the request id", args: []string{"result", "{ok}", "--json"}, want: ExitOK,
			check: func(t *testing.T, out string) {
				states := jsonStates(t, out)
				if len(states) != 1 || states[0].GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || len(states[0].GetOutputUrls()) != 2 {
					t.Errorf("want one succeeded state with two URLs, got %v", states)
				}
			}},
		{name: "result of a failed request", args: []string{"result", "{failed}"}, want: ExitOK,
			wantStdout: []string{"status    failed\n", "error     ValueError: the prompt is empty"}},
		{name: "watch of a failed request exits 1", args: []string{"watch", "{failed}"}, want: ExitFailed,
			wantStdout: []string{"failed\n", "error: ValueError: the prompt is empty\n"}},
		{name: "status of a queued request", args: []string{"status", "{queued}"}, want: ExitOK,
			wantStdout: []string{"status    queued"}},
		{name: "cancel of a queued request", args: []string{"cancel", "{cancel-me}"}, want: ExitOK,
			wantStdout: []string{"cancel    cancelled\n", "status    cancelled\n"}},
		{name: "cancel of a finished request", args: []string{"cancel", "{ok}"}, want: ExitOK,
			wantStdout: []string{"cancel    not cancellable", "status    succeeded"}},
		{name: "watch gives up after --timeout", args: []string{"watch", "--timeout", "200ms", "{queued}"}, want: ExitError,
			wantStderr: []string{"gave up after --timeout 200ms"}},
		{name: "--deployment and --addr win over the environment",
			env:  clientEnv("{closed}", DeploymentEnv, "not a valid id!"),
			args: []string{"status", "--deployment", cliDeployment, "--addr", g.GRPCAddr, "{ok}"}, want: ExitOK,
			wantStdout: []string{"succeeded"}},

		{name: "submit from a file: the id, and the bytes as written", args: []string{"submit", "--input", "{file}"}, want: ExitOK,
			check: func(t *testing.T, out string) {
				if !regexp.MustCompile(`^[0-9a-f-]{36}\n$`).MatchString(out) {
					t.Errorf("want the request id alone, got %q", out)
				}
				forwarded(exactInput)(t, out)
			}},
		{name: "submit --json from stdin", stdin: exactInput, args: []string{"submit", "--json", "--input", "-"}, want: ExitOK,
			check: func(t *testing.T, out string) {
				states := jsonStates(t, out)
				if len(states) != 1 || states[0].GetStatus() != comfygatev1.Status_STATUS_QUEUED || states[0].GetSeq() < 1 {
					t.Errorf("want the queued state, recorded, got %v", states)
				}
				forwarded(exactInput)(t, out)
			}},
		{name: "submit from a terminal says where it reads", inTTY: true, stdin: `{}`, args: []string{"submit"}, want: ExitOK,
			wantStderr: []string{"end it with Ctrl-D"}},
		{name: "submit with an idempotency key twice gives one request", stdin: `{"n": 1}`,
			args: []string{"submit", "--idempotency-key", "job-42"}, want: ExitOK,
			check: func(t *testing.T, out string) {
				_, again, _ := runCLIWait(t, cliCall{env: environ, stdin: `{"n": 1}`, args: []string{"submit", "--idempotency-key", "job-42"}})
				if again != out {
					t.Errorf("second submit gave %q, first %q", again, out)
				}
			}},
		{name: "submit with deadlines", stdin: `{}`,
			args: []string{"submit", "--json", "--max-queue-duration", "90s", "--max-run-duration", "1h"}, want: ExitOK,
			check: func(t *testing.T, out string) {
				states := jsonStates(t, out)
				if len(states) != 1 || states[0].GetMaxQueueDuration().AsDuration() != 90*time.Second ||
					states[0].GetMaxRunDuration().AsDuration() != time.Hour || states[0].GetDeadline() == nil {
					t.Errorf("want the request with its deadlines, got %v", states)
				}
			}},

		{name: "unknown request", args: []string{"status", unknownRequest}, want: ExitError,
			wantStderr: []string{"comfygate status: NotFound: "}},
		{name: "watch of an unknown request", args: []string{"watch", unknownRequest}, want: ExitError,
			wantStderr: []string{"comfygate watch: NotFound: "}},
		{name: "wrong API key", env: clientEnv(g.GRPCAddr, APIKeyEnv, "cgk-wrong-key-0123456789abcdef"),
			args: []string{"status", "{ok}"}, want: ExitError,
			wantStderr: []string{"comfygate status: Unauthenticated: missing or unknown API key"}},
		{name: "no API key", env: clientEnv(g.GRPCAddr, APIKeyEnv, ""), stdin: `{}`,
			args: []string{"submit", "--watch"}, want: ExitError,
			wantStderr: []string{"comfygate submit: Unauthenticated: "}},
		{name: "no gateway at the address", env: clientEnv("{closed}"), args: []string{"watch", "{ok}"}, want: ExitError,
			wantStderr: []string{"comfygate watch: Unavailable: ", "is the gateway running at"}},

		{name: "help", args: []string{"watch", "--help"}, want: ExitOK,
			wantStderr: []string{"Usage: comfygate watch [flags] REQUEST_ID", "--addr host:port", "env COMFYGATE_ADDR", "COMFYGATE_API_KEY", "Exit codes:"}},
		{name: "no request id", args: []string{"status"}, want: ExitUsage,
			wantStderr: []string{"want one REQUEST_ID, got 0", "Run 'comfygate status --help'"}},
		{name: "two request ids", args: []string{"result", "{ok}", "{failed}"}, want: ExitUsage,
			wantStderr: []string{"want one REQUEST_ID, got 2"}},
		{name: "malformed request id", args: []string{"cancel", "../x"}, want: ExitUsage,
			wantStderr: []string{`request id "../x"`}},
		{name: "no deployment", env: clientEnv(g.GRPCAddr, DeploymentEnv, ""), args: []string{"status", "{ok}"}, want: ExitUsage,
			wantStderr: []string{"no deployment: give --deployment or set COMFYGATE_DEPLOYMENT"}},
		{name: "unknown flag", args: []string{"status", "--verbose", "{ok}"}, want: ExitUsage,
			wantStderr: []string{"flag provided but not defined: -verbose"}},
		{name: "idempotency key too long", args: []string{"submit", "--idempotency-key", strings.Repeat("k", 256)}, want: ExitUsage,
			wantStderr: []string{"--idempotency-key: is longer than 255 characters"}},
		{name: "idempotency key not ASCII", args: []string{"submit", "--idempotency-key", "clé"}, want: ExitUsage,
			wantStderr: []string{"--idempotency-key: may contain only printable ASCII"}},
		{name: "deadline too short", args: []string{"submit", "--max-queue-duration", "500ms"}, want: ExitUsage,
			wantStderr: []string{"--max-queue-duration 500ms: want 1s to 168h"}},
		{name: "deadline too long", args: []string{"submit", "--max-run-duration", "200h"}, want: ExitUsage,
			wantStderr: []string{"--max-run-duration 200h0m0s: want 1s to 168h"}},
		{name: "empty address", args: []string{"status", "--addr", "", "{ok}"}, want: ExitUsage,
			wantStderr: []string{`--addr "": is empty`}},
		{name: "address without a port", args: []string{"status", "--addr", "localhost", "{ok}"}, want: ExitUsage,
			wantStderr: []string{`--addr "localhost": want host:port`}},
		{name: "negative timeout", args: []string{"status", "--timeout", "-1s", "{ok}"}, want: ExitUsage,
			wantStderr: []string{"--timeout must not be negative"}},
		{name: "submit takes no arguments", args: []string{"submit", "{file}"}, want: ExitUsage,
			wantStderr: []string{"give the input with --input FILE"}},
		{name: "input not JSON", stdin: `{"prompt": }`, args: []string{"submit"}, want: ExitUsage,
			wantStderr: []string{"the input (standard input) is not valid JSON: invalid character '}'"}},
		{name: "input not an object", stdin: `["a", "b"]`, args: []string{"submit"}, want: ExitUsage,
			wantStderr: []string{"must be a JSON object"}},
		{name: "empty input", stdin: " \n", args: []string{"submit", "--watch"}, want: ExitUsage,
			wantStderr: []string{"is empty"}},
		{name: "missing input file", args: []string{"submit", "--input", "{missing}"}, want: ExitUsage,
			wantStderr: []string{"reading the input: open "}},
		{name: "missing CA file", args: []string{"status", "--tls-ca", "{missing}", "{ok}"}, want: ExitUsage,
			wantStderr: []string{"--tls-ca: open "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			callEnv := environ
			if tc.env != nil {
				callEnv = map[string]string{}
				for k, v := range tc.env {
					if p, ok := ids[v]; ok {
						v = p
					}
					callEnv[k] = v
				}
			}
			var args []string
			for _, a := range tc.args {
				if p, ok := ids[a]; ok {
					a = p
				}
				args = append(args, a)
			}
			submitsBefore := len(sim.Submits())
			code, out, errOut := runCLIWait(t, cliCall{env: callEnv, stdin: tc.stdin, inTTY: tc.inTTY, args: args})
			if code != tc.want {
				t.Errorf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", code, tc.want, out, errOut)
			}
			for _, s := range tc.wantStdout {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.wantStderr {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut)
				}
			}
			if tc.want == ExitUsage && len(sim.Submits()) != submitsBefore {
				t.Errorf("a usage error reached RunComfy")
			}
			if strings.Contains(out+errOut, cliAPIKey) {
				t.Errorf("the output shows the API key")
			}
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}
}

// TestCLIWatchResumesAfterRestart: a gateway stopped mid-watch (as by SIGTERM
// in a rolling deploy) ends the stream with UNAVAILABLE; watch reconnects to
// its successor, which shares the state in Redis, and resumes after the last
// seq it showed: every state once, in order, and the exit code of the outcome.
func TestCLIWatchResumesAfterRestart(t *testing.T) {
	rs, err := redistest.Find()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	sim, upstream := cliUpstream(t)
	setup := gatewaytest.Setup{
		Upstream: upstream, GRPCAddr: gatewaytest.FreeAddr(t), HTTPAddr: gatewaytest.FreeAddr(t),
		Args: []string{"--redis-url", rs.URL, "--redis-prefix", redistest.Prefix(t)},
	}
	first := startGateway(t, setup)
	environ := clientEnv(first.GRPCAddr, APIKeyEnv, "")
	id := submitID(t, environ, `{"prompt": "a cat"}`)

	r := startCLI(t, cliCall{env: environ, args: []string{"watch", "--json", id}})
	r.waitOutput(t, "status_queued")
	if err := first.Stop(); err != nil {
		t.Fatalf("first gateway: %v; logs:\n%s", err, first.Logs)
	}
	gatewaytest.WaitUntil(t, "watch notices the drain", func() bool {
		return strings.Contains(r.stderr.String(), "reconnecting to resume after seq 1")
	})
	startGateway(t, setup)
	if err := sim.Advance(id); err != nil {
		t.Fatal(err)
	}
	r.waitOutput(t, "status_running")
	if err := sim.Advance(id); err != nil {
		t.Fatal(err)
	}
	if code := r.wait(t); code != ExitOK {
		t.Errorf("exit %d, want 0; stderr:\n%s", code, r.stderr)
	}
	checkSeqs(t, jsonStates(t, r.stdout.String()),
		comfygatev1.Status_STATUS_QUEUED, comfygatev1.Status_STATUS_RUNNING, comfygatev1.Status_STATUS_SUCCEEDED)
	if errOut := r.stderr.String(); !strings.Contains(errOut, "Unavailable: this replica is shutting down") {
		t.Errorf("stderr does not say why it reconnected:\n%s", errOut)
	}
}

// TestCLITLS: --tls-ca verifies a gateway serving TLS; the system roots do not
// know its certificate, and a plaintext client gets nowhere.
func TestCLITLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSignedCert(t, dir)
	_, upstream := cliUpstream(t)
	g := startGateway(t, gatewaytest.Setup{
		Upstream: upstream,
		Args:     []string{"--tls-cert", certFile, "--tls-key", keyFile},
		ProbeTLS: &tls.Config{RootCAs: pool},
	})
	environ := clientEnv(g.GRPCAddr, APIKeyEnv, "")
	tests := []struct {
		name       string
		args       []string
		want       int
		wantStderr string
	}{
		{"verified by --tls-ca", []string{"submit", "--tls-ca", certFile}, ExitOK, ""},
		{"system roots do not know the certificate", []string{"submit", "--tls"}, ExitError, "certificate"},
		{"plaintext", []string{"submit"}, ExitError, "Unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLIWait(t, cliCall{env: environ, stdin: `{}`, args: tc.args})
			if code != tc.want || !strings.Contains(errOut, tc.wantStderr) {
				t.Errorf("exit %d, want %d with %q on stderr; stdout %q, stderr %q", code, tc.want, tc.wantStderr, out, errOut)
			}
		})
	}
}

// selfSignedCert writes a certificate for 127.0.0.1, its own root, and its key.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	c := testcert.New(t)
	certFile, keyFile = c.WriteFiles(t, dir)
	return certFile, keyFile, c.Roots
}

// TestCLIDeadlineFlags: against a deployment whose default queue deadline is
// 10 minutes, a submit without the flag gets the default, one with a value
// gets it, and one with 0 gets none (it turns the default off, as over gRPC
// and REST).
func TestCLIDeadlineFlags(t *testing.T) {
	_, upstream := cliUpstream(t)
	deps := filepath.Join(t.TempDir(), "deployments.yaml")
	if err := os.WriteFile(deps, []byte("default:\n  max_queue_duration: 10m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, gatewaytest.Setup{Upstream: upstream, Args: []string{"--deployments-file", deps}})
	environ := clientEnv(g.GRPCAddr, APIKeyEnv, "")
	tests := []struct {
		name string
		args []string
		want time.Duration // 0: none
	}{
		{"no flag: the deployment's default", nil, 10 * time.Minute},
		{"a value", []string{"--max-queue-duration", "90s"}, 90 * time.Second},
		{"0: none, not even the default", []string{"--max-queue-duration", "0"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLIWait(t, cliCall{env: environ, stdin: `{}`, args: append([]string{"submit", "--json"}, tt.args...)})
			if code != ExitOK {
				t.Fatalf("exit %d; stderr %q", code, errOut)
			}
			states := jsonStates(t, out)
			if len(states) != 1 {
				t.Fatalf("states %v, want one", states)
			}
			got := time.Duration(0)
			if d := states[0].GetMaxQueueDuration(); d != nil {
				got = d.AsDuration()
			}
			if got != tt.want {
				t.Errorf("max queue duration %v, want %v", got, tt.want)
			}
		})
	}
}
