// Command comfygate serves the comfygate gRPC and REST API in front of the
// RunComfy Serverless API.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/webhook"
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
		if cfg.PublicURL == "" {
			// Let the simulator call back this gateway, so that `make run` shows
			// live updates with no further setup.
			cfg.PublicURL = cfg.selfURL()
			if len(cfg.WebhookSecrets) == 0 {
				cfg.WebhookSecrets = []string{randomSecret()}
			}
		}
		sim, err := startSimulator(log.With("component", "simulator"), token)
		if err != nil {
			return err
		}
		upstreamURL, token = sim.url, sim.token
		simCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stopSim = cancel
		g.Go(func() error { return sim.run(simCtx) })
		log.Info("simulating RunComfy", "url", upstreamURL, "callbacks_to", cfg.PublicURL)
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

// serve builds the state, the service and the listeners and starts them in g.
func serve(ctx context.Context, g *errgroup.Group, cfg *Config, client *runcomfy.Client, log *slog.Logger, after func()) error {
	backend := memory.New(nil)
	tracker, err := state.NewTracker(state.TrackerConfig{Store: backend, Results: client, Retention: cfg.Retention})
	if err != nil {
		return err
	}
	hub, err := state.NewHub(backend, 0)
	if err != nil {
		return err
	}
	svcCfg := server.ServiceConfig{Upstream: client, Tracker: tracker, Watches: hub, Logger: log}
	routes := map[string]http.Handler{}
	if cfg.PublicURL != "" {
		signer, err := webhook.NewSigner(cfg.WebhookSecrets)
		if err != nil {
			return err
		}
		urls, err := webhook.NewURLs(cfg.PublicURL, signer)
		if err != nil {
			return err
		}
		callbacks, err := webhook.NewHandler(signer, tracker, log)
		if err != nil {
			return err
		}
		svcCfg.Callbacks = urls
		routes[webhook.PathPrefix] = callbacks
	}
	svc, err := server.NewService(svcCfg)
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		GRPCAddr:        cfg.GRPCAddr,
		HTTPAddr:        cfg.HTTPAddr,
		ShutdownTimeout: cfg.ShutdownTimeout,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		Logger:          log,
		Routes:          routes,
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

// randomSecret makes a webhook secret for a gateway that only talks to its own
// simulator.
func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
