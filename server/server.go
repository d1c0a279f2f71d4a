package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/cors"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/uploads"
)

// Config holds the listener settings.
type Config struct {
	// GRPCAddr and HTTPAddr are host:port; port 0 picks a free port (tests).
	GRPCAddr string
	HTTPAddr string
	// ShutdownTimeout bounds the drain after the context ends; default 15s.
	ShutdownTimeout time.Duration
	// MaxBodyBytes bounds a REST body and a gRPC message; default 10 MiB, since
	// base64 media inputs are large.
	MaxBodyBytes int64
	// MaxConcurrentStreams bounds the calls and watch streams one client
	// connection may have open; default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	Logger               *slog.Logger
	// Version is the build's version, shown in the OpenAPI document's info.
	Version string
	// CallbackRoutes are RunComfy's callback handlers by ServeMux pattern,
	// served on WebhookAddr when it is set, else on HTTPAddr.
	CallbackRoutes map[string]http.Handler
	// WebhookAddr, when set, is a listener that serves CallbackRoutes only:
	// the one that must face the internet.
	WebhookAddr string
	// AdminAddr, when set, is a listener for operators: /metrics, /healthz,
	// /readyz and AdminRoutes (the profiler). HTTPAddr then serves no
	// /metrics.
	AdminAddr string
	// AdminRoutes are more handlers for AdminAddr, by ServeMux pattern.
	AdminRoutes map[string]http.Handler
	// CORSOrigins are the origins browsers may call the REST API from
	// (Access-Control-Allow-Origin, with preflight); none when empty.
	CORSOrigins []string
	// LocalHostsOnly answers only requests whose Host is a loopback name
	// (localhost) or an IP address, on every listener: for a gateway
	// without API keys on loopback, which a web page whose DNS name was
	// rebound to 127.0.0.1 could otherwise call as its own origin.
	LocalHostsOnly bool
	// Tracer, when set, traces every RPC, REST call and callback, and carries
	// the trace context from REST into gRPC (W3C trace context).
	Tracer trace.TracerProvider
	// Metrics, when set, adds the gRPC server metrics and serves the registry
	// on /metrics.
	Metrics *Metrics
	// Drain, when set, runs first when the server starts draining (the
	// service ends its watch streams).
	Drain func()
	// TLS, when set, serves both listeners over TLS (nil: plaintext).
	TLS *tls.Config
	// Auth, when set, requires an API key on every call but health and
	// reflection.
	Auth Authenticator
	// Ready, when set, must succeed for /readyz to report ready (the state
	// backend answers).
	Ready func(ctx context.Context) error
	// ReadTimeout bounds how long a client may take to send a request body
	// (REST and callbacks); default DefaultReadTimeout. Streams, which send
	// no body, are not affected.
	ReadTimeout time.Duration
	// IdleTimeout closes idle HTTP keep-alive connections; default
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxConnectionIdle closes gRPC connections with no call open; default
	// DefaultMaxConnectionIdle.
	MaxConnectionIdle time.Duration
	// MaxInflightBodyBytes bounds the REST request bodies held at once;
	// default DefaultMaxInflightBodyBytes.
	MaxInflightBodyBytes int64
	// Limits, when set, applies the per-tenant limits (reads, watch streams)
	// to every call after authentication.
	Limits *TenantLimits
	// MaxConnections bounds the connections each listener holds open; 0 is
	// no bound.
	MaxConnections int
	// MaxUploadBytes bounds a REST upload's file (its body, and a form's
	// framing around it); default uploads.DefaultMaxBytes. (The service
	// bounds the file itself.)
	MaxUploadBytes int64
	// UploadTimeout bounds the time a client may take to send an upload's
	// body; default DefaultUploadTimeout.
	UploadTimeout time.Duration
}

// Defaults of the limits every listener applies; the flags of the same names
// set them.
const (
	DefaultReadTimeout          = 30 * time.Second
	DefaultIdleTimeout          = 120 * time.Second
	DefaultMaxConnectionIdle    = 15 * time.Minute
	DefaultMaxInflightBodyBytes = 256 << 20
	DefaultMaxWatchesPerTenant  = 1000
	DefaultReadRate             = 20
	DefaultReadBurst            = 40
	DefaultMaxConnections       = 10000
)

// maxHeaderListSize bounds a gRPC call's headers (its metadata).
const maxHeaderListSize = 64 << 10

// readyTimeout bounds the backend check behind /readyz; probes have short
// deadlines of their own.
const readyTimeout = time.Second

// DefaultMaxBodyBytes is the default request size limit.
const DefaultMaxBodyBytes = 10 << 20

// DefaultMaxConcurrentStreams bounds the streams of one client connection. A
// backend following all its jobs holds one watch stream per job, for minutes,
// so the bound is far above HTTP/2's customary 100-250; it still caps what one
// connection can make a replica hold (about 10 KiB per idle watch stream).
const DefaultMaxConcurrentStreams = 10000

// Server owns the gRPC and HTTP listeners. The HTTP side carries the REST gateway,
// which dials the gRPC side like any client so that REST calls pass through the
// same interceptors, and the health endpoints.
type Server struct {
	log             *slog.Logger
	drain           func()
	shutdownTimeout time.Duration
	grpcLis         net.Listener
	httpLis         net.Listener
	grpcServer      *grpc.Server
	httpServer      *http.Server
	health          *health.Server
	gatewayConn     *grpc.ClientConn
	ready           atomic.Bool
	// extra are the optional listeners: webhook and admin.
	extra []*extraListener
}

// extraListener is an optional HTTP listener with its server.
type extraListener struct {
	name string
	lis  net.Listener
	srv  *http.Server
}

// New opens both listeners and builds the servers; nothing is served until Run.
// Opening the listeners here lets callers learn the real addresses of ":0" ports.
func New(cfg Config, svc comfygatev1.GatewayServiceServer) (*Server, error) {
	if svc == nil {
		return nil, errors.New("server: service is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("server: logger is required")
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	cfg.ReadTimeout = cmp.Or(cfg.ReadTimeout, DefaultReadTimeout)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.MaxConnectionIdle = cmp.Or(cfg.MaxConnectionIdle, DefaultMaxConnectionIdle)
	cfg.MaxUploadBytes = cmp.Or(cfg.MaxUploadBytes, uploads.DefaultMaxBytes)
	cfg.UploadTimeout = cmp.Or(cfg.UploadTimeout, DefaultUploadTimeout)
	cfg.MaxInflightBodyBytes = max(cmp.Or(cfg.MaxInflightBodyBytes, DefaultMaxInflightBodyBytes), cfg.MaxBodyBytes)
	s := &Server{log: cfg.Logger, drain: cfg.Drain, shutdownTimeout: cfg.ShutdownTimeout, health: health.NewServer()}

	var err error
	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("listen gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	if s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		s.grpcLis.Close()
		return nil, fmt.Errorf("listen HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	for _, e := range []struct{ name, addr string }{{"webhook", cfg.WebhookAddr}, {"admin", cfg.AdminAddr}} {
		if e.addr == "" {
			continue
		}
		lis, err := net.Listen("tcp", e.addr)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("listen %s on %s: %w", e.name, e.addr, err)
		}
		s.extra = append(s.extra, &extraListener{name: e.name, lis: lis})
	}
	// Past MaxConnections a listener stops accepting until one closes: new
	// clients wait in the kernel's queue, and the process keeps descriptors
	// for what it has (Redis, RunComfy, the connections it serves) instead
	// of failing every accept with "too many open files".
	if cfg.MaxConnections > 0 {
		s.grpcLis = netutil.LimitListener(s.grpcLis, cfg.MaxConnections)
		s.httpLis = netutil.LimitListener(s.httpLis, cfg.MaxConnections)
		for _, e := range s.extra {
			e.lis = netutil.LimitListener(e.lis, cfg.MaxConnections)
		}
	}

	// A message carries the input plus a little framing.
	maxMsg := int(cfg.MaxBodyBytes) + 64<<10
	if cfg.TLS != nil {
		s.httpLis = tls.NewListener(s.httpLis, cfg.TLS.Clone())
		for _, e := range s.extra {
			e.lis = tls.NewListener(e.lis, cfg.TLS.Clone())
		}
	}
	handoff := newHandoff()
	failed := &undecodable{}
	opts := append(interceptors(cfg.Logger, cfg.Auth, cfg.Metrics, cfg.Limits, handoff, cfg.MaxBodyBytes),
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxConcurrentStreams(cmp.Or(cfg.MaxConcurrentStreams, DefaultMaxConcurrentStreams)),
		grpc.ForceServerCodecV2(newCodec(failed)),
		// Watch streams live for minutes: probe idle connections so a vanished
		// client frees its stream, and let well-behaved clients keep alive.
		// A connection with no call open is closed after MaxConnectionIdle,
		// so idle clients cannot hold connections (and their buffers) forever.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: cfg.MaxConnectionIdle}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	// Bodies (REST) and messages (gRPC) held at once draw from one budget.
	inflight := newInflightBudget(cfg.MaxInflightBodyBytes, int64(maxMsg), cfg.Auth != nil)
	guard := &streamGuard{
		log: cfg.Logger, metrics: cfg.Metrics, auth: cfg.Auth, inflight: inflight,
		// A message reserves its largest size before it is read, but never
		// more than the whole budget, which it would wait for forever.
		maxMsg:  min(int64(maxMsg), cfg.MaxInflightBodyBytes),
		gateway: handoff, readTimeout: cfg.ReadTimeout,
		publicStreams: semaphore.NewWeighted(maxPublicStreams), publicMessages: semaphore.NewWeighted(maxPublicMessages),
		waiting: map[string]int{},
	}
	opts = append(opts, grpc.InTapHandle(guard.tap), grpc.StatsHandler(guard),
		// Metadata is a few headers; grpc-go would take 16 MiB of them.
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.InitialWindowSize(submitStreamWindow), grpc.InitialConnWindowSize(connWindow))
	var clientOpts []grpc.DialOption
	if cfg.Tracer != nil {
		prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(cfg.Tracer), otelgrpc.WithPropagators(prop))))
		clientOpts = append(clientOpts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(cfg.Tracer), otelgrpc.WithPropagators(prop))))
	}
	s.grpcServer = grpc.NewServer(opts...)
	s.grpcServer.RegisterService(failed.desc(&comfygatev1.GatewayService_ServiceDesc), svc)
	// Health and reflection, too, answer a message that does not decode
	// as the gateway's own service does.
	healthpb.RegisterHealthServer(decodingRegistrar{s.grpcServer, failed}, s.health)
	if cfg.Metrics != nil {
		cfg.Metrics.grpc.initialize(s.grpcServer)
	}
	reflection.Register(decodingRegistrar{s.grpcServer, failed})

	gw, conn, err := newGateway(dialTarget(s.grpcLis.Addr()), maxMsg, selfTrust(cfg.TLS), handoff, clientOpts...)
	if err != nil {
		s.closeListeners()
		return nil, err
	}
	s.gatewayConn = conn

	mux := http.NewServeMux()
	// The API routes authenticate and bound their bodies before grpc-gateway
	// reads anything (httpguard.go).
	var originAllowed func(*http.Request) bool
	if len(cfg.CORSOrigins) > 0 {
		originAllowed = corsFor(cfg.CORSOrigins).OriginAllowed
	}
	bodies := newBodyGuard(cfg.Logger, cfg.Metrics, cfg.Auth, cfg.MaxBodyBytes, inflight, originAllowed)
	mux.Handle("/v1/", restMethods(bodies.wrap(gw)))
	// WatchRequest as Server-Sent Events, over the REST gateway's connection
	// (sse.go), and the API's OpenAPI document (openapi.go).
	mux.Handle(eventsRoute, bodies.wrap(newEventsHandler(comfygatev1.NewGatewayServiceClient(conn), cfg.Logger)))
	// Upload with the file as the body (upload.go), streamed: the body may
	// be as large as an upload, and is held a few chunks at a time.
	mux.Handle(uploadsRoute, bodies.streaming(cfg.MaxUploadBytes+uploadFormSlack, 2*uploadChunk, "upload", cfg.MaxUploadBytes).
		wrap(&uploadHandler{client: comfygatev1.NewGatewayServiceClient(conn), log: cfg.Logger, maxBytes: cfg.MaxUploadBytes}))
	mux.Handle("GET /openapi.json", newOpenAPIHandler(cfg.Logger, cfg.Version))
	healthz := func(w http.ResponseWriter, _ *http.Request) { writePlain(w, http.StatusOK, "ok") }
	readyz := func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			writePlain(w, http.StatusServiceUnavailable, "not ready: draining")
			return
		}
		if cfg.Ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			if err := cfg.Ready(ctx); err != nil {
				writePlain(w, http.StatusServiceUnavailable, "not ready: state backend unavailable")
				return
			}
		}
		writePlain(w, http.StatusOK, "ready")
	}
	// Load balancers probe the port they send to: health stays on the API
	// listener even with an admin listener.
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", readyz)
	admin, callbacks := mux, mux
	for _, e := range s.extra {
		m := http.NewServeMux()
		switch e.name {
		case "admin":
			admin = m
			m.HandleFunc("GET /healthz", healthz)
			m.HandleFunc("GET /readyz", readyz)
			for pattern, h := range cfg.AdminRoutes {
				m.Handle(pattern, h)
			}
		case "webhook":
			callbacks = m
		}
		e.srv = s.newHTTPServer(cfg, localHosts(cfg.LocalHostsOnly, validPath(readDeadline(limitOtherBodies(m, cfg.MaxBodyBytes), cfg.ReadTimeout, cfg.UploadTimeout))))
	}
	if cfg.Metrics != nil {
		admin.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics.registry, promhttp.HandlerOpts{}))
	}
	for pattern, h := range cfg.CallbackRoutes {
		callbacks.Handle(pattern, h)
	}
	// Every body, callbacks' included, is read within ReadTimeout; a path
	// that is not UTF-8 is refused on every route.
	var handler http.Handler = validPath(readDeadline(limitOtherBodies(mux, cfg.MaxBodyBytes), cfg.ReadTimeout, cfg.UploadTimeout))
	if cfg.Tracer != nil {
		prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
		handler = otelhttp.NewHandler(handler, "http",
			otelhttp.WithTracerProvider(cfg.Tracer), otelhttp.WithPropagators(prop),
			// A callback's path holds its token, and spans record paths: callbacks
			// are not traced here.
			otelhttp.WithFilter(func(r *http.Request) bool { return !strings.HasPrefix(r.URL.Path, "/webhooks/") }),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "HTTP " + r.Method }))
	}
	// Outermost but for CORS, so the events route's access_token leaves the
	// URL before anything (a span, a log line) can record it.
	handler = tokenFromQuery(mux, handler)
	if len(cfg.CORSOrigins) > 0 {
		handler = corsFor(cfg.CORSOrigins).Handler(handler)
	}
	s.httpServer = s.newHTTPServer(cfg, localHosts(cfg.LocalHostsOnly, handler))
	return s, nil
}

// newHTTPServer is an HTTP server of the gateway's, with its timeouts.
func (s *Server) newHTTPServer(cfg Config, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(10*time.Second, cfg.ReadTimeout),
		IdleTimeout:       cfg.IdleTimeout,
		// The request line and headers travel on to the gRPC server as
		// metadata, which takes at most 64 KiB: over this bound the answer
		// is 431, not a failed call.
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
}

// maxHeaderBytes bounds an HTTP request's line and headers: net/http reads
// 4 KiB more than it, so 32 KiB in all, and answers 431 past that.
const maxHeaderBytes = 28 << 10

// closeListeners closes the listeners of a server that will not run.
func (s *Server) closeListeners() {
	s.grpcLis.Close()
	s.httpLis.Close()
	for _, e := range s.extra {
		e.lis.Close()
	}
}

// corsFor lets browsers on origins call the REST API: the API's methods and
// headers, with Retry-After readable by the page.
func corsFor(origins []string) *cors.Cors {
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: []string{http.MethodGet, http.MethodPost},
		AllowedHeaders: []string{"Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "Traceparent", "Tracestate", "Comfygate-Webhook", "Comfygate-Webhook-Events", "Comfygate-Max-Queue-Duration", "Comfygate-Max-Run-Duration", "Prefer"},
		ExposedHeaders: []string{"Retry-After", "Preference-Applied"},
		MaxAge:         600,
	})
}

// GRPCAddr is the address the gRPC listener is bound to.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the address the HTTP listener is bound to.
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// Run serves until ctx ends or a listener fails, then drains: readiness turns
// false, the HTTP server finishes in-flight requests, the gRPC server finishes
// in-flight calls, each within the shutdown timeout.
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := s.grpcServer.Serve(s.grpcLis)
		if errors.Is(err, grpc.ErrServerStopped) && ctx.Err() != nil {
			// Stopped by the drain before it began serving: a stop asked
			// for at start, not a failure.
			return nil
		}
		if err != nil {
			return fmt.Errorf("serve gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := s.httpServer.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP: %w", err)
		}
		return nil
	})
	for _, e := range s.extra {
		g.Go(func() error {
			if err := e.srv.Serve(e.lis); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s HTTP: %w", e.name, err)
			}
			return nil
		})
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(comfygatev1.GatewayService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.ready.Store(true)
	attrs := []any{"grpc_addr", s.GRPCAddr(), "http_addr", s.HTTPAddr()}
	for _, e := range s.extra {
		attrs = append(attrs, e.name+"_addr", e.lis.Addr().String())
	}
	s.log.Info("serving", attrs...)

	g.Go(func() error {
		<-gctx.Done()
		return s.shutdown()
	})
	return g.Wait()
}

func (s *Server) shutdown() error {
	s.ready.Store(false)
	s.health.Shutdown()
	s.log.Info("draining", "timeout", s.shutdownTimeout)
	if s.drain != nil {
		s.drain()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.shutdownTimeout)
	defer cancel()

	// REST first: its calls ride on the gRPC server, which must outlive them.
	// A drain cut short by the timeout is logged, not returned: the process still
	// stops as asked, and exits 0.
	var wg sync.WaitGroup
	for _, e := range s.extra {
		wg.Go(func() {
			if err := e.srv.Shutdown(ctx); err != nil {
				s.log.Warn("HTTP drain cut short", "listener", e.name, "error", err)
				e.srv.Close()
			}
		})
	}
	if err := s.httpServer.Shutdown(ctx); err != nil {
		s.log.Warn("HTTP drain cut short", "error", err)
		s.httpServer.Close()
	}
	wg.Wait()
	stopped := make(chan struct{})
	go func() {
		s.grpcServer.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.log.Warn("gRPC drain cut short: shutdown timeout reached")
		s.grpcServer.Stop()
		<-stopped
	}
	if err := s.gatewayConn.Close(); err != nil {
		return fmt.Errorf("close gateway connection: %w", err)
	}
	s.log.Info("drained")
	return nil
}

// dialTarget turns a listener address into one a client can dial: a wildcard host
// (0.0.0.0, ::) becomes loopback.
func dialTarget(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return addr.String()
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(tcp.Port))
}

func writePlain(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}
