// Command comfygate serves the comfygate gRPC and REST API in front of the
// RunComfy Serverless API; with a command first (submit, status, ...), it is
// that API's client instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if len(os.Args) > 1 && cli.IsCommand(os.Args[1]) {
		// A client command: it has exit codes of its own.
		code := cli.Run(ctx, os.Args[1:], os.Getenv, cli.OSStdio())
		stop()
		os.Exit(code)
	}
	err := serve(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	var logged loggedError
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, &logged):
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, "comfygate:", err)
		os.Exit(1)
	}
}

// serve parses the configuration, builds the gateway and runs it until ctx
// ends. An error from before the logger exists (flags, configuration) is
// returned as it is, for main to print; one from after is logged, in the
// chosen format, and returned as a loggedError.
func serve(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (err error) {
	cfg, err := app.ParseConfig(args, getenv, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) && app.RequestedLogFormat(args, getenv) == "json" {
			// Before the logger exists, but the operator asked for JSON: the
			// error is one JSON record too.
			slog.New(slog.NewJSONHandler(stderr, nil)).Error("comfygate did not start", "error", err)
			return loggedError{err}
		}
		return err
	}
	sink := newLogSink(stderr)
	defer sink.Close()
	var handler slog.Handler = slog.NewTextHandler(sink, &slog.HandlerOptions{Level: cfg.LogLevel})
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: cfg.LogLevel})
	}
	log := slog.New(handler)
	defer func() {
		// Before the sink closes, so that the line is written.
		if err != nil {
			log.Error("comfygate stopped", "error", err)
			err = loggedError{err}
		}
	}()
	// The libraries' own loggers (grpc-go, go-redis, OpenTelemetry, the
	// standard log package) write through log too, in the same format.
	defer routeLibraryLogs(log)()

	gateway, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return gateway.Run(ctx)
}

// loggedError is an error serve has already logged, in the chosen format.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }
