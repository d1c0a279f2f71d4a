package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// debugServer serves Go's profiler on its own listener, apart from the
// public HTTP listener, so that profiles are reachable only where the operator
// puts that address.
type debugServer struct {
	lis net.Listener
	srv *http.Server
}

func newDebugServer(addr string) (*debugServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--debug-addr: %w", err)
	}
	mux := http.NewServeMux()
	for pattern, h := range profilerRoutes() {
		mux.Handle(pattern, h)
	}
	return &debugServer{lis: lis, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// run serves until ctx ends; a profile being taken then is cut short.
func (d *debugServer) run(ctx context.Context, log *slog.Logger) error {
	stop := context.AfterFunc(ctx, func() { d.srv.Close() })
	defer stop()
	log.Info("serving profiles", "addr", d.lis.Addr().String())
	if err := d.srv.Serve(d.lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("debug listener: %w", err)
	}
	return nil
}

// profilerRoutes are Go's profiler's handlers, for --debug-addr and
// --admin-addr. No /debug/pprof/cmdline: the command line may hold a secret
// (--webhook-secret), and profiles need no arguments.
func profilerRoutes() map[string]http.Handler {
	return map[string]http.Handler{
		"/debug/pprof/":        http.HandlerFunc(pprof.Index),
		"/debug/pprof/cmdline": http.HandlerFunc(http.NotFound),
		"/debug/pprof/profile": http.HandlerFunc(pprof.Profile),
		"/debug/pprof/symbol":  http.HandlerFunc(pprof.Symbol),
		"/debug/pprof/trace":   http.HandlerFunc(pprof.Trace),
	}
}
