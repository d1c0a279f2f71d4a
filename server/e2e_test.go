package server_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/state/redisstore"
	"github.com/comfygate/comfygate/webhook"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const simToken = "sim-token-for-tests"

// gateway is a running gateway on real TCP listeners in front of a simulator.
type gateway struct {
	sim      *runcomfysim.Sim
	simURL   string
	client   comfygatev1.GatewayServiceClient
	conn     *grpc.ClientConn
	httpBase string
	tracker  *state.Tracker
	hub      *state.Hub
	memory   *memory.Backend
	// upstream calls the simulator directly, as another tool on the same
	// RunComfy account would.
	upstream *runcomfy.Client
	webhook  *webhook.Handler
	urls     *webhook.URLs
	// httpc is the HTTP client that trusts the gateway (TLS or not).
	httpc *http.Client
	// stop drains the gateway and returns what Run returned; safe to call twice.
	stop func() error
	// svc is the service itself, for calls no client can make.
	svc *server.Service
}

// gatewayOptions vary the stack startGateway builds.
type gatewayOptions struct {
	// sim configures the simulator; Token is always simToken.
	sim runcomfysim.Options
	// callbacks has Submit ask the simulator to call the gateway back.
	callbacks bool
	// store wraps the memory backend's store, e.g. to inject failures.
	store func(state.Store) state.Store
	// backend, when set, is checked by Submit and /readyz.
	backend interface {
		Ping(ctx context.Context) error
	}
	// poll, when set, makes the memory backend the poll schedule and runs a
	// reconciler with this interval, as cmd/comfygate does.
	poll time.Duration
	// auth, when set, requires API keys.
	auth server.Authenticator
	// sharedSim and sharedSimURL, when set, are another gateway's simulator:
	// two gateways are then two replicas in front of one RunComfy.
	sharedSim    *runcomfysim.Sim
	sharedSimURL string
	// redis, when set, is the store, bus and idempotency keys instead of the
	// memory backend (replicas share it).
	redis *redisstore.Backend
	// limits are the per-tenant limits (submits, reads, watch streams);
	// the zero value limits nothing.
	limits server.LimitsConfig
	// tracer, when set, traces the gateway.
	tracer trace.TracerProvider
	// metrics, when set, receives the server's series and serves them.
	metrics *prometheus.Registry
	// logs, when set, receives the gateway's log as JSON lines.
	logs io.Writer
	// tls, when set, serves both listeners over TLS; the test's clients then
	// trust tlsRoots.
	tls      *tls.Config
	tlsRoots *x509.CertPool
	// freshFor is the Service's FreshFor. Zero is a nanosecond: every read
	// of an unfinished request asks RunComfy, so tests step the simulator
	// and read the result at once.
	freshFor time.Duration
	// refreshTimeout is the Service's RefreshTimeout; zero is its default.
	refreshTimeout time.Duration
	// now, when set, is the clock of the tracker and the service.
	now func() time.Time
	// corsOrigins and maxBody are the server's CORSOrigins and MaxBodyBytes.
	corsOrigins []string
	maxBody     int64
	// hooks, when set, enables outbound webhooks: a deliverer runs on the
	// state's outbox.
	hooks *hooksOptions
	// localHostsOnly is the server's LocalHostsOnly.
	localHostsOnly bool
	// policies, when set, are the deployments' default deadlines and caps
	// (counted by the backend's slots).
	policies server.Policies
}

// hooksOptions are the outbound webhooks of a test gateway.
type hooksOptions struct {
	// secrets sign every tenant's events; a tenant in unsigned has none.
	secrets  []hooks.Secret
	unsigned map[string]bool
	// defaults are each tenant's default endpoints.
	defaults map[string][]state.WebhookTarget
	retryMin time.Duration
}

// testWebhooks is the service's view of webhooks in these tests: the
// settings of hooksOptions, and a real deliverer.
type testWebhooks struct {
	o *hooksOptions
	*hooks.Deliverer
}

func (w *testWebhooks) Tenant(tenant string) ([]state.WebhookTarget, bool) {
	return w.o.defaults[tenant], !w.o.unsigned[tenant]
}

func (w *testWebhooks) CheckURL(raw string) error { return hooks.CheckURL(raw) }

// startHooks runs a deliverer on outbox until the test ends.
func startHooks(t *testing.T, o *hooksOptions, outbox state.Outbox, log *slog.Logger) *testWebhooks {
	t.Helper()
	client, err := hooks.NewGuardedClient(hooks.GuardConfig{AllowPrivate: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w := &testWebhooks{o: o}
	w.Deliverer, err = hooks.New(hooks.Config{
		Outbox: outbox, Client: client, Render: server.RenderEvent, Consumer: "replica-" + t.Name(),
		Secrets: func(tenant string) []hooks.Secret {
			if o.unsigned[tenant] {
				return nil
			}
			return o.secrets
		},
		Timeout: 2 * time.Second, RetryMin: cmp.Or(o.retryMin, 50*time.Millisecond), RetryMax: time.Second, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("deliverer Run: %v", err)
		}
	})
	return w
}

// withCallbacks has the simulator call the gateway back, with timed jobs.
func withCallbacks(o *gatewayOptions) {
	o.callbacks = true
	o.sim.Manual = false
}

// lateURLs builds callback URLs once the HTTP listener's address is known, which
// is after the service that needs them is built.
type lateURLs struct{ urls atomic.Pointer[webhook.URLs] }

func (l *lateURLs) CallbackURL(dep, tenant string) string {
	return l.urls.Load().CallbackURL(dep, tenant)
}

// startGateway runs the whole stack: simulator on a real listener, the RunComfy
// client, the state, the service and both listeners, and a generated gRPC
// client. By default jobs in the simulator move only on Advance, so tests are
// deterministic, and no callbacks are asked for.
func startGateway(t *testing.T, opts ...func(*gatewayOptions)) *gateway {
	t.Helper()
	o := gatewayOptions{sim: runcomfysim.Options{Manual: true}}
	for _, opt := range opts {
		opt(&o)
	}
	o.sim.Token = simToken
	sim, simURL := o.sharedSim, o.sharedSimURL
	if sim == nil {
		sim = runcomfysim.New(o.sim)
		simSrv := httptest.NewServer(sim.Handler())
		simURL = simSrv.URL
		t.Cleanup(func() {
			simSrv.Close()
			sim.Close()
		})
	}
	up, err := runcomfy.New(runcomfy.Config{
		BaseURL:     simURL,
		Token:       simToken,
		MaxRetries:  2,
		BackoffBase: time.Millisecond,
		BackoffMax:  5 * time.Millisecond,
		Tracer:      o.tracer,
	})
	if err != nil {
		t.Fatal(err)
	}
	logOut := io.Writer(io.Discard)
	if o.logs != nil {
		logOut = o.logs
	}
	log := slog.New(slog.NewJSONHandler(logOut, nil))
	backend := memory.New(nil)
	var (
		store state.Store       = backend
		bus   state.Bus         = backend
		idem  state.Idempotency = backend
	)
	if o.redis != nil {
		store, bus, idem = o.redis, o.redis, o.redis
	}
	if o.store != nil {
		store = o.store(backend)
	}
	tcfg := state.TrackerConfig{Store: store, Results: up, Now: o.now}
	if o.poll > 0 {
		tcfg.Schedule, tcfg.PollInterval = backend, o.poll
	}
	tracker, err := state.NewTracker(tcfg)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := state.NewHub(bus, 4)
	if err != nil {
		t.Fatal(err)
	}
	var reconciler *state.Reconciler
	if o.poll > 0 {
		reconciler, err = state.NewReconciler(state.ReconcilerConfig{
			Schedule: backend, Tracker: tracker, Upstream: up, Watching: hub.IsWatching, Watched: hub.Watched,
			Interval: o.poll, Owner: "replica-" + t.Name(), Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		// The reconciler outlives the listeners, as in main: it stops after
		// the drain (cleanups run last registered first).
		pollCtx, stopPolls := context.WithCancel(context.Background())
		polled := make(chan error, 1)
		go func() { polled <- reconciler.Run(pollCtx) }()
		t.Cleanup(func() {
			stopPolls()
			if err := <-polled; err != nil {
				t.Errorf("reconciler Run: %v", err)
			}
		})
	}
	signer, err := webhook.NewSigner([]string{"test-webhook-secret-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	hook, err := webhook.NewHandler(signer, tracker, log, o.tracer)
	if err != nil {
		t.Fatal(err)
	}
	limits, err := server.NewTenantLimits(o.limits)
	if err != nil {
		t.Fatal(err)
	}
	svcCfg := server.ServiceConfig{Upstream: up, Tracker: tracker, Watches: hub, Logger: log, Idempotency: idem,
		Limits: limits, FreshFor: cmp.Or(o.freshFor, time.Nanosecond), RefreshTimeout: o.refreshTimeout, Now: o.now}
	if reconciler != nil {
		svcCfg.Polls = reconciler
	}
	svcCfg.Lister, svcCfg.Usage, svcCfg.Slots = backend, backend, backend
	if o.redis != nil {
		svcCfg.Lister, svcCfg.Usage, svcCfg.Slots = o.redis, o.redis, o.redis
	}
	svcCfg.Policies = o.policies
	var ready func(context.Context) error
	if o.backend != nil {
		svcCfg.Backend = o.backend
		ready = o.backend.Ping
	}
	late := &lateURLs{}
	if o.callbacks {
		svcCfg.Callbacks = late
	}
	if o.hooks != nil {
		var outbox state.Outbox = backend
		if o.redis != nil {
			outbox = o.redis
		}
		svcCfg.Webhooks = startHooks(t, o.hooks, outbox, log)
	}
	var metrics *server.Metrics
	if o.metrics != nil {
		metrics = server.NewMetrics(o.metrics)
		svcCfg.Metrics = metrics
	}
	svc, err := server.NewService(svcCfg)
	if err != nil {
		t.Fatal(err)
	}
	drain := svc.Drain
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: log, ShutdownTimeout: 5 * time.Second,
		CallbackRoutes: map[string]http.Handler{webhook.PathPrefix: hook},
		Ready:          ready,
		Auth:           o.auth,
		TLS:            o.tls,
		Drain:          drain,
		Metrics:        metrics,
		Tracer:         o.tracer,
		Limits:         limits,
		CORSOrigins:    o.corsOrigins,
		MaxBodyBytes:   o.maxBody,
		LocalHostsOnly: o.localHostsOnly,
	}, svc)
	if err != nil {
		t.Fatal(err)
	}
	urls, err := webhook.NewURLs("http://"+srv.HTTPAddr(), signer)
	if o.tls != nil {
		urls, err = webhook.NewURLs("https://"+srv.HTTPAddr(), signer)
	}
	if err != nil {
		t.Fatal(err)
	}
	late.urls.Store(urls)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	scheme, creds := "http", insecure.NewCredentials()
	httpc := http.DefaultClient
	if o.tls != nil {
		scheme = "https"
		creds = credentials.NewTLS(&tls.Config{RootCAs: o.tlsRoots, MinVersion: tls.VersionTLS12})
		httpc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: o.tlsRoots, MinVersion: tls.VersionTLS12}}}
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{
		sim:      sim,
		simURL:   simURL,
		client:   comfygatev1.NewGatewayServiceClient(conn),
		conn:     conn,
		httpBase: scheme + "://" + srv.HTTPAddr(),
		httpc:    httpc,
		tracker:  tracker,
		hub:      hub,
		memory:   backend,
		upstream: up,
		webhook:  hook,
		urls:     urls,
		svc:      svc,
	}
	g.stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		conn.Close()
		if err := g.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	g.waitUp(t)
	return g
}

// callbackURL is the URL RunComfy would call back for dep's requests.
func (g *gateway) callbackURL(dep string) string { return g.urls.CallbackURL(dep, "") }

func (g *gateway) waitUp(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := g.httpc.Get(g.httpBase + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("gateway never came up")
}

// rest sends one REST call and returns the status code and decoded JSON body.
func (g *gateway) rest(t *testing.T, method, path string, body []byte) (int, map[string]any) {
	t.Helper()
	code, data := g.restWith(t, method, path, body, nil)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %v: %s", method, path, err, data)
	}
	return code, out
}

// restWith sends one REST call with a body (none when nil) and headers, and
// returns the status code and the answer's body.
func (g *gateway) restWith(t *testing.T, method, path string, body []byte, headers map[string]string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, g.httpBase+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// seedInput carries every number form that a lossy transport would change: a
// 64-bit seed beyond float64 precision, integers that must not become 42.0, a
// float written with a trailing zero, and key order.
const seedInput = `{"overrides":{"3":{"inputs":{"seed":18446744073709551615,"steps":20,"cfg":7.5,"denoise":1.0}},"10":{"inputs":{"image":"https://example.com/in.png"}}},"extra_data":{"z":1,"a":-9223372036854775808}}`

func TestLifecycleOverGRPC(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"a cat"}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	ref := &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}

	st, err := g.client.GetStatus(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.GetRequest().GetStatus(), comfygatev1.Status_STATUS_QUEUED; got != want {
		t.Fatalf("status = %v, want %v", got, want)
	}
	if st.GetRequest().QueuePosition == nil {
		t.Error("queue_position missing while queued")
	}
	if got, want := st.GetRequest().GetUpstreamStatus(), "in_queue"; got != want {
		t.Errorf("upstream_status = %q, want %q", got, want)
	}

	if err := g.sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	st, err = g.client.GetStatus(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.GetRequest().GetStatus(), comfygatev1.Status_STATUS_RUNNING; got != want {
		t.Fatalf("status = %v, want %v", got, want)
	}
	if st.GetRequest().GetInstanceId() == "" || st.GetRequest().QueuePosition != nil {
		t.Errorf("running state: instance_id %q, queue_position %v", st.GetRequest().GetInstanceId(), st.GetRequest().QueuePosition)
	}

	// Before finishing, GetResult answers the state without outputs.
	res, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetRequest().GetOutputUrls()) != 0 {
		t.Errorf("outputs before finishing: %v", res.GetRequest().GetOutputUrls())
	}

	if err := g.sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	res, err = g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	r := res.GetRequest()
	if got, want := r.GetStatus(), comfygatev1.Status_STATUS_SUCCEEDED; got != want {
		t.Fatalf("status = %v, want %v", got, want)
	}
	if len(r.GetOutputUrls()) == 0 || r.GetOutputs() == nil || r.GetFinishedAt() == nil || r.GetCreatedAt() == nil {
		t.Fatalf("succeeded result incomplete: %v", r)
	}
	// Every flat URL appears in the per-node outputs, and points at a real image.
	outputs, _ := json.Marshal(r.GetOutputs().AsMap())
	for _, u := range r.GetOutputUrls() {
		if !strings.Contains(string(outputs), u) {
			t.Errorf("url %s not in outputs %s", u, outputs)
		}
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got, want := resp.Header.Get("Content-Type"), "image/png"; resp.StatusCode != http.StatusOK || got != want {
			t.Errorf("GET %s: HTTP %d, %s", u, resp.StatusCode, got)
		}
	}
}

func TestLifecycleOverREST(t *testing.T) {
	g := startGateway(t)
	code, body := g.rest(t, http.MethodPost, "/v1/deployments/dep-1/requests", []byte(`{"prompt":"a dog"}`))
	if code != http.StatusOK {
		t.Fatalf("submit: HTTP %d %v", code, body)
	}
	rid := body["request"].(map[string]any)["request_id"].(string)
	base := "/v1/deployments/dep-1/requests/" + rid

	code, body = g.rest(t, http.MethodGet, base, nil)
	req := body["request"].(map[string]any)
	if code != http.StatusOK || req["status"] != "STATUS_QUEUED" || req["upstream_status"] != "in_queue" {
		t.Fatalf("status: HTTP %d %v", code, body)
	}
	if _, ok := req["queue_position"]; !ok {
		t.Errorf("queue_position missing: %v", req)
	}
	for range 2 {
		if err := g.sim.Advance(rid); err != nil {
			t.Fatal(err)
		}
	}
	code, body = g.rest(t, http.MethodGet, base+"/result", nil)
	req = body["request"].(map[string]any)
	if code != http.StatusOK || req["status"] != "STATUS_SUCCEEDED" {
		t.Fatalf("result: HTTP %d %v", code, body)
	}
	urls, _ := req["output_urls"].([]any)
	if len(urls) == 0 || req["outputs"] == nil || req["finished_at"] == nil {
		t.Errorf("result incomplete: %v", req)
	}
	code, body = g.rest(t, http.MethodPost, base+":cancel", nil)
	if code != http.StatusOK || body["outcome"] != "CANCEL_OUTCOME_NOT_CANCELLABLE" {
		t.Errorf("cancel finished: HTTP %d %v", code, body)
	}
}

func TestUpstreamFaultsMapToCodes(t *testing.T) {
	tests := []struct {
		name       string
		endpoint   string
		fault      runcomfysim.FaultError
		deployment runcomfysim.DeploymentState
		wantCode   codes.Code
		wantHTTP   int
		// wantUpstream is the ErrorInfo upstream_code; empty for none.
		wantUpstream string
		wantRetry    time.Duration
		wantInMsg    string
	}{
		{name: "validation with detail", endpoint: "submit",
			fault:    runcomfysim.FaultError{HTTPStatus: 422, ErrorCode: 422001, Message: "Invalid overrides", Detail: []map[string]any{{"loc": []string{"overrides", "99"}, "msg": "unknown node"}}},
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantUpstream: "422001", wantInMsg: "unknown node"},
		// A request RunComfy does not know gets the gateway's one NotFound of
		// a request, without the upstream detail that would tell it from
		// another tenant's request (oracle_test.go pins the whole answer).
		{name: "not found", endpoint: "status", fault: runcomfysim.FaultError{HTTPStatus: 404, ErrorCode: 404001, Message: "Request not found"},
			wantCode: codes.NotFound, wantHTTP: 404, wantInMsg: "no such request"},
		{name: "not owned", endpoint: "status", fault: runcomfysim.FaultError{HTTPStatus: 403, ErrorCode: 403003, Message: "Forbidden"},
			wantCode: codes.NotFound, wantHTTP: 404, wantInMsg: "no such request"},
		{name: "not found on cancel", endpoint: "cancel", fault: runcomfysim.FaultError{HTTPStatus: 404, ErrorCode: 404001, Message: "Request not found"},
			wantCode: codes.NotFound, wantHTTP: 404, wantInMsg: "no such request"},
		{name: "insufficient funds", endpoint: "submit", deployment: runcomfysim.DeploymentNoFunds,
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantUpstream: "10001"},
		{name: "deployment disabled", endpoint: "submit", deployment: runcomfysim.DeploymentDisabled,
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantUpstream: "10002"},
		{name: "deployment deleted", endpoint: "submit", deployment: runcomfysim.DeploymentDeleted,
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantUpstream: "10003"},
		{name: "http 402 without code", endpoint: "submit", fault: runcomfysim.FaultError{HTTPStatus: 402},
			wantCode: codes.FailedPrecondition, wantHTTP: 400},
		{name: "rate limited", endpoint: "submit", fault: runcomfysim.FaultError{HTTPStatus: 429, RetryAfter: "7"},
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantRetry: 7 * time.Second},
		{name: "internal error, retried then unavailable", endpoint: "status", fault: runcomfysim.FaultError{HTTPStatus: 500, ErrorCode: 500001},
			wantCode: codes.Unavailable, wantHTTP: 503, wantUpstream: "500001"},
		{name: "bad gateway html", endpoint: "result", fault: runcomfysim.FaultError{HTTPStatus: 502, RawBody: "<html>bad gateway</html>"},
			wantCode: codes.Unavailable, wantHTTP: 503},
		{name: "http 200 with error_code", endpoint: "result", fault: runcomfysim.FaultError{HTTPStatus: 200, ErrorCode: 404001, Message: "gone"},
			wantCode: codes.NotFound, wantHTTP: 404, wantInMsg: "no such request"},
		// A submit's unknown deployment keeps RunComfy's message and code.
		{name: "message key", endpoint: "submit", fault: runcomfysim.FaultError{HTTPStatus: 404, ErrorCode: 404001, Message: "Deployment not found", UseMessageKey: true},
			wantCode: codes.NotFound, wantHTTP: 404, wantUpstream: "404001", wantInMsg: "Deployment not found"},
		{name: "gateway token rejected", endpoint: "submit", fault: runcomfysim.FaultError{HTTPStatus: 401, ErrorCode: 401001, Message: "Invalid token"},
			wantCode: codes.Internal, wantHTTP: 500, wantInMsg: "misconfigured", wantUpstream: "401001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startGateway(t)
			ctx := ctxT(t)
			// A real request to read, made before the fault is armed.
			sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
			if err != nil {
				t.Fatal(err)
			}
			rid := sub.GetRequest().GetRequestId()
			if tt.deployment != runcomfysim.DeploymentActive {
				g.sim.SetDeployment("dep-1", tt.deployment)
			} else {
				g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{tt.endpoint: tt.fault}})
			}

			if tt.endpoint == "status" || tt.endpoint == "result" {
				// A read of a recorded request falls back to the record with
				// a refresh_error when upstream fails (refresh_test.go pins
				// it); read one the gateway does not know, whose only source
				// is upstream.
				rid = "untracked-request"
			}
			err = callEndpoint(ctx, g, tt.endpoint, rid)
			st := status.Convert(err)
			if got := st.Code(); got != tt.wantCode {
				t.Fatalf("gRPC code = %v (%q), want %v", got, st.Message(), tt.wantCode)
			}
			if !strings.Contains(st.Message(), tt.wantInMsg) {
				t.Errorf("message %q does not contain %q", st.Message(), tt.wantInMsg)
			}
			if strings.Contains(st.Message(), simToken) {
				t.Errorf("message leaks the upstream token: %q", st.Message())
			}
			var gotUpstream string
			var gotRetry time.Duration
			for _, d := range st.Details() {
				switch d := d.(type) {
				case *errdetails.ErrorInfo:
					gotUpstream = d.GetMetadata()["upstream_code"]
				case *errdetails.RetryInfo:
					gotRetry = d.GetRetryDelay().AsDuration()
				}
			}
			if gotUpstream != tt.wantUpstream {
				t.Errorf("ErrorInfo upstream_code = %q, want %q", gotUpstream, tt.wantUpstream)
			}
			if gotRetry != tt.wantRetry {
				t.Errorf("RetryInfo delay = %v, want %v", gotRetry, tt.wantRetry)
			}

			method, path := restEndpoint(tt.endpoint, rid)
			code, body := g.rest(t, method, path, restBody(tt.endpoint))
			if code != tt.wantHTTP {
				t.Errorf("REST HTTP %d, want %d: %v", code, tt.wantHTTP, body)
			}
		})
	}
}

func callEndpoint(ctx context.Context, g *gateway, endpoint, rid string) error {
	var err error
	switch endpoint {
	case "submit":
		_, err = g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"seed":1}`})
	case "status":
		_, err = g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	case "result":
		_, err = g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
	case "cancel":
		_, err = g.client.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: rid})
	}
	return err
}

func restEndpoint(endpoint, rid string) (method, path string) {
	base := "/v1/deployments/dep-1/requests"
	switch endpoint {
	case "submit":
		return http.MethodPost, base
	case "status":
		return http.MethodGet, base + "/" + rid
	case "result":
		return http.MethodGet, base + "/" + rid + "/result"
	default:
		return http.MethodPost, base + "/" + rid + ":cancel"
	}
}

func restBody(endpoint string) []byte {
	if endpoint == "submit" {
		return []byte(`{"seed":1}`)
	}
	return nil
}

func TestHealthAndReflection(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	for _, svc := range []string{"", "comfygate.v1.GatewayService"} {
		resp, err := healthpb.NewHealthClient(g.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := resp.GetStatus(), healthpb.HealthCheckResponse_SERVING; got != want {
			t.Errorf("health(%q) = %v, want %v", svc, got, want)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(g.httpBase + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: HTTP %d", path, resp.StatusCode)
		}
	}
}

func TestReflectionListsTheService(t *testing.T) {
	g := startGateway(t)
	stream, err := reflectionpb.NewServerReflectionClient(g.conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"comfygate.v1.GatewayService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
}
