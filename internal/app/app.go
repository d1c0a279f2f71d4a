// Package app builds the gateway from its configuration and runs it: the
// parts (upstream client, state, tracker, reconciler, webhook handler,
// service, listeners) are all built by New, which starts nothing, and served
// by Run. main parses the configuration and calls these two.
package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/comfygate/comfygate/deployments"
	"github.com/comfygate/comfygate/internal/version"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/webhook"
)

// App is a gateway built and ready to serve.
type App struct {
	log        *slog.Logger
	sim        *simulator // nil without --simulate
	backend    *backend   // where the state is kept
	hub        *state.Hub // the watchers of this replica
	reconciler *state.Reconciler
	srv        *server.Server
	dbg        *debugServer // nil without --debug-addr
	webhooks   *webhooks    // nil without --tenants-file
	stored     *stored      // nil without --storage-url
	// reloadable are the files SIGHUP reloads; reload, when set, reloads
	// them on SIGHUP until its context ends.
	reloadable []reloadable
	reload     func(context.Context) error
	// release undoes what New acquired that Run does not stop by itself:
	// the signal subscription and the tracer, flushed last.
	release []func()
}

// New builds every part of the gateway from cfg, opening its listeners, and
// starts nothing: any error (a port in use, a certificate that does not load)
// comes back here, with what was built released, before a goroutine of the
// gateway's runs. ctx bounds the start-up calls (the tracer's set-up, the
// look at Redis's persistence). cfg must have passed Validate (ParseConfig
// does it).
func New(ctx context.Context, cfg *Config, log *slog.Logger) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = new(*cfg) // the simulator may fill in the public URL
	build := version.Get()
	log.Info("comfygate starting", "version", build.Version, "commit", build.Commit, "go", build.Go)
	a := &App{log: log}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if cfg.webhookSecretFlag {
		log.Warn("--webhook-secret on the command line shows in process listings; use --webhook-secret-file or COMFYGATE_WEBHOOK_SECRET")
	}
	if cfg.webhookSecretFileOpen {
		log.Warn("--webhook-secret-file may be read by other users than its owner; chmod 600 it", "file", cfg.WebhookSecretFile)
	}

	tp, stopTracing, err := newTracer(ctx, cfg.Tracing)
	if err != nil {
		return nil, err
	}
	a.release = append(a.release, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("flushing traces failed", "error", err)
		}
	})
	// An interface holding a nil *sdktrace.TracerProvider is not nil: the
	// parts are given a nil interface unless there is a tracer.
	var tracer trace.TracerProvider
	if tp != nil {
		tracer = tp
	}

	upstreamURL, token := cfg.RunComfyURL, cfg.RunComfyToken
	if cfg.Simulate {
		if cfg.PublicURL == "" {
			// Let the simulator call back this gateway, so that `make run`
			// shows live updates with no further setup.
			cfg.PublicURL = cfg.selfURL()
			if len(cfg.WebhookSecrets) == 0 {
				cfg.WebhookSecrets = []string{randomSecret()}
			}
		}
		if a.sim, err = newSimulator(log.With("component", "simulator"), token); err != nil {
			return nil, err
		}
		upstreamURL, token = a.sim.url, a.sim.token
	}

	reg := newRegistry(build)
	upstream := cfg.upstreamConfig(upstreamURL, token)
	upstream.Observe = upstreamLatency(reg)
	upstream.Tracer = tracer
	client, err := runcomfy.New(upstream)
	if err != nil {
		return nil, err
	}
	// The poller retries nothing itself: a failed poll is simply due again
	// later, and a 429 must pause every poll at once rather than after the
	// client has waited out its own retries.
	upstream.MaxRetries = -1
	pollClient, err := runcomfy.New(upstream)
	if err != nil {
		return nil, err
	}

	if a.backend, err = newBackend(ctx, cfg, log); err != nil {
		return nil, err
	}
	metrics := server.NewMetrics(reg)
	limitsCfg := cfg.limitsConfig()
	limitsCfg.Rates, limitsCfg.Metrics = a.backend.rates, metrics
	limits, err := server.NewTenantLimits(limitsCfg)
	if err != nil {
		return nil, err
	}
	var copies state.WorkQueue
	if cfg.StorageURL != "" {
		copies = a.backend.queues.Queue(copyQueue)
	}
	tracker, err := state.NewTracker(state.TrackerConfig{
		Store: a.backend.store, Results: client, Retention: cfg.Retention,
		Schedule: a.backend.schedule, PollInterval: cfg.PollInterval, Copies: copies,
	})
	if err != nil {
		return nil, err
	}
	if copies != nil {
		if a.stored, err = newStored(ctx, cfg, copies, tracker, reg, log.With("component", "outputs")); err != nil {
			return nil, err
		}
	}
	if a.hub, err = state.NewHub(a.backend.bus, 0); err != nil {
		return nil, err
	}
	a.reconciler, err = state.NewReconciler(state.ReconcilerConfig{
		Schedule:    a.backend.schedule,
		Tracker:     tracker,
		Upstream:    pollClient,
		Watching:    a.hub.IsWatching,
		Watched:     a.hub.Watched,
		Interval:    cfg.PollInterval,
		Concurrency: cfg.PollConcurrency,
		Retention:   cfg.Retention,
		Canceller:   pollClient,
		Owner:       replicaName(),
		Logger:      log.With("component", "reconciler"),
	})
	if err != nil {
		return nil, err
	}

	svcCfg := server.ServiceConfig{
		Upstream: client, Logger: log, Metrics: metrics, Limits: limits,
		Tracker: tracker, Watches: a.hub, Polls: a.reconciler, Idempotency: a.backend.idem, Lister: a.backend.lister, Usage: a.backend.usage,
		FreshFor: cfg.PollInterval, RefreshTimeout: cfg.RefreshTimeout,
		Slots: a.backend.slots,
		// The submit's own deadline outlasts the upstream call's, so that it
		// is the client's timeout, not this one, that ends a slow submit.
		SubmitTimeout: max(time.Minute, cfg.UpstreamTimeout+time.Second),
	}
	if a.backend.pinger != nil {
		svcCfg.Backend = a.backend.pinger
	}
	if a.stored != nil {
		svcCfg.ObjectURLs = a.stored.urls(cfg.StorageURLLifetime)
		svcCfg.Uploads = a.stored.uploads
	}
	svcCfg.UploadTimeout = cfg.UploadTimeout
	svcCfg.DropFinal = everyNth(cfg.DropFinalEvery)
	srvCfg := server.Config{
		GRPCAddr:             cfg.GRPCAddr,
		HTTPAddr:             cfg.HTTPAddr,
		ShutdownTimeout:      cfg.ShutdownTimeout,
		MaxBodyBytes:         cfg.MaxBodyBytes,
		MaxConcurrentStreams: uint32(cfg.MaxStreams),
		Logger:               log,
		Version:              build.Version,
		CallbackRoutes:       map[string]http.Handler{},
		WebhookAddr:          cfg.WebhookAddr,
		AdminAddr:            cfg.AdminAddr,
		AdminRoutes:          profilerRoutes(),
		CORSOrigins:          cfg.CORSOrigins,
		Metrics:              metrics,
		Limits:               limits,
		Tracer:               tracer,
		ReadTimeout:          cfg.ReadTimeout,
		MaxUploadBytes:       cfg.UploadMaxBytes,
		UploadTimeout:        cfg.UploadTimeout,
		IdleTimeout:          cfg.IdleTimeout,
		MaxConnectionIdle:    cfg.MaxConnectionIdle,
		MaxInflightBodyBytes: cfg.MaxInflightBodyBytes,
		MaxConnections:       cfg.MaxConnections,
	}
	if a.backend.pinger != nil {
		srvCfg.Ready = a.backend.pinger.Ping
	}
	if srvCfg.TLS, err = cfg.tlsConfig(); err != nil {
		return nil, err
	}
	authn, tenants, err := a.watchAuth(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.DeploymentsFile != "" {
		policies, err := deployments.Open(cfg.DeploymentsFile)
		if err != nil {
			return nil, fmt.Errorf("--deployments-file: %w", err)
		}
		svcCfg.Policies = policies
		a.reloadable = append(a.reloadable, reloadable{policies, "deployments file"})
		log.Info("deployment policies loaded", "deployments_file", cfg.DeploymentsFile, "deployments", policies.Len())
	}
	a.watchHangup()
	if authn != nil {
		srvCfg.Auth = authn
		log.Info("client API keys required", "keys_file", cfg.APIKeysFile, "tenants_file", cfg.TenantsFile)
	} else {
		log.Warn("no API keys (--api-keys-file, or keys in --tenants-file): every caller is accepted, as one tenant")
		// On loopback, only local names: a web page whose DNS name is
		// rebound to 127.0.0.1 must not become a caller.
		srvCfg.LocalHostsOnly = loopback(cfg.HTTPAddr)
	}
	if tenants != nil {
		if a.webhooks, err = newWebhooks(cfg, tenants, a.backend.outbox, svcCfg.ObjectURLs, reg, log.With("component", "webhooks")); err != nil {
			return nil, err
		}
		svcCfg.Webhooks = a.webhooks
		log.Info("outbound webhooks enabled", "tenants_file", cfg.TenantsFile, "durable", a.backend.pinger != nil)
	}
	var hook *webhook.Handler
	if cfg.PublicURL != "" {
		signer, err := webhook.NewSigner(cfg.WebhookSecrets)
		if err != nil {
			return nil, err
		}
		if svcCfg.Callbacks, err = webhook.NewURLs(cfg.PublicURL, signer); err != nil {
			return nil, err
		}
		if hook, err = webhook.NewHandler(signer, tracker, log, tracer); err != nil {
			return nil, err
		}
		srvCfg.CallbackRoutes[webhook.PathPrefix] = hook
	}
	registerStateMetrics(reg, tracker, a.reconciler, hook, a.backend.reconnects)
	svc, err := server.NewService(svcCfg)
	if err != nil {
		return nil, err
	}
	srvCfg.Drain = svc.Drain
	if cfg.DebugAddr != "" {
		if a.dbg, err = newDebugServer(cfg.DebugAddr); err != nil {
			return nil, err
		}
	}
	if a.srv, err = server.New(srvCfg, svc); err != nil {
		return nil, err
	}
	if a.sim != nil {
		log.Info("simulating RunComfy", "url", a.sim.url, "callbacks_to", redactedURL(cfg.PublicURL))
	}
	return a, nil
}

// Run serves until ctx ends, then drains (server.Server.Run) and stops every
// part. It returns the first part's failure, if any; it is called once.
func (a *App) Run(ctx context.Context) error {
	defer a.releaseAll()
	g, gctx := errgroup.WithContext(ctx)
	// The simulator and the bus outlive the drain, whose in-flight calls
	// still reach RunComfy and publish; the reconciler, which as it stops
	// queues the webhook events it held back after a loss of Redis's data;
	// and the deliverer, which hands back the jobs it did not finish: they
	// stop once all have.
	after, stopAfter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAfter()
	var running atomic.Int32
	running.Store(2)
	if a.webhooks != nil {
		running.Add(1)
	}
	stopped := func() {
		if running.Add(-1) == 0 {
			stopAfter()
		}
	}
	if a.sim != nil {
		g.Go(func() error { return a.sim.run(after) })
	}
	if a.backend.run != nil {
		g.Go(func() error { return a.backend.run(after, a.hub) })
	}
	if a.reload != nil {
		g.Go(func() error { return a.reload(gctx) })
	}
	if a.dbg != nil {
		g.Go(func() error { return a.dbg.run(gctx, a.log) })
	}
	g.Go(func() error {
		defer stopped()
		return a.reconciler.Run(gctx)
	})
	if a.webhooks != nil {
		g.Go(func() error {
			defer stopped()
			return a.webhooks.Run(gctx)
		})
	}
	if a.stored != nil {
		g.Go(func() error { return a.stored.run(gctx) })
	}
	g.Go(func() error {
		defer stopped()
		return a.srv.Run(gctx)
	})
	return g.Wait()
}

// close releases what New built, for a start that failed.
func (a *App) close() {
	if a.dbg != nil {
		a.dbg.lis.Close()
	}
	if a.sim != nil {
		a.sim.close()
	}
	if a.backend != nil && a.backend.close != nil {
		a.backend.close()
	}
	if a.stored != nil {
		a.stored.store.Close()
	}
	a.releaseAll()
}

// releaseAll runs the releases in reverse order, once.
func (a *App) releaseAll() {
	for i := len(a.release) - 1; i >= 0; i-- {
		a.release[i]()
	}
	a.release = nil
}

// reloadOnHangup reloads the files (the API keys and the tenants file, the
// deployments file) on every signal on hup until ctx ends. A file that does
// not load leaves what is in use unchanged, and the others are reloaded
// still. hup stays notified until Run returns, so a SIGHUP during the drain
// is ignored rather than fatal.
func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, files []reloadable, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			for _, f := range files {
				if err := f.files.Reload(); err != nil {
					log.Error(f.what+" not reloaded; what was in use stays", "error", err)
					continue
				}
				log.Info(f.what + " reloaded")
			}
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

// redactedURL is raw with any password replaced, for a log line.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// everyNth answers true on every nth call, concurrently; nil for n < 1.
func everyNth(n int) func() bool {
	if n < 1 {
		return nil
	}
	var calls atomic.Int64
	return func() bool { return calls.Add(1)%int64(n) == 0 }
}
