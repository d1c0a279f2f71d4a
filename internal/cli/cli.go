// Package cli is the client commands: `comfygate submit|status|result|cancel|watch|ls|usage|upload`
// call a running gateway over gRPC, for people at a shell and for scripts. They
// live in the server's binary so that whoever can run the gateway can also try
// it, with nothing else to install.
package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/flagenv"
	"github.com/comfygate/comfygate/runcomfy"
)

// Environment variables of the client commands. The API key has no flag: flags
// show in process listings.
const (
	AddrEnv       = "COMFYGATE_ADDR"
	DeploymentEnv = "COMFYGATE_DEPLOYMENT"
	APIKeyEnv     = "COMFYGATE_API_KEY"
)

// defaultClientAddr is where `comfygate --simulate` (and the server's default
// --grpc-addr) listens, so the two work together with no flags.
const defaultClientAddr = "127.0.0.1:9090"

// defaultCallTimeout bounds the commands that make one call. watch (and
// submit --watch) wait as long as the request takes unless --timeout says.
const defaultCallTimeout = 30 * time.Second

// Exit codes of the client commands, so that a script tells what happened
// without parsing the output. 1 and 2 describe the request, not the command:
// only watch and submit --watch, which wait for the end, return them.
const (
	ExitOK          = 0
	ExitFailed      = 1   // the request failed (or ended in a state this version does not know)
	ExitCancelled   = 2   // the request was cancelled
	ExitError       = 3   // the gateway could not be reached, refused the call, or timed out
	ExitUsage       = 4   // a bad command line or input: nothing was sent
	ExitInterrupted = 130 // stopped by SIGINT or SIGTERM, as shells report a Ctrl-C
)

// Command is one client command, for the binary's help.
type Command struct {
	Name, Summary string
}

// Commands lists the client commands, each with its one-line summary.
func Commands() []Command {
	return []Command{
		{"submit", "start a job on a deployment and print its request id (--watch: follow it)"},
		{"status", "print a request's current state"},
		{"result", "print a request's outputs, or its error"},
		{"cancel", "cancel a request"},
		{"watch", "follow a request to its end, resuming across gateway restarts"},
		{"ls", "list your requests, newest first (--watch: refresh)"},
		{"usage", "sum up your ended requests by deployment: counts, queue and run times"},
		{"upload", "store a file for inputs to refer to, and print its reference"},
	}
}

// IsCommand reports whether the first argument names a client command rather
// than starting the server's flags.
func IsCommand(arg string) bool {
	for _, c := range Commands() {
		if c.Name == arg {
			return true
		}
	}
	return false
}

// Stdio is a command's standard streams, passed in so that tests drive the
// commands with buffers, and can pretend to be a terminal.
type Stdio struct {
	in            io.Reader
	out, err      io.Writer
	inTTY, outTTY bool
}

// OSStdio is the process's own streams.
func OSStdio() Stdio {
	return Stdio{
		in: os.Stdin, out: os.Stdout, err: os.Stderr,
		inTTY: isTerminal(os.Stdin), outTTY: isTerminal(os.Stdout),
	}
}

// isTerminal reports whether f is a character device. golang.org/x/term is not a
// dependency of this module; a character device that is not a terminal
// (/dev/null) merely receives a live status line no one reads.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// cliOptions is one client command line, parsed and checked.
type cliOptions struct {
	command    string
	addr       string
	deployment string
	json       bool
	tls        bool
	tlsCA      string
	timeout    time.Duration
	apiKey     string
	requestID  string // status, result, cancel, watch

	input          string // submit: a file name, or "-" for standard input
	idempotencyKey string // submit
	// maxQueue and maxRun are the submit's deadlines, sent when their flag
	// is given (maxQueueSet, maxRunSet): zero is none, which also turns off
	// the deployment's default; no flag leaves the default.
	maxQueue, maxRun       time.Duration
	maxQueueSet, maxRunSet bool
	watch                  bool // submit

	file      string // upload
	mediaType string // upload

	statuses []comfygatev1.Status // ls
	since    time.Duration        // ls
	limit    int                  // ls
	every    time.Duration        // ls --watch: the refresh interval; 0 lists once
}

// commandHelp is the synopsis and description of each command.
func commandHelp(command string) (synopsis, about string) {
	switch command {
	case "submit":
		return "submit [flags] [--input FILE]",
			"Starts a job on the deployment and prints its request id. The input is the\n" +
				"deployment's JSON input (RunComfy's submit body), read from FILE or, with no\n" +
				"--input or with --input -, from standard input, and sent byte for byte.\n" +
				"With --watch, follows the request to its end as watch does."
	case "status":
		return "status [flags] REQUEST_ID", "Prints the request's current state."
	case "result":
		return "result [flags] REQUEST_ID",
			"Prints the request's state with its output URLs once it has succeeded, or its\nerror once it has failed."
	case "cancel":
		return "cancel [flags] REQUEST_ID",
			"Asks RunComfy to cancel the request and prints the outcome and the state read\n" +
				"back (with --json, the state alone: its status says whether the cancel took).\n" +
				"A running request stops asynchronously: watch it to see it end."
	case "ls":
		return "ls [flags]",
			"Lists your requests, newest first: id, deployment, status, when created,\n" +
				"and how long each waited and ran. --deployment (or " + DeploymentEnv + ") and\n" +
				"--status filter; --watch refreshes the list until interrupted."
	case "usage":
		return "usage [flags]",
			"Sums up your requests that ended in the last --since (24h by default), by\n" +
				"deployment and in total: how many succeeded, failed or were cancelled, and\n" +
				"the median and 95th percentile of their queue and run times. --deployment\n" +
				"(or " + DeploymentEnv + ") limits it to one deployment."
	case "upload":
		return "upload [flags] FILE",
			"Stores FILE (an image, video or audio file) in the gateway's object storage\n" +
				"and prints its reference, comfygate://uploads/<id>. Put the reference in a\n" +
				"submit's input wherever a URL of the file would go: the gateway hands RunComfy\n" +
				"a URL of the file instead. The media type is guessed from the file's name and\n" +
				"its first bytes, or given with --type."
	default:
		return "watch [flags] REQUEST_ID",
			"Follows the request until it finishes: a live status line on a terminal, one\n" +
				"line per state change otherwise; then the output URLs. When the gateway\n" +
				"restarts (UNAVAILABLE), it reconnects and resumes where it stopped."
	}
}

// parseCLI reads a client command line (args[0] is the command). Flags may come
// before or after the request id. It returns flag.ErrHelp after printing the
// usage for --help; any other error is a usage error, not yet printed.
func parseCLI(args []string, getenv func(string) string, stderr io.Writer) (*cliOptions, error) {
	o := &cliOptions{command: args[0], apiKey: strings.TrimSpace(getenv(APIKeyEnv))}
	fs := flag.NewFlagSet("comfygate "+o.command, flag.ContinueOnError)
	// The flag package would print every error followed by the whole usage;
	// runCLI prints one line instead, and the usage only when asked.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	envOf := flagenv.Only(map[string]string{"addr": AddrEnv, "deployment": DeploymentEnv})
	fs.StringVar(&o.addr, "addr", defaultClientAddr, "gRPC address of the gateway (`host:port`)")
	fs.StringVar(&o.deployment, "deployment", "", "RunComfy deployment `id`")
	fs.BoolVar(&o.json, "json", false, "print JSON (proto field names), one object a line, for scripts")
	fs.BoolVar(&o.tls, "tls", false, "connect over TLS, verified against the system's root certificates")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "connect over TLS, verified against the PEM certificates in `file` instead")
	callTimeout := defaultCallTimeout
	if o.command == "watch" {
		callTimeout = 0
	}
	fs.DurationVar(&o.timeout, "timeout", callTimeout, "give up after this long in all; 0 waits as long as it takes")
	if o.command == "submit" {
		fs.StringVar(&o.input, "input", "-", "JSON input `file`; - is standard input")
		fs.StringVar(&o.idempotencyKey, "idempotency-key", "", "a `key` that makes a retried submit return the first request instead of starting another")
		fs.BoolVar(&o.watch, "watch", false, "follow the request to its end, as watch does (then --timeout defaults to 0)")
		fs.DurationVar(&o.maxQueue, "max-queue-duration", 0, "cancel the job if it is still queued after this `duration` (1s to 168h); 0 for none, not even the deployment's default (without the flag: the default)")
		fs.DurationVar(&o.maxRun, "max-run-duration", 0, "cancel the job if it is still running after this `duration` (1s to 168h); 0 for none, not even the deployment's default (without the flag: the default)")
	}
	if o.command == "upload" {
		fs.StringVar(&o.mediaType, "type", "", "the file's media `type` (image/png, ...); empty guesses it from the name and the first bytes")
	}
	var statuses string
	watchLs := false
	if o.command == "usage" {
		fs.DurationVar(&o.since, "since", 24*time.Hour, "sum up the requests that ended in this last `duration` (at most 2160h)")
	}
	if o.command == "ls" {
		fs.StringVar(&statuses, "status", "", "only requests in these `statuses`, comma-separated (queued, running, succeeded, failed, cancelled, unknown)")
		fs.DurationVar(&o.since, "since", 0, "only requests created in this last `duration` (1h, 30m); 0 is all")
		fs.IntVar(&o.limit, "limit", 50, "the most requests listed")
		fs.BoolVar(&watchLs, "watch", false, "list again every 2 seconds until interrupted")
	}

	var errs []error
	if err := flagenv.SetFromEnv(fs, envOf, getenv); err != nil {
		errs = append(errs, err)
	}
	pos, err := parseInterspersed(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		printCLIUsage(stderr, fs, o.command, envOf)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "timeout":
			timeoutSet = true
		case "max-queue-duration":
			o.maxQueueSet = true
		case "max-run-duration":
			o.maxRunSet = true
		}
	})
	if (o.watch || watchLs) && !timeoutSet {
		o.timeout = 0
	}

	if watchLs {
		o.every = 2 * time.Second
	}
	for word := range strings.SplitSeq(statuses, ",") {
		if word = strings.TrimSpace(word); word == "" {
			continue
		}
		st, ok := statusOfWord(word)
		if !ok {
			errs = append(errs, fmt.Errorf("--status %q: want queued, running, succeeded, failed, cancelled or unknown", word))
			continue
		}
		o.statuses = append(o.statuses, st)
	}
	if o.command == "usage" && o.since <= 0 {
		errs = append(errs, errors.New("--since must be positive"))
	}
	if o.command == "ls" && (o.limit < 1 || o.since < 0) {
		errs = append(errs, errors.New("--limit must be positive and --since not negative"))
	}
	switch {
	case o.command == "ls" || o.command == "usage":
		// A listing spans deployments unless --deployment names one.
		if len(pos) > 0 {
			errs = append(errs, fmt.Errorf("unexpected arguments %q", pos))
		}
		if o.deployment != "" && !runcomfy.ValidID(o.deployment) {
			errs = append(errs, fmt.Errorf("--deployment %q: want letters, digits, '-' and '_', at most %d", o.deployment, runcomfy.MaxIDLen))
		}
	case o.command == "upload":
		// An upload belongs to the tenant, not to a deployment.
		if len(pos) != 1 {
			errs = append(errs, fmt.Errorf("want one FILE, got %d arguments", len(pos)))
		} else {
			o.file = pos[0]
		}
	case o.deployment == "":
		errs = append(errs, fmt.Errorf("no deployment: give --deployment or set %s", DeploymentEnv))
	case !runcomfy.ValidID(o.deployment):
		errs = append(errs, fmt.Errorf("--deployment %q: want letters, digits, '-' and '_', at most %d", o.deployment, runcomfy.MaxIDLen))
	}
	switch o.command {
	case "upload", "ls", "usage":
	case "submit":
		if len(pos) > 0 {
			errs = append(errs, fmt.Errorf("unexpected arguments %q: give the input with --input FILE", pos))
		}
	default:
		switch {
		case len(pos) != 1:
			errs = append(errs, fmt.Errorf("want one REQUEST_ID, got %d arguments", len(pos)))
		case !runcomfy.ValidID(pos[0]):
			errs = append(errs, fmt.Errorf("request id %q: want letters, digits, '-' and '_', at most %d", pos[0], runcomfy.MaxIDLen))
		default:
			o.requestID = pos[0]
		}
	}
	if o.timeout < 0 {
		errs = append(errs, errors.New("--timeout must not be negative"))
	}
	if err := checkIdempotencyKey(o.idempotencyKey); err != nil {
		errs = append(errs, fmt.Errorf("--idempotency-key: %w", err))
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--max-queue-duration", o.maxQueue}, {"--max-run-duration", o.maxRun}} {
		if d.v != 0 && (d.v < time.Second || d.v > 168*time.Hour) {
			errs = append(errs, fmt.Errorf("%s %s: want 1s to 168h (or 0: none, not even the deployment's default)", d.flag, d.v))
		}
	}
	if err := checkAddr(o.addr); err != nil {
		errs = append(errs, fmt.Errorf("--addr %q: %w", o.addr, err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return o, nil
}

// checkIdempotencyKey applies the gateway's rule for an Idempotency-Key (at
// most 255 printable ASCII characters) before anything is sent.
func checkIdempotencyKey(key string) error {
	if len(key) > 255 {
		return errors.New("is longer than 255 characters")
	}
	for i := range len(key) {
		if key[i] < 0x20 || key[i] > 0x7e {
			return errors.New("may contain only printable ASCII")
		}
	}
	return nil
}

// checkAddr refuses an address gRPC could only fail to dial: empty, or a
// host without a port. Targets with a scheme (dns:///, unix:) are gRPC's to
// read.
func checkAddr(addr string) error {
	if strings.Contains(addr, ":///") || strings.HasPrefix(addr, "unix:") {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	switch {
	case addr == "":
		return errors.New("is empty: want host:port")
	case err != nil:
		return errors.New("want host:port")
	case port == "":
		return errors.New("has no port: want host:port")
	}
	return nil
}

// parseInterspersed parses flags anywhere among the positional arguments, so
// that `status ID --json` works as well as `status --json ID`. After "--"
// everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printCLIUsage writes the usage of one command in the server's format.
func printCLIUsage(w io.Writer, fs *flag.FlagSet, command string, envOf flagenv.EnvOf) {
	synopsis, about := commandHelp(command)
	fmt.Fprintf(w, "Usage: comfygate %s\n\n%s\n\nFlags:\n", synopsis, about)
	flagenv.PrintFlags(w, fs, envOf)
	fmt.Fprintf(w, "\nThe API key, when the gateway requires one, is read from %s only.\n", APIKeyEnv)
	fmt.Fprintf(w, "Commands: submit, status, result, cancel, watch, ls, usage, upload; `comfygate COMMAND --help` for each.\n")
	fmt.Fprintf(w, "Exit codes: 0 done; 1 the request failed and 2 it was cancelled (watch, submit --watch);\n"+
		"3 the gateway was unreachable, refused the call or timed out; 4 bad usage or input; 130 interrupted.\n")
}

// Run runs one client command and returns its exit code. ctx ends on SIGINT
// or SIGTERM. Every error is reported here, once, on stderr.
func Run(ctx context.Context, args []string, getenv func(string) string, sio Stdio) int {
	o, err := parseCLI(args, getenv, sio.err)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		return usageFailure(sio.err, args[0], err)
	}
	var (
		input []byte
		file  *upload
	)
	switch o.command {
	case "submit":
		if input, err = readInput(o.input, sio); err != nil {
			return usageFailure(sio.err, o.command, err)
		}
	case "upload":
		if file, err = openUpload(o.file, o.mediaType); err != nil {
			return usageFailure(sio.err, o.command, err)
		}
		defer file.Close()
	}
	conn, err := dial(o)
	if err != nil {
		return usageFailure(sio.err, o.command, err)
	}
	defer conn.Close()

	callCtx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	if o.apiKey != "" {
		callCtx = metadata.AppendToOutgoingContext(callCtx, "authorization", "Bearer "+o.apiKey)
	}
	c := &cli{opts: o, client: comfygatev1.NewGatewayServiceClient(conn), out: &errWriter{w: sio.out}, stderr: sio.err, tty: sio.outTTY, file: file}
	code, err := c.run(callCtx, input)
	if err == nil {
		err = c.out.err
	}
	switch {
	case err == nil:
		return code
	case ctx.Err() != nil:
		fmt.Fprintf(sio.err, "comfygate %s: interrupted\n", o.command)
		return ExitInterrupted
	case timedOut(callCtx, err):
		fmt.Fprintf(sio.err, "comfygate %s: gave up after --timeout %s: %s\n", o.command, o.timeout, describeError(err))
		return ExitError
	default:
		fmt.Fprintf(sio.err, "comfygate %s: %s\n", o.command, describeError(err))
		if isUnavailable(err) {
			if speaksHTTP(o.addr) {
				fmt.Fprintf(sio.err, "(%s answers plain HTTP: it is the gateway's HTTP port, for REST and curl; the CLI speaks gRPC, on the gateway's --grpc-addr, %s by default)\n", o.addr, defaultClientAddr)
			} else {
				fmt.Fprintf(sio.err, "(is the gateway running at %s? set --addr or %s)\n", o.addr, AddrEnv)
			}
		}
		return ExitError
	}
}

// speaksHTTP reports whether addr answers an HTTP/1.1 request: the gateway's
// HTTP listener, where the gRPC client finds no HTTP/2 and can only say
// UNAVAILABLE.
func speaksHTTP(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: comfygate\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "HTTP/1.")
}

// timedOut reports whether err comes from the --timeout deadline of ctx. The
// gateway enforces that deadline too (gRPC sends it along) and may report
// DEADLINE_EXCEEDED a moment before the local timer fires: a gateway's
// DEADLINE_EXCEEDED that close to the deadline is taken as the same.
func timedOut(ctx context.Context, err error) bool {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return true
	}
	deadline, ok := ctx.Deadline()
	st, isStatus := grpcStatus(err)
	return ok && isStatus && st.Code() == codes.DeadlineExceeded && time.Until(deadline) < time.Second
}

// usageFailure reports a problem found before anything was sent.
func usageFailure(stderr io.Writer, command string, err error) int {
	fmt.Fprintf(stderr, "comfygate %s: %v\nRun 'comfygate %s --help' for usage.\n", command, err, command)
	return ExitUsage
}

// readInput reads submit's input and applies the gateway's own check to it, so
// that a typo costs no round trip. The bytes are returned unchanged.
func readInput(name string, sio Stdio) ([]byte, error) {
	var (
		data []byte
		err  error
	)
	if name == "-" {
		name = "standard input"
		if sio.inTTY {
			fmt.Fprintln(sio.err, "comfygate submit: reading the input JSON from standard input; end it with Ctrl-D")
		}
		data, err = io.ReadAll(sio.in)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the input: %w", err)
	}
	if err := checkInput(data); err != nil {
		return nil, fmt.Errorf("the input (%s) %w", name, err)
	}
	return data, nil
}

// checkInput mirrors the gateway's rule: one JSON object, valid as it stands,
// surrounded by JSON whitespace only.
func checkInput(data []byte) error {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	switch {
	case len(bytes.TrimRight(trimmed, " \t\r\n")) == 0:
		return errors.New("is empty: want the deployment input as a JSON object")
	case !utf8.Valid(data):
		return errors.New("is not valid UTF-8")
	case !json.Valid(data):
		// Decoding again yields the reason and the offset, which Valid does not.
		err := json.Unmarshal(data, new(json.RawMessage))
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("is not valid JSON: %w (at byte %d)", err, se.Offset)
		}
		return fmt.Errorf("is not valid JSON: %w", err)
	case trimmed[0] != '{':
		return errors.New("must be a JSON object")
	}
	return nil
}

// dial makes the gateway's client connection; it connects lazily, on the first
// call.
func dial(o *cliOptions) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if o.tls || o.tlsCA != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.tlsCA != "" {
			pem, err := os.ReadFile(o.tlsCA)
			if err != nil {
				return nil, fmt.Errorf("--tls-ca: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", o.tlsCA)
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds),
		// gRPC waits 1s, then longer, before it dials a lost gateway again;
		// a watch resuming after a restart should not wait for that.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
			MinConnectTimeout: 20 * time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("--addr %s: %w", o.addr, err)
	}
	return conn, nil
}

// cli runs one parsed command against the gateway.
type cli struct {
	opts   *cliOptions
	client comfygatev1.GatewayServiceClient
	out    *errWriter
	stderr io.Writer
	tty    bool    // stdout is a terminal
	file   *upload // upload
}

// run makes the command's calls and prints their answers. The exit code it
// returns counts only when err is nil.
func (c *cli) run(ctx context.Context, input []byte) (int, error) {
	dep, id := c.opts.deployment, c.opts.requestID
	switch c.opts.command {
	case "submit":
		return c.submit(ctx, input)
	case "status":
		resp, err := c.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: dep, RequestId: id})
		if err != nil {
			return ExitError, err
		}
		c.print(resp.GetRequest(), "")
	case "result":
		resp, err := c.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: dep, RequestId: id})
		if err != nil {
			return ExitError, err
		}
		c.print(resp.GetRequest(), "")
	case "cancel":
		resp, err := c.client.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: dep, RequestId: id})
		if err != nil {
			return ExitError, err
		}
		c.print(resp.GetRequest(), cancelText(resp))
	case "watch":
		return c.watch(ctx, id, nil)
	case "ls":
		return c.ls(ctx)
	case "usage":
		return c.usage(ctx)
	case "upload":
		up, err := c.upload(ctx)
		if err != nil {
			return ExitError, err
		}
		if c.opts.json {
			writeJSON(c.out, up)
		} else {
			fmt.Fprintln(c.out, up.GetReference())
		}
	}
	return ExitOK, nil
}

// submit starts the job, prints its id (or its state as JSON) and, with
// --watch, follows it.
func (c *cli) submit(ctx context.Context, input []byte) (int, error) {
	req := &comfygatev1.SubmitRequest{
		DeploymentId:   c.opts.deployment,
		InputJson:      string(input),
		IdempotencyKey: c.opts.idempotencyKey,
	}
	if c.opts.maxQueueSet {
		req.MaxQueueDuration = durationpb.New(c.opts.maxQueue)
	}
	if c.opts.maxRunSet {
		req.MaxRunDuration = durationpb.New(c.opts.maxRun)
	}
	resp, err := c.client.Submit(ctx, req)
	if err != nil {
		return ExitError, err
	}
	st := resp.GetRequest()
	if c.opts.json {
		writeJSON(c.out, st)
	} else {
		// The id alone on the first line: ID=$(comfygate submit ... | head -1).
		fmt.Fprintln(c.out, st.GetRequestId())
	}
	if !c.opts.watch {
		return ExitOK, nil
	}
	return c.watch(ctx, st.GetRequestId(), st)
}

// print writes one state: JSON, or a human-readable block headed by note.
func (c *cli) print(st *comfygatev1.RequestState, note string) {
	if c.opts.json {
		writeJSON(c.out, st)
		return
	}
	writeState(c.out, st, note)
}

// errWriter remembers the first write error, so that the printing code stays
// linear and the error is reported once at the end.
type errWriter struct {
	w   io.Writer
	err error
}

// Write writes p unless an earlier write failed.
func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = fmt.Errorf("writing the output: %w", err)
	}
	return n, err
}
