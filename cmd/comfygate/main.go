// Command comfygate serves the comfygate gRPC and REST API in front of the
// RunComfy Serverless API.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/state/redisstore"
	"github.com/comfygate/comfygate/webhook"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if len(os.Args) > 1 && isCommand(os.Args[1]) {
		// A client command (cli.go): it has exit codes of its own.
		code := runCLI(ctx, os.Args[1:], os.Getenv, osStdio())
		stop()
		os.Exit(code)
	}
	err := realMain(ctx, os.Args[1:], os.Getenv, os.Stderr)
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

// realMain builds the parts from the configuration and runs them until ctx ends.
// An error from before the logger exists (flags, configuration) is returned
// as it is, for main to print; one from after is logged, in the chosen
// format, and returned as a loggedError.
func realMain(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) && requestedLogFormat(args, getenv) == "json" {
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
	restoreLibraryLoggers := routeLibraryLogs(log)
	defer restoreLibraryLoggers()
	if cfg.webhookSecretFlag {
		log.Warn("--webhook-secret on the command line shows in process listings; use --webhook-secret-file or COMFYGATE_WEBHOOK_SECRET")
	}
	if cfg.webhookSecretFileOpen {
		log.Warn("--webhook-secret-file may be read by other users than its owner; chmod 600 it", "file", cfg.WebhookSecretFile)
	}

	tp, stopTracing, err := newTracer(ctx, getenv)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("flushing traces failed", "error", err)
		}
	}()

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

	reg := newRegistry()
	upstream := runcomfy.Config{
		BaseURL:    upstreamURL,
		APIVersion: cfg.RunComfyAPIVersion,
		Token:      token,
		Timeout:    cfg.UpstreamTimeout,
		Observe:    upstreamLatency(reg),
	}
	if tp != nil {
		upstream.Tracer = tp
	}
	client, err := runcomfy.New(upstream)
	if err == nil {
		// The poller retries nothing itself: a failed poll is simply due again
		// later, and a 429 must pause every poll at once rather than after the
		// client has waited out its own retries.
		var pollClient *runcomfy.Client
		upstream.MaxRetries = -1
		if pollClient, err = runcomfy.New(upstream); err == nil {
			err = serve(gctx, g, cfg, reg, tp, client, pollClient, log, stopSim)
		}
	}
	if err != nil {
		stopSim()
		return errors.Join(err, g.Wait())
	}
	return g.Wait()
}

// serve builds the state, the service and the listeners and starts them in g.
// after runs once the gateway has drained.
func serve(ctx context.Context, g *errgroup.Group, cfg *Config, reg *prometheus.Registry, tp *sdktrace.TracerProvider, client, pollClient *runcomfy.Client, log *slog.Logger, after func()) error {
	metrics := server.NewMetrics(reg)
	svcCfg := server.ServiceConfig{Upstream: client, Logger: log, Metrics: metrics,
		FreshFor: cfg.PollInterval, RefreshTimeout: cfg.RefreshTimeout,
		// The submit's own deadline outlasts the upstream call's, so that it
		// is the client's timeout, not this one, that ends a slow submit.
		SubmitTimeout: max(time.Minute, cfg.UpstreamTimeout+time.Second)}
	srvCfg := server.Config{
		GRPCAddr:             cfg.GRPCAddr,
		HTTPAddr:             cfg.HTTPAddr,
		ShutdownTimeout:      cfg.ShutdownTimeout,
		MaxBodyBytes:         cfg.MaxBodyBytes,
		MaxConcurrentStreams: uint32(cfg.MaxStreams),
		Logger:               log,
		Routes:               map[string]http.Handler{},
		Metrics:              metrics,
		ReadTimeout:          cfg.ReadTimeout,
		IdleTimeout:          cfg.IdleTimeout,
		MaxConnectionIdle:    cfg.MaxConnectionIdle,
		MaxInflightBodyBytes: cfg.MaxInflightBodyBytes,
		MaxConnections:       cfg.MaxConnections,
	}
	if tp != nil {
		srvCfg.Tracer = tp
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		srvCfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var (
		store    state.Store
		bus      state.Bus
		schedule state.Schedule
		idem     state.Idempotency
		// runBus, when set, serves the bus until its context ends; it must
		// outlive the drain, like the simulator.
		runBus func(context.Context, *state.Hub) error
		// reconnects counts pub/sub reconnects (Redis only).
		reconnects func() int64
		// rates keeps the submit and read buckets: in Redis they are shared by
		// every replica; nil keeps them in this process.
		rates server.RateLimiter
	)
	if cfg.RedisURL == "" {
		mem := memory.New(nil)
		store, bus, schedule, idem = mem, mem, mem, mem
	} else {
		opts, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			return fmt.Errorf("--redis-url: %w", redactURLError(err))
		}
		if opts.DialerRetries == 0 {
			// go-redis dials five times by default before a command fails; an
			// outage should turn /readyz and Submit to unavailable promptly.
			opts.DialerRetries = 2
		}
		// Every call is bounded by --redis-timeout, and so are its parts: a
		// dial, and the wait for a pooled connection. go-redis then honours
		// the call's deadline on the connection itself.
		if opts.DialTimeout <= 0 || opts.DialTimeout > cfg.RedisTimeout {
			opts.DialTimeout = cfg.RedisTimeout
		}
		opts.PoolTimeout = cfg.RedisTimeout
		opts.ContextTimeoutEnabled = true
		rdb := redis.NewClient(opts)
		backend, err := redisstore.New(rdb, redisstore.Options{Prefix: cfg.RedisPrefix, Logger: log.With("component", "redis"), CallTimeout: cfg.RedisTimeout})
		if err != nil {
			return err
		}
		store, bus, schedule, idem = backend, backend, backend, backend
		reconnects = backend.Reconnects
		rates = backend.RateLimiter()
		svcCfg.Backend = backend
		srvCfg.Ready = backend.Ping
		runBus = func(ctx context.Context, hub *state.Hub) error {
			defer rdb.Close()
			return backend.Run(ctx, func(ctx context.Context) error { return hub.Resync(ctx, backend) })
		}
		log.Info("state in Redis", "addr", opts.Addr, "db", opts.DB, "prefix", cfg.RedisPrefix)
		checkPersistence(ctx, backend, log)
	}
	limits, err := server.NewTenantLimits(server.LimitsConfig{
		SubmitRate: cfg.SubmitRate, SubmitBurst: cfg.SubmitBurst,
		ReadRate: cfg.ReadRate, ReadBurst: cfg.ReadBurst,
		MaxWatches: cfg.MaxWatchesPerTenant,
		Rates:      rates,
		Metrics:    metrics,
	})
	if err != nil {
		return err
	}
	svcCfg.Limits, srvCfg.Limits = limits, limits
	tracker, err := state.NewTracker(state.TrackerConfig{
		Store: store, Results: client, Retention: cfg.Retention,
		Schedule: schedule, PollInterval: cfg.PollInterval,
	})
	if err != nil {
		return err
	}
	hub, err := state.NewHub(bus, 0)
	if err != nil {
		return err
	}
	reconciler, err := state.NewReconciler(state.ReconcilerConfig{
		Schedule:    schedule,
		Tracker:     tracker,
		Upstream:    pollClient,
		Watching:    hub.IsWatching,
		Watched:     hub.Watched,
		Interval:    cfg.PollInterval,
		Concurrency: cfg.PollConcurrency,
		Retention:   cfg.Retention,
		Owner:       replicaName(),
		Logger:      log.With("component", "reconciler"),
	})
	if err != nil {
		return err
	}
	svcCfg.Tracker, svcCfg.Watches, svcCfg.Polls, svcCfg.Idempotency = tracker, hub, reconciler, idem
	var reload func() error
	if cfg.APIKeysFile != "" {
		keys, err := auth.Load(cfg.APIKeysFile)
		if err != nil {
			return err
		}
		srvCfg.Auth = keys
		// Catch SIGHUP now, before the listeners open, and for good: its
		// default action would kill the gateway, even during the drain. The
		// reloads start with the rest, once every part is built: a part
		// that fails to build must find no goroutine to wait for.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		reload = func() error { return reloadOnHangup(ctx, hup, keys, log) }
		log.Info("client API keys required", "file", cfg.APIKeysFile)
	} else {
		log.Warn("no --api-keys-file: every caller is accepted, as one tenant")
	}
	var hook *webhook.Handler
	if cfg.PublicURL != "" {
		signer, err := webhook.NewSigner(cfg.WebhookSecrets)
		if err != nil {
			return err
		}
		urls, err := webhook.NewURLs(cfg.PublicURL, signer)
		if err != nil {
			return err
		}
		var hookTracer trace.TracerProvider // nil unless tracing: not a nil *sdktrace.TracerProvider
		if tp != nil {
			hookTracer = tp
		}
		if hook, err = webhook.NewHandler(signer, tracker, log, hookTracer); err != nil {
			return err
		}
		svcCfg.Callbacks = urls
		srvCfg.Routes[webhook.PathPrefix] = hook
	}
	registerStateMetrics(reg, tracker, reconciler, hook, reconnects)
	svc, err := server.NewService(svcCfg)
	if err != nil {
		return err
	}
	srvCfg.Drain = svc.Drain
	var dbg *debugServer
	if cfg.DebugAddr != "" {
		if dbg, err = newDebugServer(cfg.DebugAddr); err != nil {
			return err
		}
	}
	srv, err := server.New(srvCfg, svc)
	if err != nil {
		if dbg != nil {
			dbg.lis.Close()
		}
		return err
	}
	if reload != nil {
		g.Go(reload)
	}
	if dbg != nil {
		g.Go(func() error { return dbg.run(ctx, log) })
	}
	stopBus := func() {}
	if runBus != nil {
		busCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stopBus = cancel
		g.Go(func() error { return runBus(busCtx, hub) })
	}
	g.Go(func() error { return reconciler.Run(ctx) })
	g.Go(func() error {
		defer after()
		defer stopBus()
		return srv.Run(ctx)
	})
	return nil
}

// requestedLogFormat is the --log-format that args or the environment ask
// for, read without parsing the rest: for an error found while parsing.
func requestedLogFormat(args []string, getenv func(string) string) string {
	format := getenv(envName("log-format"))
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "log-format" || !strings.HasPrefix(a, "-") {
			continue
		}
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		format = value
	}
	return format
}

// persistenceCheckTimeout bounds the start-up look at Redis's settings: a
// Redis that is down now is reported by /readyz, not here.
const persistenceCheckTimeout = 2 * time.Second

// checkPersistence warns when Redis keeps nothing on disk: a restart of it then
// loses every record, idempotency key and poll schedule (README, Operations).
func checkPersistence(ctx context.Context, backend *redisstore.Backend, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, persistenceCheckTimeout)
	defer cancel()
	p, err := backend.Persistence(ctx)
	switch {
	case err != nil:
		log.Info("Redis persistence not known (CONFIG GET refused or unanswered); make sure AOF or RDB is on", "error", err)
	case !p.AOF && !p.RDB:
		log.Warn("Redis keeps nothing on disk (no AOF, no RDB snapshots): a restart of Redis loses every request record, idempotency key and poll schedule; turn on appendonly")
	default:
		log.Info("Redis persistence", "aof", p.AOF, "rdb", p.RDB)
	}
}

// loggedError is an error realMain has already logged, in the chosen format.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// reloadOnHangup reloads the API keys on every signal on hup until ctx ends. A
// file that does not load leaves the keys in use unchanged. hup stays notified
// afterwards, so a SIGHUP during the drain is ignored rather than fatal.
func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, keys *auth.Keys, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			if err := keys.Reload(); err != nil {
				log.Error("API keys not reloaded; the previous keys stay in use", "error", err)
				continue
			}
			log.Info("API keys reloaded")
		}
	}
}

// replicaName names this process in poll leases: host, pid and a random part,
// unique even across restarts that reuse a pid.
func replicaName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randomSecret()[:8])
}

// randomSecret makes a webhook secret for a gateway that only talks to its own
// simulator.
func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
