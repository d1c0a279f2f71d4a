package main

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/go-logr/stdr"
	"github.com/redis/go-redis/v9"
	redislogging "github.com/redis/go-redis/v9/logging"
	"go.opentelemetry.io/otel"
	"google.golang.org/grpc/grpclog"
)

// The value of the logger attribute on the lines that libraries log on their
// own, so that an operator can tell them from the gateway's and filter them.
const (
	loggerKey         = "logger"
	grpcLoggerName    = "grpc"
	gatewayLoggerName = "grpc-gateway"
	redisLoggerName   = "go-redis"
	otelLoggerName    = "otel"
	stdLoggerName     = "log"
)

// routeLibraryLogs sends what the libraries log on their own to log, and
// returns a function that restores their previous loggers.
//
// grpc-go and grpc-gateway (which logs through grpclog too), go-redis,
// OpenTelemetry (its internal logger and its error handler), slog's default
// logger and the standard log package: each then writes one record of log,
// in its format, with a logger attribute naming the library. These are
// process-wide settings of those libraries, so only main sets them, and only
// here.
func routeLibraryLogs(log *slog.Logger) (restore func()) {
	// grpclog: installed once per process, then pointed at log (see logRoute).
	libraryRoute.installGRPC()
	prevTarget := libraryRoute.target.Swap(log)

	// go-redis swaps its logger atomically but offers no way to read it; its
	// default is all main ever replaces, so that is what comes back.
	redis.SetLogger(redisLogger{log: log.With(loggerKey, redisLoggerName)})

	// The first handler OpenTelemetry is given stays the delegate of its
	// default handler for good: so it is the route's, which follows the
	// current run and, after the last, does what OpenTelemetry's default does.
	prevHandler := otel.GetErrorHandler()
	otel.SetErrorHandler(otel.ErrorHandlerFunc(libraryRoute.handleOTelError))
	otel.SetLogger(otelLogger(log.Handler()))

	prevDefault := slog.Default()
	prevWriter, prevFlags, prevPrefix := stdlog.Writer(), stdlog.Flags(), stdlog.Prefix()
	slog.SetDefault(log)
	// After slog.SetDefault, so that the standard log package gets the
	// attribute and the level of its own.
	stdlog.SetOutput(logWriter{log: log.With(loggerKey, stdLoggerName), level: slog.LevelWarn})
	stdlog.SetFlags(0)
	stdlog.SetPrefix("")

	return func() {
		slog.SetDefault(prevDefault)
		stdlog.SetOutput(prevWriter)
		stdlog.SetFlags(prevFlags)
		stdlog.SetPrefix(prevPrefix)
		// OpenTelemetry has no getter for its logger: put back its default
		// (internal/global: stdr on the standard log format, errors only).
		otel.SetLogger(stdr.New(stdlog.New(os.Stderr, "", stdlog.LstdFlags|stdlog.Lshortfile)))
		otel.SetErrorHandler(prevHandler)
		redislogging.Enable()
		// Only if no later call has pointed the route elsewhere since.
		libraryRoute.target.CompareAndSwap(log, prevTarget)
	}
}

// libraryRoute is the process's one logRoute. It is the package's only
// global, on purpose: the state it stands for, the logger of grpclog, is
// process-wide in grpc-go already and cannot be set safely more than once
// (see logRoute), while serve may run several times in one process (tests).
var libraryRoute logRoute

// logRoute sends the lines of the library loggers that must not be replaced
// while the process runs to the logger of the serve running now (target),
// or, when there is none, where the library would have sent them itself.
//
// grpclog.SetLoggerV2 writes a plain variable that every gRPC goroutine reads
// without synchronisation ("should be called before any gRPC functions"):
// setting it again while a connection of an earlier run, or a test's client,
// still logs is a data race. So the adapter is installed once and each run
// moves an atomic pointer instead.
type logRoute struct {
	once   sync.Once
	target atomic.Pointer[slog.Logger]
}

// installGRPC makes grpclog log through the route, once per process.
func (r *logRoute) installGRPC() {
	r.once.Do(func() {
		grpclog.SetLoggerV2(&grpcLogger{target: &r.target, fallback: grpcDefaultLogger(os.Getenv), exit: os.Exit})
	})
}

// handleOTelError is the OpenTelemetry error handler: one error record on the
// current logger, or, with none, OpenTelemetry's own default (log.Print).
func (r *logRoute) handleOTelError(err error) {
	log := r.target.Load()
	if log == nil {
		stdlog.Print(err)
		return
	}
	log.Error(err.Error(), loggerKey, otelLoggerName)
}

// grpcDefaultLogger is the logger grpc-go installs for itself when the process
// starts (grpclog's newLoggerV2): errors only, to stderr, unless
// GRPC_GO_LOG_SEVERITY_LEVEL says otherwise. It is rebuilt because grpclog
// offers no way to read the logger in place. (GRPC_GO_LOG_FORMATTER=json has
// no public equivalent and is not honoured.)
func grpcDefaultLogger(getenv func(string) string) grpclog.LoggerV2 {
	infoW, warningW, errorW := io.Discard, io.Discard, io.Discard
	switch getenv("GRPC_GO_LOG_SEVERITY_LEVEL") {
	case "", "ERROR", "error":
		errorW = os.Stderr
	case "WARNING", "warning":
		warningW = os.Stderr
	case "INFO", "info":
		infoW = os.Stderr
	}
	verbosity, _ := strconv.Atoi(getenv("GRPC_GO_LOG_VERBOSITY_LEVEL"))
	return grpclog.NewLoggerV2WithVerbosity(infoW, warningW, errorW, verbosity)
}

// grpcVerbosity is the verbosity grpc-go runs at by default: V(l) holds for l
// up to it. The messages it guards at 2 and above are per connection and per
// stream, too chatty even for debug.
const grpcVerbosity = 0

// grpcLogger is grpclog's logger (LoggerV2 and DepthLoggerV2) over slog, for
// grpc-go and for grpc-gateway, which also logs through grpclog. grpc-go's
// Info is very chatty and becomes Debug; Warning becomes Warn; Error stays
// Error; Fatal is an Error, then the process exits, as grpclog expects.
type grpcLogger struct {
	// target is the logger to write to; while it is nil, fallback is used.
	target   *atomic.Pointer[slog.Logger]
	fallback grpclog.LoggerV2
	exit     func(code int)
}

var (
	_ grpclog.LoggerV2      = (*grpcLogger)(nil)
	_ grpclog.DepthLoggerV2 = (*grpcLogger)(nil)
)

// severity is one of grpclog's severities.
type severity int

const (
	severityInfo severity = iota
	severityWarning
	severityError
	severityFatal
)

// level is the slog level of a grpclog severity.
func (s severity) level() slog.Level {
	switch s {
	case severityInfo:
		return slog.LevelDebug
	case severityWarning:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// toFallback logs args at s on the fallback logger, joined as grpclog would
// join them for it (it has no depth support, so Depth calls become ln ones).
func (g *grpcLogger) toFallback(s severity, how grpcArgs, args ...any) {
	if how == argsPrint {
		switch s {
		case severityInfo:
			g.fallback.Info(args...)
		case severityWarning:
			g.fallback.Warning(args...)
		case severityError:
			g.fallback.Error(args...)
		default:
			g.fallback.Fatal(args...)
		}
		return
	}
	switch s {
	case severityInfo:
		g.fallback.Infoln(args...)
	case severityWarning:
		g.fallback.Warningln(args...)
	case severityError:
		g.fallback.Errorln(args...)
	default:
		g.fallback.Fatalln(args...)
	}
}

// logf logs a message of the grpclog functions that take a format.
func (g *grpcLogger) logf(s severity, format string, args ...any) {
	log := g.target.Load()
	if log == nil {
		g.toFallback(s, argsPrint, fmt.Sprintf(format, args...))
		return
	}
	if log.Enabled(context.Background(), s.level()) {
		g.write(log, s, grpcOrigin(), "", fmt.Sprintf(format, args...))
	}
	if s == severityFatal {
		g.exit(1)
	}
}

// grpcArgs says how a grpclog function joins its arguments.
type grpcArgs int

const (
	// argsPrint joins them as fmt.Sprint (Info, Warning, Error, Fatal).
	argsPrint grpcArgs = iota
	// argsPrintln joins them as fmt.Sprintln, less the newline (Infoln...).
	argsPrintln
	// argsDepth is argsPrintln, from grpc-go's component loggers, whose first
	// argument is "[component]" (InfoDepth...).
	argsDepth
)

// logArgs logs a message of the grpclog functions that take arguments.
func (g *grpcLogger) logArgs(s severity, how grpcArgs, args ...any) {
	log := g.target.Load()
	if log == nil {
		g.toFallback(s, how, args...)
		return
	}
	if log.Enabled(context.Background(), s.level()) {
		origin, component := grpcLoggerName, ""
		if name, ok := componentName(args); how == argsDepth && ok {
			component, args = name, args[1:]
		} else if how != argsDepth {
			origin = grpcOrigin()
		}
		var msg string
		if how == argsPrint {
			msg = fmt.Sprint(args...)
		} else {
			msg = strings.TrimSuffix(fmt.Sprintln(args...), "\n")
		}
		g.write(log, s, origin, component, msg)
	}
	if s == severityFatal {
		g.exit(1)
	}
}

// write logs one record.
func (g *grpcLogger) write(log *slog.Logger, s severity, origin, component, msg string) {
	attrs := make([]slog.Attr, 0, 3)
	attrs = append(attrs, slog.String(loggerKey, origin))
	if component != "" {
		attrs = append(attrs, slog.String("grpc_component", component))
	}
	if s == severityFatal {
		attrs = append(attrs, slog.Bool("fatal", true))
	}
	log.LogAttrs(context.Background(), s.level(), msg, attrs...)
}

// componentName is the name of a grpc-go component logger from the first of
// its arguments, "[name]".
func componentName(args []any) (string, bool) {
	if len(args) == 0 {
		return "", false
	}
	s, ok := args[0].(string)
	if !ok || len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' || strings.ContainsAny(s, " ") {
		return "", false
	}
	return s[1 : len(s)-1], true
}

// grpcOrigin names the library that called grpclog's package functions:
// grpc-gateway calls them too, and its lines are worth telling apart. It looks
// at the first caller outside grpclog and this adapter.
func grpcOrigin() string {
	var pcs [8]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs[:])])
	for {
		f, more := frames.Next()
		switch {
		case strings.HasPrefix(f.Function, "github.com/grpc-ecosystem/grpc-gateway/"):
			return gatewayLoggerName
		case strings.HasPrefix(f.Function, "google.golang.org/grpc/grpclog"),
			strings.HasPrefix(f.Function, "google.golang.org/grpc/internal/grpclog"),
			strings.Contains(f.Function, ".(*grpcLogger)."): // this adapter: main, or the test binary
		default:
			return grpcLoggerName
		}
		if !more {
			return grpcLoggerName
		}
	}
}

// Info logs at Debug: see grpcLogger.
func (g *grpcLogger) Info(args ...any) { g.logArgs(severityInfo, argsPrint, args...) }

// Infoln logs at Debug.
func (g *grpcLogger) Infoln(args ...any) { g.logArgs(severityInfo, argsPrintln, args...) }

// Infof logs at Debug.
func (g *grpcLogger) Infof(format string, args ...any) { g.logf(severityInfo, format, args...) }

// Warning logs at Warn.
func (g *grpcLogger) Warning(args ...any) { g.logArgs(severityWarning, argsPrint, args...) }

// Warningln logs at Warn.
func (g *grpcLogger) Warningln(args ...any) { g.logArgs(severityWarning, argsPrintln, args...) }

// Warningf logs at Warn.
func (g *grpcLogger) Warningf(format string, args ...any) {
	g.logf(severityWarning, format, args...)
}

// Error logs at Error.
func (g *grpcLogger) Error(args ...any) { g.logArgs(severityError, argsPrint, args...) }

// Errorln logs at Error.
func (g *grpcLogger) Errorln(args ...any) { g.logArgs(severityError, argsPrintln, args...) }

// Errorf logs at Error.
func (g *grpcLogger) Errorf(format string, args ...any) { g.logf(severityError, format, args...) }

// Fatal logs at Error and exits.
func (g *grpcLogger) Fatal(args ...any) { g.logArgs(severityFatal, argsPrint, args...) }

// Fatalln logs at Error and exits.
func (g *grpcLogger) Fatalln(args ...any) { g.logArgs(severityFatal, argsPrintln, args...) }

// Fatalf logs at Error and exits.
func (g *grpcLogger) Fatalf(format string, args ...any) { g.logf(severityFatal, format, args...) }

// InfoDepth logs at Debug. The depth is ignored: records carry no source.
func (g *grpcLogger) InfoDepth(_ int, args ...any) { g.logArgs(severityInfo, argsDepth, args...) }

// WarningDepth logs at Warn.
func (g *grpcLogger) WarningDepth(_ int, args ...any) { g.logArgs(severityWarning, argsDepth, args...) }

// ErrorDepth logs at Error.
func (g *grpcLogger) ErrorDepth(_ int, args ...any) { g.logArgs(severityError, argsDepth, args...) }

// FatalDepth logs at Error and exits.
func (g *grpcLogger) FatalDepth(_ int, args ...any) { g.logArgs(severityFatal, argsDepth, args...) }

// V reports whether verbosity level l is logged: up to grpcVerbosity.
func (g *grpcLogger) V(l int) bool {
	if g.target.Load() == nil {
		return g.fallback.V(l)
	}
	return l <= grpcVerbosity
}

// redisLogger is go-redis's logger over slog. go-redis gives its lines no
// level; those it prints unconditionally report failures (a dial that failed,
// a connection dropped), so they are warnings.
type redisLogger struct {
	log *slog.Logger
}

// Printf logs one line at Warn.
func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if ctx == nil {
		ctx = context.Background()
	}
	if r.log.Enabled(ctx, slog.LevelWarn) {
		r.log.Log(ctx, slog.LevelWarn, strings.TrimSuffix(fmt.Sprintf(format, v...), "\n"))
	}
}

// otelLogger is OpenTelemetry's internal logger over h.
func otelLogger(h slog.Handler) logr.Logger {
	return logr.FromSlogHandler(logrLevels{h}).WithName(otelLoggerName)
}

// logrLevels maps the verbosity of a logr logger to slog levels. logr's V(n)
// arrives as slog level -n, which would make OpenTelemetry's warnings (V(1))
// a kind of debug and its info (V(4)) Debug; here V(1..3) is Warn, V(4..7)
// Debug, and V(8) and more, OpenTelemetry's debug, is below Debug, so never
// logged. logr's "err" attribute becomes "error", as in the gateway's lines.
type logrLevels struct {
	slog.Handler
}

// level is the slog level of the logr level l.
func (logrLevels) level(l slog.Level) slog.Level {
	switch {
	case l >= slog.LevelInfo:
		return l
	case l > -4:
		return slog.LevelWarn
	case l > -8:
		return slog.LevelDebug
	default:
		return slog.LevelDebug - 4
	}
}

// Enabled reports whether the mapped level is logged.
func (h logrLevels) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, h.level(l))
}

// Handle logs r at the mapped level.
func (h logrLevels) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, h.level(r.Level), r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			a.Key = "error"
		}
		out.AddAttrs(a)
		return true
	})
	if err := h.Handler.Handle(ctx, out); err != nil {
		return fmt.Errorf("otel log record: %w", err)
	}
	return nil
}

// WithAttrs keeps the mapping.
func (h logrLevels) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logrLevels{h.Handler.WithAttrs(attrs)}
}

// WithGroup keeps the mapping.
func (h logrLevels) WithGroup(name string) slog.Handler {
	return logrLevels{h.Handler.WithGroup(name)}
}

// logWriter is the output of the standard log package: each line it gets is
// one record. What still logs that way here is net/http servers without an
// ErrorLog of their own, whose lines report failures: Warn.
type logWriter struct {
	log   *slog.Logger
	level slog.Level
}

// Write logs p, one line of the log package, less its newline.
func (w logWriter) Write(p []byte) (int, error) {
	w.log.Log(context.Background(), w.level, strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
