// Command runcomfy-sim serves the RunComfy Serverless API simulator over HTTP, for
// benchmarks and multi-process tests that need RunComfy in another process than the
// gateway.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// shutdownTimeout bounds the graceful shutdown: answers in flight get this long.
const shutdownTimeout = 5 * time.Second

// Callback retry defaults, the simulator's own (runcomfysim.Options documents them):
// spelled out here because a flag shows its default in --help, and 0 retries must
// mean "never retry" on the command line, not "the default" as in Options.
const (
	defaultCallbackRetries = 5
	defaultCallbackBackoff = 50 * time.Millisecond
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := realMain(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "runcomfy-sim:", err)
		os.Exit(1)
	}
}

// config is everything the command line and environment decide.
type config struct {
	addr        string
	token       string
	publicURL   string
	queueTime   time.Duration
	runTime     time.Duration
	cancelDelay time.Duration
	// callbackRetries is how many times a failed callback is sent again; 0 never
	// retries. Multi-process tests raise it so retries outlast a Redis outage.
	callbackRetries int
	callbackBackoff time.Duration
	outputBytes     int
	// fetchInputs makes submits download their media inputs, so multi-process
	// tests see a URL the gateway forwarded refused when RunComfy could not read it.
	fetchInputs bool
}

// parseConfig reads flags, falling back to the environment for the token. getenv is
// passed in so tests never touch the real environment.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	def := runcomfysim.DefaultOptions()
	var cfg config
	fs := flag.NewFlagSet("runcomfy-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8090", "address to listen on (host:port; port 0 picks one)")
	fs.StringVar(&cfg.token, "token", getenv("RUNCOMFY_API_TOKEN"),
		"bearer token required on every call (default $RUNCOMFY_API_TOKEN; empty accepts any)")
	fs.StringVar(&cfg.publicURL, "public-url", "", "base URL written in returned URLs (default: from each request's Host)")
	fs.DurationVar(&cfg.queueTime, "queue-time", def.QueueTime, "time a job stays in_queue")
	fs.DurationVar(&cfg.runTime, "run-time", def.RunTime, "time a job stays in_progress")
	fs.DurationVar(&cfg.cancelDelay, "cancel-delay", def.CancelDelay, "time a cancel of a running job takes")
	fs.IntVar(&cfg.callbackRetries, "callback-retries", defaultCallbackRetries,
		"how many times a callback answered with a non-2xx status (or not answered) is sent again; 0 never retries")
	fs.DurationVar(&cfg.callbackBackoff, "callback-backoff", defaultCallbackBackoff,
		"wait before the first callback retry; it doubles with each retry")
	fs.IntVar(&cfg.outputBytes, "output-bytes", 0, "size of each output image file in bytes (a PNG padded to it); 0 serves a small PNG")
	fs.BoolVar(&cfg.fetchInputs, "fetch-inputs", false,
		"download every http(s) URL and decode every base64 data: URI in a submit body, refusing the submit (422) when one fails, as RunComfy does")
	if err := fs.Parse(args); err != nil {
		return config{}, fmt.Errorf("parse flags: %w", err)
	}
	var problems []error
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	for name, d := range map[string]time.Duration{
		"queue-time": cfg.queueTime, "run-time": cfg.runTime, "cancel-delay": cfg.cancelDelay,
	} {
		if d < 0 {
			problems = append(problems, fmt.Errorf("--%s must not be negative, got %v", name, d))
		}
	}
	if cfg.callbackRetries < 0 {
		problems = append(problems, fmt.Errorf("--callback-retries must not be negative, got %d", cfg.callbackRetries))
	}
	if cfg.outputBytes < 0 {
		problems = append(problems, fmt.Errorf("--output-bytes must not be negative, got %d", cfg.outputBytes))
	}
	if cfg.callbackBackoff <= 0 {
		problems = append(problems, fmt.Errorf("--callback-backoff must be positive, got %v", cfg.callbackBackoff))
	}
	if cfg.addr == "" {
		problems = append(problems, errors.New("--addr must not be empty"))
	}
	if err := errors.Join(problems...); err != nil {
		return config{}, fmt.Errorf("invalid configuration: %w", err)
	}
	return cfg, nil
}

func realMain(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return serve(ctx, ln, cfg, logger)
}

// serve runs the simulator on ln until ctx is done. It owns ln.
func serve(ctx context.Context, ln net.Listener, cfg config, logger *slog.Logger) error {
	// Options reads 0 retries as "the default" and a negative count as "never".
	retries := cfg.callbackRetries
	if retries == 0 {
		retries = -1
	}
	sim := runcomfysim.New(runcomfysim.Options{
		Token:           cfg.token,
		QueueTime:       cfg.queueTime,
		RunTime:         cfg.runTime,
		CancelDelay:     cfg.cancelDelay,
		PublicURL:       cfg.publicURL,
		Logger:          logger,
		CallbackRetries: retries,
		CallbackBackoff: cfg.callbackBackoff,
		OutputBytes:     cfg.outputBytes,
		FetchInputs:     cfg.fetchInputs,
	})
	defer sim.Close()
	srv := &http.Server{
		Handler:           sim.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Info("runcomfy-sim listening", "addr", ln.Addr().String(),
		"queue_time", cfg.queueTime, "run_time", cfg.runTime, "token_required", cfg.token != "",
		"callback_retries", cfg.callbackRetries, "callback_backoff", cfg.callbackBackoff, "fetch_inputs", cfg.fetchInputs)

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("runcomfy-sim shutting down")
	// Close the simulator first: handlers sleeping on an injected latency then answer
	// at once, so the graceful shutdown below does not wait for them.
	sim.Close()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
