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
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	// No /debug/pprof/cmdline: the command line may hold a secret
	// (--webhook-secret), and profiles need no arguments.
	mux.HandleFunc("/debug/pprof/cmdline", http.NotFound)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
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
