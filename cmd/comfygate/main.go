// Command comfygate serves the comfygate gRPC and REST API in front of the
// RunComfy Serverless API.
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

	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := realMain(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "comfygate:", err)
		os.Exit(1)
	}
}

// realMain builds the parts from the configuration and runs them until ctx ends.
func realMain(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	g, gctx := errgroup.WithContext(ctx)
	upstreamURL, token := cfg.RunComfyURL, cfg.RunComfyToken
	// The simulator must outlive the gateway's drain, whose in-flight calls still
	// reach it, so it stops only after the gateway has.
	stopSim := func() {}
	if cfg.Simulate {
		sim, err := startSimulator(log.With("component", "simulator"), token)
		if err != nil {
			return err
		}
		upstreamURL, token = sim.url, sim.token
		simCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stopSim = cancel
		g.Go(func() error { return sim.run(simCtx) })
		log.Info("simulating RunComfy", "url", upstreamURL)
	}

	client, err := runcomfy.New(runcomfy.Config{
		BaseURL:    upstreamURL,
		APIVersion: cfg.RunComfyAPIVersion,
		Token:      token,
		Timeout:    cfg.UpstreamTimeout,
	})
	if err == nil {
		err = serve(gctx, g, cfg, client, log, stopSim)
	}
	if err != nil {
		stopSim()
		return errors.Join(err, g.Wait())
	}
	return g.Wait()
}

// serve builds the service and the listeners and starts them in g.
func serve(ctx context.Context, g *errgroup.Group, cfg *Config, up server.Upstream, log *slog.Logger, after func()) error {
	svc, err := server.NewService(server.ServiceConfig{Upstream: up, Logger: log})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		GRPCAddr:        cfg.GRPCAddr,
		HTTPAddr:        cfg.HTTPAddr,
		ShutdownTimeout: cfg.ShutdownTimeout,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		Logger:          log,
	}, svc)
	if err != nil {
		return err
	}
	g.Go(func() error {
		defer after()
		return srv.Run(ctx)
	})
	return nil
}
