package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/internal/testcert"
	"github.com/comfygate/comfygate/runcomfy"
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

// testGateway is a gateway that realMain runs in this process, exactly as the
// binary runs it.
type testGateway struct {
	grpcAddr, httpAddr string
	logs               *syncBuffer
	stop               func() error
}

// gatewaySetup says how to start a testGateway.
type gatewaySetup struct {
	upstream           string
	grpcAddr, httpAddr string      // "" picks free ports
	args               []string    // more flags
	probeTLS           *tls.Config // set when the gateway serves TLS
}

// startGateway starts a gateway on upstream, with callbacks to its own HTTP
// listener, and waits until it is ready. It stops at cleanup at the latest.
func startGateway(t *testing.T, s gatewaySetup) *testGateway {
	t.Helper()
	g := &testGateway{grpcAddr: s.grpcAddr, httpAddr: s.httpAddr, logs: &syncBuffer{ch: make(chan struct{}, 1)}}
	if g.grpcAddr == "" {
		g.grpcAddr = freeAddr(t)
	}
	if g.httpAddr == "" {
		g.httpAddr = freeAddr(t)
	}
	args := append([]string{
		"--grpc-addr", g.grpcAddr, "--http-addr", g.httpAddr, "--runcomfy-url", s.upstream,
		"--public-url", "http://" + g.httpAddr, "--webhook-secret", cliWebhookSecret,
		"--shutdown-timeout", "5s", "--log-level", "warn",
	}, s.args...)
	getenv := env(map[string]string{tokenEnv: "rct-cli-test-token"})
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		runErr = realMain(ctx, args, getenv, g.logs)
	}()
	g.stop = sync.OnceValue(func() error {
		cancel()
		<-exited
		return runErr
	})
	t.Cleanup(func() {
		if err := g.stop(); err != nil {
			t.Errorf("gateway: %v; logs:\n%s", err, g.logs)
		}
	})

	scheme := "http"
	if s.probeTLS != nil {
		scheme = "https"
	}
	probe := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: s.probeTLS}}
	defer probe.CloseIdleConnections()
	waitUntil(t, "gateway ready", func() bool {
		select {
		case <-exited:
			t.Fatalf("gateway exited: %v; logs:\n%s", runErr, g.logs)
		default:
		}
		resp, err := probe.Get(scheme + "://" + g.httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return g
}

// waitUntil polls cond for up to 10 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in time", what)
		}
	}
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
	stdout, stderr *syncBuffer
	done           chan int
}

// startCLI runs the command on a goroutine, as main would.
func startCLI(t *testing.T, c cliCall) *cliRun {
	t.Helper()
	r := &cliRun{stdout: &syncBuffer{ch: make(chan struct{}, 1)}, stderr: &syncBuffer{ch: make(chan struct{}, 1)}, done: make(chan int, 1)}
	sio := stdio{in: strings.NewReader(c.stdin), out: r.stdout, err: r.stderr, inTTY: c.inTTY, outTTY: c.outTTY}
	go func() { r.done <- runCLI(t.Context(), c.args, env(c.env), sio) }()
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
	m := map[string]string{addrEnv: addr, deploymentEnv: cliDeployment, apiKeyEnv: cliAPIKey}
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
	if code != exitOK || strings.Contains(id, "\n") || id == "" {
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
	g := startGateway(t, gatewaySetup{upstream: upstream})
	environ := clientEnv(g.grpcAddr, apiKeyEnv, "")
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
			want: exitOK,
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
			want:  exitFailed,
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
			want:   exitCancelled,
			check: func(t *testing.T, out string) {
				states, rest := plainStates(t, strings.Split(strings.TrimSuffix(out, "\n"), "\n"))
				if !slicesEqual(states, []string{"queued", "running", "cancelled"}) || len(rest) != 0 {
					t.Errorf("states %q then %q, want queued, running, cancelled and nothing more", states, rest)
				}
			},
		},
		{
			name: "watch on a terminal: one live line, then the output URLs",
			args: []string{"watch", "{id}"},
			tty:  true,
			want: exitOK,
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
			want: exitOK,
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
				if code != exitOK || !strings.Contains(out, "accepted") {
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
	g := startGateway(t, gatewaySetup{upstream: upstream, args: []string{"--api-keys-file", keysFile}})
	environ := clientEnv(g.grpcAddr)

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
		"{ok}":        finish(`{"prompt": "a cat"}`, exitOK),
		"{failed}":    finish(`{"prompt": "fail"}`, exitFailed),
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
	ids["{closed}"] = freeAddr(t)

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
		{name: "status of a succeeded request", args: []string{"status", "{ok}"}, want: exitOK,
			wantStdout: []string{"status    succeeded\n", "output    http", "finished  "}},
		{name: "flags after the request id", args: []string{"result", "{ok}", "--json"}, want: exitOK,
			check: func(t *testing.T, out string) {
				states := jsonStates(t, out)
				if len(states) != 1 || states[0].GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || len(states[0].GetOutputUrls()) != 2 {
					t.Errorf("want one succeeded state with two URLs, got %v", states)
				}
			}},
		{name: "result of a failed request", args: []string{"result", "{failed}"}, want: exitOK,
			wantStdout: []string{"status    failed\n", "error     ValueError: the prompt is empty"}},
		{name: "watch of a failed request exits 1", args: []string{"watch", "{failed}"}, want: exitFailed,
			wantStdout: []string{"failed\n", "error: ValueError: the prompt is empty\n"}},
		{name: "status of a queued request", args: []string{"status", "{queued}"}, want: exitOK,
			wantStdout: []string{"status    queued"}},
		{name: "cancel of a queued request", args: []string{"cancel", "{cancel-me}"}, want: exitOK,
			wantStdout: []string{"cancel    cancelled\n", "status    cancelled\n"}},
		{name: "cancel of a finished request", args: []string{"cancel", "{ok}"}, want: exitOK,
			wantStdout: []string{"cancel    not cancellable", "status    succeeded"}},
		{name: "watch gives up after --timeout", args: []string{"watch", "--timeout", "200ms", "{queued}"}, want: exitError,
			wantStderr: []string{"gave up after --timeout 200ms"}},
		{name: "--deployment and --addr win over the environment",
			env:  clientEnv("{closed}", deploymentEnv, "not a valid id!"),
			args: []string{"status", "--deployment", cliDeployment, "--addr", g.grpcAddr, "{ok}"}, want: exitOK,
			wantStdout: []string{"succeeded"}},

		{name: "submit from a file: the id, and the bytes as written", args: []string{"submit", "--input", "{file}"}, want: exitOK,
			check: func(t *testing.T, out string) {
				if !regexp.MustCompile(`^[0-9a-f-]{36}\n$`).MatchString(out) {
					t.Errorf("want the request id alone, got %q", out)
				}
				forwarded(exactInput)(t, out)
			}},
		{name: "submit --json from stdin", stdin: exactInput, args: []string{"submit", "--json", "--input", "-"}, want: exitOK,
			check: func(t *testing.T, out string) {
				states := jsonStates(t, out)
				if len(states) != 1 || states[0].GetStatus() != comfygatev1.Status_STATUS_QUEUED || states[0].GetSeq() < 1 {
					t.Errorf("want the queued state, recorded, got %v", states)
				}
				forwarded(exactInput)(t, out)
			}},
		{name: "submit from a terminal says where it reads", inTTY: true, stdin: `{}`, args: []string{"submit"}, want: exitOK,
			wantStderr: []string{"end it with Ctrl-D"}},
		{name: "submit with an idempotency key twice gives one request", stdin: `{"n": 1}`,
			args: []string{"submit", "--idempotency-key", "job-42"}, want: exitOK,
			check: func(t *testing.T, out string) {
				_, again, _ := runCLIWait(t, cliCall{env: environ, stdin: `{"n": 1}`, args: []string{"submit", "--idempotency-key", "job-42"}})
				if again != out {
					t.Errorf("second submit gave %q, first %q", again, out)
				}
			}},

		{name: "unknown request", args: []string{"status", unknownRequest}, want: exitError,
			wantStderr: []string{"comfygate status: NotFound: "}},
		{name: "watch of an unknown request", args: []string{"watch", unknownRequest}, want: exitError,
			wantStderr: []string{"comfygate watch: NotFound: "}},
		{name: "wrong API key", env: clientEnv(g.grpcAddr, apiKeyEnv, "cgk-wrong-key-0123456789abcdef"),
			args: []string{"status", "{ok}"}, want: exitError,
			wantStderr: []string{"comfygate status: Unauthenticated: missing or unknown API key"}},
		{name: "no API key", env: clientEnv(g.grpcAddr, apiKeyEnv, ""), stdin: `{}`,
			args: []string{"submit", "--watch"}, want: exitError,
			wantStderr: []string{"comfygate submit: Unauthenticated: "}},
		{name: "no gateway at the address", env: clientEnv("{closed}"), args: []string{"watch", "{ok}"}, want: exitError,
			wantStderr: []string{"comfygate watch: Unavailable: ", "is the gateway running at"}},

		{name: "help", args: []string{"watch", "--help"}, want: exitOK,
			wantStderr: []string{"Usage: comfygate watch [flags] REQUEST_ID", "--addr host:port", "env COMFYGATE_ADDR", "COMFYGATE_API_KEY", "Exit codes:"}},
		{name: "no request id", args: []string{"status"}, want: exitUsage,
			wantStderr: []string{"want one REQUEST_ID, got 0", "Run 'comfygate status --help'"}},
		{name: "two request ids", args: []string{"result", "{ok}", "{failed}"}, want: exitUsage,
			wantStderr: []string{"want one REQUEST_ID, got 2"}},
		{name: "malformed request id", args: []string{"cancel", "../x"}, want: exitUsage,
			wantStderr: []string{`request id "../x"`}},
		{name: "no deployment", env: clientEnv(g.grpcAddr, deploymentEnv, ""), args: []string{"status", "{ok}"}, want: exitUsage,
			wantStderr: []string{"no deployment: give --deployment or set COMFYGATE_DEPLOYMENT"}},
		{name: "unknown flag", args: []string{"status", "--verbose", "{ok}"}, want: exitUsage,
			wantStderr: []string{"flag provided but not defined: -verbose"}},
		{name: "negative timeout", args: []string{"status", "--timeout", "-1s", "{ok}"}, want: exitUsage,
			wantStderr: []string{"--timeout must not be negative"}},
		{name: "submit takes no arguments", args: []string{"submit", "{file}"}, want: exitUsage,
			wantStderr: []string{"give the input with --input FILE"}},
		{name: "input not JSON", stdin: `{"prompt": }`, args: []string{"submit"}, want: exitUsage,
			wantStderr: []string{"the input (standard input) is not valid JSON: invalid character '}'"}},
		{name: "input not an object", stdin: `["a", "b"]`, args: []string{"submit"}, want: exitUsage,
			wantStderr: []string{"must be a JSON object"}},
		{name: "empty input", stdin: " \n", args: []string{"submit", "--watch"}, want: exitUsage,
			wantStderr: []string{"is empty"}},
		{name: "missing input file", args: []string{"submit", "--input", "{missing}"}, want: exitUsage,
			wantStderr: []string{"reading the input: open "}},
		{name: "missing CA file", args: []string{"status", "--tls-ca", "{missing}", "{ok}"}, want: exitUsage,
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
			if tc.want == exitUsage && len(sim.Submits()) != submitsBefore {
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
	setup := gatewaySetup{
		upstream: upstream, grpcAddr: freeAddr(t), httpAddr: freeAddr(t),
		args: []string{"--redis-url", rs.URL, "--redis-prefix", redistest.Prefix(t)},
	}
	first := startGateway(t, setup)
	environ := clientEnv(first.grpcAddr, apiKeyEnv, "")
	id := submitID(t, environ, `{"prompt": "a cat"}`)

	r := startCLI(t, cliCall{env: environ, args: []string{"watch", "--json", id}})
	r.waitOutput(t, "status_queued")
	if err := first.stop(); err != nil {
		t.Fatalf("first gateway: %v; logs:\n%s", err, first.logs)
	}
	waitUntil(t, "watch notices the drain", func() bool {
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
	if code := r.wait(t); code != exitOK {
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
	g := startGateway(t, gatewaySetup{
		upstream: upstream,
		args:     []string{"--tls-cert", certFile, "--tls-key", keyFile},
		probeTLS: &tls.Config{RootCAs: pool},
	})
	environ := clientEnv(g.grpcAddr, apiKeyEnv, "")
	tests := []struct {
		name       string
		args       []string
		want       int
		wantStderr string
	}{
		{"verified by --tls-ca", []string{"submit", "--tls-ca", certFile}, exitOK, ""},
		{"system roots do not know the certificate", []string{"submit", "--tls"}, exitError, "certificate"},
		{"plaintext", []string{"submit"}, exitError, "Unavailable"},
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
	sim, upstream := cliUpstream(t)
	g := startGateway(t, gatewaySetup{upstream: upstream})
	run := func(stdin string, args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestMainHelper$", "--"}, args...)...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, envPrefix) {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, mainHelperEnv+"=1", addrEnv+"="+g.grpcAddr, deploymentEnv+"="+cliDeployment)
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
	if code != exitOK || !runcomfy.ValidID(id) {
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
		{"watch of a failed request", []string{"watch", id}, exitFailed, "error: ValueError: the prompt is empty"},
		{"usage error", []string{"result"}, exitUsage, "want one REQUEST_ID"},
		{"the server's help is unchanged", []string{"--help"}, exitOK, "Usage: comfygate [flags]"},
		{"a flag first is the server", []string{"--grpc-addr", "nope", "status"}, 1, "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run("", tc.args...)
			if code != tc.want || !strings.Contains(out+errOut, tc.wantOutput) {
				t.Errorf("exit %d, want %d with %q; stdout %q, stderr %q", code, tc.want, tc.wantOutput, out, errOut)
			}
		})
	}
}
