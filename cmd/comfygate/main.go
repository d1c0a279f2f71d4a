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
	"strings"
	"syscall"

	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/internal/cli"
	"github.com/comfygate/comfygate/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if code, done := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr); done {
		stop()
		os.Exit(code)
	}
	err := serve(ctx, os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		printCommands(os.Stderr)
	}
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

// dispatch runs what the first argument names, other than the server: a
// client command, version or help. done is false for the server.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) (code int, done bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch first := args[0]; {
	case cli.IsCommand(first):
		// A client command: it has exit codes of its own.
		return cli.Run(ctx, args, os.Getenv, cli.OSStdio()), true
	case first == "version" || first == "--version" || first == "-version":
		fmt.Fprintln(stdout, version.Get())
		return cli.ExitOK, true
	case first == "help" && len(args) > 1 && cli.IsCommand(args[1]):
		return cli.Run(ctx, []string{args[1], "--help"}, os.Getenv, cli.OSStdio()), true
	case first == "help" && len(args) > 1 && args[1] != "version" && args[1] != "help":
		fmt.Fprintf(stderr, "comfygate help: unknown command %q; run 'comfygate help' for the commands\n", args[1])
		return cli.ExitUsage, true
	case first == "help":
		_, _ = app.ParseConfig([]string{"--help"}, os.Getenv, stdout)
		printCommands(stdout)
		return cli.ExitOK, true
	case !strings.HasPrefix(first, "-"):
		fmt.Fprintf(stderr, "comfygate: unknown command %q; run 'comfygate help' for the commands and the server's flags\n", first)
		return cli.ExitUsage, true
	}
	return 0, false
}

// printCommands ends the help: the modes of the binary, one line each.
func printCommands(w io.Writer) {
	fmt.Fprintf(w, "\nModes and commands:\n  %-8s %s\n", "(none)", "run the gateway: comfygate [flags] (the flags above)")
	for _, c := range cli.Commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintf(w, "  %-8s %s\n  %-8s %s\n", "version", "print the version, commit and Go version", "help", "this text; 'comfygate help COMMAND' (or COMMAND --help) for a command's flags")
}

// serve parses the configuration, builds the gateway and runs it until ctx
// ends. An error from before the logger exists (flags, configuration) is
// returned as it is, for main to print; one from after is logged, in the
// chosen format, and returned as a loggedError.
func serve(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (err error) {
	cfg, err := app.ParseConfig(args, getenv, stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		for _, a := range args {
			if cli.IsCommand(a) {
				// comfygate --deployment d status ID: a client flag before
				// the command made this the server's command line.
				err = fmt.Errorf("%w\n(%q is a client command: give it first, then its flags, as in 'comfygate %s --deployment ID ...')", err, a, a)
				break
			}
		}
	}
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
