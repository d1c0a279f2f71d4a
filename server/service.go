// Package server is the gRPC face of comfygate: the GatewayService handlers, the
// mapping of domain errors to gRPC codes (errors.go, the only place that chooses
// codes), the REST gateway, health and the listeners.
package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// Upstream is what the service needs from RunComfy; *runcomfy.Client provides it.
type Upstream interface {
	Submit(ctx context.Context, deploymentID string, input json.RawMessage, opts runcomfy.SubmitOptions) (*runcomfy.SubmitResponse, error)
	Status(ctx context.Context, deploymentID, requestID string) (*runcomfy.StatusResponse, error)
	Result(ctx context.Context, deploymentID, requestID string) (*runcomfy.ResultResponse, error)
	Cancel(ctx context.Context, deploymentID, requestID string) (*runcomfy.CancelResponse, error)
}

// Tracker is the state the service reads and the one writer it feeds;
// *state.Tracker provides it.
type Tracker interface {
	Apply(ctx context.Context, u state.Update) (*state.Record, state.Outcome, error)
	Get(ctx context.Context, requestID string) (*state.Record, error)
	// Lookup is Get for a caller asking about its request: a record the
	// store lost with its data that the tracker remembers is put back first.
	Lookup(ctx context.Context, requestID string) (*state.Record, error)
	Refresh(ctx context.Context, up state.Upstream, deploymentID, requestID string, source state.Source, owner string) (*state.Record, *state.Update, error)
	// Defer keeps an update the store was unavailable for, to be recorded
	// when it answers again.
	Defer(u state.Update) bool
}

// Expediter brings a request's next poll forward while someone watches it;
// *state.Reconciler provides it.
type Expediter interface {
	Watched(ctx context.Context, requestID string)
}

// Watches registers stream watchers; *state.Hub provides it.
type Watches interface {
	Watch(ctx context.Context, requestID string) (*state.Watcher, error)
	// Drain ends every watcher: Next returns state.ErrDraining.
	Drain()
	// Describe says which deployment and owner a watched request has, so
	// that its record can be rebuilt if it is lost while watched.
	Describe(requestID, deploymentID, owner string, ownerAttached bool)
}

// Pinger reports whether the state backend can record requests now.
type Pinger interface {
	Ping(ctx context.Context) error
}

// claimProver is a Pinger whose idempotency claim, written before RunComfy
// is called, may prove by itself that a record can be written: on one
// server the claim and the record go to the same place, so a submit with an
// Idempotency-Key skips the ping. On a Redis Cluster they do not.
type claimProver interface {
	ClaimProvesWrites() bool
}

// claimProves reports whether p's claims prove that a record can be
// written (a Pinger that does not say: they do).
func claimProves(p Pinger) bool {
	cp, ok := p.(claimProver)
	return !ok || cp.ClaimProvesWrites()
}

// CallbackURLs names the URL RunComfy calls back for a deployment's requests
// of one tenant ("" without tenants); *webhook.URLs provides it. The URL
// carries the tenant, authenticated, so that a callback can restore the
// request's owner even after its record was lost.
type CallbackURLs interface {
	CallbackURL(deploymentID, tenant string) string
}

// DefaultRefreshTimeout bounds the upstream read of a GetStatus or GetResult
// whose record is not fresh.
const DefaultRefreshTimeout = 2 * time.Second

// Service implements comfygatev1.GatewayServiceServer. Each RPC lives in its own
// file: validate, call the domain, convert; errors are mapped by the interceptors.
type Service struct {
	comfygatev1.UnimplementedGatewayServiceServer

	upstream      Upstream
	tracker       Tracker
	watches       Watches
	callbacks     CallbackURLs
	backend       Pinger
	expedite      Expediter
	idem          state.Idempotency
	limits        *TenantLimits
	metrics       *Metrics
	events        *eventCache
	webhooks      Webhooks
	urls          ObjectURLs
	uploads       Uploads
	uploadTimeout time.Duration
	lister        Lister
	usage         UsageReader
	policies      Policies
	slots         state.Slots
	log           *slog.Logger
	submitTimeout time.Duration
	freshFor      time.Duration
	refreshTO     time.Duration
	now           func() time.Time
	dropFinal     func() bool
}

// ServiceConfig holds the Service's dependencies and settings.
type ServiceConfig struct {
	Upstream Upstream
	Tracker  Tracker
	Watches  Watches
	// Callbacks, when set, makes every Submit ask RunComfy for callbacks (with
	// intermediate statuses) at the URL it names; nil asks for none.
	Callbacks CallbackURLs
	// Backend, when set, is checked before every Submit: a job that could not
	// be recorded must not be started (and paid for).
	Backend Pinger
	// Polls, when set, is told about every new watch.
	Polls Expediter
	// Idempotency keeps idempotency keys; required for Submit to honour them.
	Idempotency state.Idempotency
	// Limits, when set, limits each tenant's submits (the same limits the
	// server's Config.Limits applies to reads and watch streams).
	Limits *TenantLimits
	// Metrics, when set, counts deliveries to watchers and open watchers.
	Metrics *Metrics
	// Webhooks, when set, lets Submit name webhooks (and adds the tenant's
	// default ones) and serves the deliveries; nil refuses a submit that
	// names one.
	Webhooks Webhooks
	// ObjectURLs, when set, signs the URLs of stored outputs in every state
	// the service answers or streams.
	ObjectURLs ObjectURLs
	// Lister and Usage, when set, serve ListRequests and GetUsage (both
	// state backends are both).
	Lister Lister
	Usage  UsageReader
	// Policies, when set, gives each deployment its default deadlines and
	// its concurrency caps (the deployments file); Slots counts what the
	// caps bound, cluster-wide: caps apply only with both.
	Policies Policies
	Slots    state.Slots
	// Uploads, when set, serves Upload and resolves the references to
	// uploads in submitted inputs; nil refuses both.
	Uploads Uploads
	// UploadTimeout bounds one Upload, from its first message to the file
	// stored; default DefaultUploadTimeout.
	UploadTimeout time.Duration
	Logger        *slog.Logger
	// SubmitTimeout bounds an upstream submit once sent. The submit is detached from
	// the caller's cancellation so that a job RunComfy accepts is always answered
	// for; default 60s.
	SubmitTimeout time.Duration
	// FreshFor is how long after RunComfy last confirmed a record's state
	// (Record.SyncedAt) GetStatus and GetResult answer from the record
	// without asking RunComfy; the poll interval, default
	// state.DefaultPollInterval.
	FreshFor time.Duration
	// RefreshTimeout bounds the upstream read of a GetStatus or GetResult
	// whose record is not fresh; past it the record is answered with a
	// refresh_error. Default DefaultRefreshTimeout.
	RefreshTimeout time.Duration
	// Now is the clock, for tests; default time.Now.
	Now func() time.Time
	// DropFinal, when set, is asked before a watcher is sent a final state;
	// when it answers true the stream ends without it. It breaks the
	// gateway's first promise on purpose, so that the chaos soak can show it
	// catches a broken build; only builds with the chaosfault tag set it.
	DropFinal func() bool
}

// NewService checks its dependencies and returns a Service.
func NewService(cfg ServiceConfig) (*Service, error) {
	if cfg.Upstream == nil || cfg.Tracker == nil || cfg.Watches == nil {
		return nil, errors.New("server: upstream, tracker and watches are required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("server: logger is required")
	}
	if cfg.SubmitTimeout <= 0 {
		cfg.SubmitTimeout = 60 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FreshFor <= 0 {
		cfg.FreshFor = state.DefaultPollInterval
	}
	if cfg.RefreshTimeout <= 0 {
		cfg.RefreshTimeout = DefaultRefreshTimeout
	}
	return &Service{
		upstream:      cfg.Upstream,
		tracker:       cfg.Tracker,
		watches:       cfg.Watches,
		callbacks:     cfg.Callbacks,
		backend:       cfg.Backend,
		expedite:      cfg.Polls,
		idem:          cfg.Idempotency,
		limits:        cfg.Limits,
		events:        newEventCache(eventCacheSize, cfg.ObjectURLs),
		urls:          cfg.ObjectURLs,
		uploads:       cfg.Uploads,
		lister:        cfg.Lister,
		usage:         cfg.Usage,
		policies:      cfg.Policies,
		slots:         cfg.Slots,
		uploadTimeout: cmp.Or(cfg.UploadTimeout, DefaultUploadTimeout),
		metrics:       cfg.Metrics,
		webhooks:      cfg.Webhooks,
		log:           cfg.Logger,
		submitTimeout: cfg.SubmitTimeout,
		freshFor:      cfg.FreshFor,
		refreshTO:     cfg.RefreshTimeout,
		dropFinal:     cfg.DropFinal,
		now:           cfg.Now,
	}, nil
}

// Drain ends every open WatchRequest stream with UNAVAILABLE and its last seq,
// so that clients resume on another replica; unary calls are not affected. The
// server calls it when it starts draining.
func (s *Service) Drain() {
	s.watches.Drain()
}
