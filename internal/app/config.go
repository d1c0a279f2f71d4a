package app

import (
	"cmp"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/deployments"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/internal/flagenv"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
	"github.com/comfygate/comfygate/storage"
	"github.com/comfygate/comfygate/uploads"
	"github.com/comfygate/comfygate/webhook"
)

// EnvPrefix prefixes the environment variable of every flag: --grpc-addr is
// also COMFYGATE_GRPC_ADDR.
const EnvPrefix = "COMFYGATE_"

// envOf names the environment variable of a flag.
func envOf(flagName string) string { return flagenv.Prefixed(EnvPrefix)(flagName) }

// TokenEnv holds the RunComfy API token. It is deliberately not a flag, so the
// token never shows in a process listing.
const TokenEnv = "RUNCOMFY_API_TOKEN"

// Config is everything the gateway is started with.
type Config struct {
	// DropFinalEvery breaks the gateway on purpose: every nth watch stream
	// that reaches its final state ends without it. Only the chaosfault
	// build has a flag that sets it (testFlags).
	DropFinalEvery int

	GRPCAddr           string
	HTTPAddr           string
	RunComfyURL        string
	RunComfyAPIVersion string
	RunComfyToken      string
	Simulate           bool
	UpstreamTimeout    time.Duration
	ShutdownTimeout    time.Duration
	MaxBodyBytes       int64
	PublicURL          string
	WebhookSecrets     []string
	Retention          time.Duration
	RedisURL           string
	RedisPrefix        string
	PollInterval       time.Duration
	PollConcurrency    int
	RefreshTimeout     time.Duration
	APIKeysFile        string
	Insecure           bool
	SubmitRate         float64
	SubmitBurst        int
	TLSCert            string
	TLSKey             string
	LogFormat          string
	LogLevel           slog.Level
	DebugAddr          string
	MaxStreams         uint
	// WebhookSecretFile holds the webhook secrets (one per line, or comma
	// separated), so that they stay out of process listings.
	WebhookSecretFile string
	// webhookSecretFlag records that a secret came on the command line (or
	// its environment variable), which is worth a warning at start.
	webhookSecretFlag bool
	// webhookSecretFileOpen records that the secret file may be read by
	// others than its owner, which is worth a warning at start.
	webhookSecretFileOpen bool
	ReadTimeout           time.Duration
	IdleTimeout           time.Duration
	MaxConnectionIdle     time.Duration
	MaxInflightBodyBytes  int64
	MaxWatchesPerTenant   int
	ReadRate              float64
	ReadBurst             int
	MaxConnections        int
	RedisTimeout          time.Duration
	// RedisBuckets is the number of hash-slot buckets the keys every
	// request shares are split over (redisstore.Options.Buckets).
	RedisBuckets int
	// WebhookAddr and AdminAddr are the optional listeners for callbacks
	// and for operators (server.Config).
	WebhookAddr string
	AdminAddr   string
	// CORSOrigins are the browser origins allowed to call the REST API.
	CORSOrigins []string
	// StorageURL names the object store outputs are copied to (storage).
	StorageURL string
	// StorageURLLifetime is how long a presigned URL of a stored output
	// works; StorageMaxOutputBytes bounds one output; StorageRetention, when
	// positive, is how long stored objects are kept; StorageCopyTimeout
	// bounds the copy of one request's outputs.
	StorageURLLifetime    time.Duration
	StorageMaxOutputBytes int64
	StorageRetention      time.Duration
	StorageCopyTimeout    time.Duration
	// UploadMaxBytes bounds one upload; UploadLifetime is how long one can
	// be referred to; UploadInlineMaxBytes is the size up to which a
	// reference becomes a data: URI; UploadTypes are the media types taken;
	// UploadTimeout bounds the time to send one (uploads).
	UploadMaxBytes       int64
	UploadLifetime       time.Duration
	UploadInlineMaxBytes int64
	UploadTypes          string
	UploadTimeout        time.Duration
	// getenv reads the environment ParseConfig was given, for the object
	// store's credentials (AWS_*).
	getenv func(string) string
	// TenantsFile holds the tenants' webhook settings and, optionally,
	// their API keys.
	TenantsFile string
	// DeploymentsFile holds the deployments' default deadlines and
	// concurrency caps (package deployments).
	DeploymentsFile string
	// The outbound webhooks' guard, timeout and retry schedule (hooks).
	WebhookAllowHosts   []string
	WebhookAllowPrivate bool
	WebhookTimeout      time.Duration
	WebhookRetryMin     time.Duration
	WebhookRetryMax     time.Duration
	WebhookRetryHorizon time.Duration
	// Tracing exports traces over OTLP; set when OTEL_EXPORTER_OTLP_ENDPOINT
	// or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is, which configure the exporter.
	Tracing bool
}

// ParseConfig reads flags from args and, for every flag not given there, its
// environment variable through getenv (passed in so tests never touch the real
// environment). It returns flag.ErrHelp for --help, after printing the usage.
func ParseConfig(args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	cfg := &Config{}
	fs := flag.NewFlagSet("comfygate", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "gRPC listen address (`host:port`)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address for REST, callbacks and health (`host:port`)")
	fs.StringVar(&cfg.RunComfyURL, "runcomfy-url", runcomfy.DefaultBaseURL, "RunComfy API base `URL`")
	fs.StringVar(&cfg.RunComfyAPIVersion, "runcomfy-api-version", "v1", "RunComfy API `version`: v1 or v2")
	fs.BoolVar(&cfg.Simulate, "simulate", false, "run a built-in RunComfy simulator and use it instead of RunComfy (no account needed)")
	fs.DurationVar(&cfg.UpstreamTimeout, "upstream-timeout", 30*time.Second, "timeout of one HTTP attempt to RunComfy")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long in-flight calls may take to finish after SIGTERM")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", server.DefaultMaxBodyBytes, "largest accepted request body or gRPC message, in `bytes`")
	fs.StringVar(&cfg.PublicURL, "public-url", "", "base `URL` at which RunComfy reaches this gateway's callback listener (--webhook-addr, or --http-addr without it); when set, Submit asks for callbacks under it")
	fs.Func("webhook-secret", "comma-separated `secrets` for callback URLs, at least 16 bytes each; the first signs, all are accepted (rotation). Prefer --webhook-secret-file: a flag shows in process listings", func(v string) error {
		cfg.WebhookSecrets = splitSecrets(v)
		cfg.webhookSecretFlag = true
		return nil
	})
	fs.StringVar(&cfg.WebhookSecretFile, "webhook-secret-file", "", "`file` holding the webhook secrets (one per line or comma-separated; # comments allowed), read at start")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", server.DefaultReadTimeout, "how long a client may take to send a request body (REST and callbacks); a connection that stalls mid-body is closed. Streams are not affected")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", server.DefaultIdleTimeout, "how long an idle HTTP keep-alive connection stays open")
	fs.DurationVar(&cfg.MaxConnectionIdle, "max-connection-idle", server.DefaultMaxConnectionIdle, "how long a gRPC connection with no call or stream open stays open")
	fs.Int64Var(&cfg.MaxInflightBodyBytes, "max-inflight-body-bytes", server.DefaultMaxInflightBodyBytes, "most `bytes` of REST request bodies this replica holds at once; past it, 503 with Retry-After")
	fs.IntVar(&cfg.MaxConnections, "max-connections", server.DefaultMaxConnections, "most connections each listener (gRPC, HTTP) holds open; past it, new ones wait until one closes. Keep both together under the open-file limit (ulimit -n); 0 is unlimited")
	fs.IntVar(&cfg.MaxWatchesPerTenant, "max-watches-per-tenant", server.DefaultMaxWatchesPerTenant, "most watch streams (gRPC, NDJSON and SSE together) one tenant may have open on this replica; past it, RESOURCE_EXHAUSTED (429); 0 is unlimited")
	fs.Float64Var(&cfg.ReadRate, "read-rate", server.DefaultReadRate, "reads per second each tenant may make (GetStatus, GetResult, Cancel, watch opens); cluster-wide with --redis-url; 0 is unlimited")
	fs.IntVar(&cfg.ReadBurst, "read-burst", server.DefaultReadBurst, "reads a tenant may make at once before --read-rate applies")
	fs.DurationVar(&cfg.Retention, "retention", state.DefaultRetention, "how long request records are kept after their last change (RunComfy keeps results 7 days)")
	fs.StringVar(&cfg.RedisURL, "redis-url", "", "Redis `URL` shared by all replicas: redis:// (rediss:// for TLS) with password and DB for one server, or redis+cluster://[user:password@]host:port,host:port[,...] (rediss+cluster:// for TLS) for a Redis Cluster (Redis 7 or later); empty keeps state in this process (one replica)")
	fs.IntVar(&cfg.RedisBuckets, "redis-buckets", 0, fmt.Sprintf("`number` of hash-slot buckets the keys all requests share (poll schedule, delivery jobs, listing indexes, usage, poll pause) are split over, 0 to %d: 0 keeps one server's key layout (what earlier versions wrote) and means %d on a Redis Cluster. Changing it on a Redis that holds requests loses track of them: start on an empty --redis-prefix", redisstore.MaxBuckets, redisstore.DefaultClusterBuckets))
	fs.DurationVar(&cfg.RedisTimeout, "redis-timeout", 2*time.Second, "bound of every Redis call, retries included: while Redis hangs, callbacks, submits and reads answer UNAVAILABLE (503) within it")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", redisstore.DefaultPrefix, "prefix of every Redis key and channel")
	fs.StringVar(&cfg.APIKeysFile, "api-keys-file", "", "`file` of client API keys, one \"TENANT KEY [PERMISSIONS]\" per line (PERMISSIONS: attach, comma-separated; # comments allowed), reloaded on SIGHUP; callers send Authorization: Bearer KEY")
	fs.StringVar(&cfg.StorageURL, "storage-url", "", "S3-compatible object `store` the outputs of succeeded requests are copied to: s3://BUCKET[/PREFIX][?endpoint=http://host:port&region=R&public_base=URL]; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_SHARED_CREDENTIALS_FILE); empty copies nothing")
	fs.DurationVar(&cfg.StorageURLLifetime, "storage-url-lifetime", time.Hour, "how long the presigned URL of a stored output works (1s to 168h); a new one comes with every read")
	fs.Int64Var(&cfg.StorageMaxOutputBytes, "storage-max-output-bytes", 1<<30, "largest output file copied, in `bytes`; a larger one fails the copy")
	fs.DurationVar(&cfg.StorageRetention, "storage-retention", 0, "how long stored objects are kept (a bucket lifecycle rule, or a sweep where the store has none); 0 keeps them")
	fs.DurationVar(&cfg.StorageCopyTimeout, "storage-copy-timeout", 10*time.Minute, "bound of one attempt to copy a request's outputs; a replica that dies mid-copy is replaced after it")
	fs.Int64Var(&cfg.UploadMaxBytes, "upload-max-bytes", uploads.DefaultMaxBytes, "largest file POST /v1/uploads (and Upload) takes, in `bytes` (needs --storage-url)")
	fs.DurationVar(&cfg.UploadLifetime, "upload-lifetime", uploads.DefaultLifetime, "how long an upload can be referred to from a submit's input (1m to 168h); then it is refused and deleted")
	fs.Int64Var(&cfg.UploadInlineMaxBytes, "upload-inline-max-bytes", 0, "an upload of at most this many `bytes` reaches RunComfy as a data: URI inside the input instead of a presigned URL (for a store RunComfy cannot reach); 0 never")
	fs.StringVar(&cfg.UploadTypes, "upload-types", strings.Join(uploads.DefaultTypes, ","), "media `types` an upload may have, comma-separated, exact (image/png) or by family (image/*)")
	fs.DurationVar(&cfg.UploadTimeout, "upload-timeout", server.DefaultUploadTimeout, "how long a client may take to send one upload")
	fs.StringVar(&cfg.DeploymentsFile, "deployments-file", "", "YAML `file` of per-deployment policies: default max_queue_duration and max_run_duration (deadlines that cancel), max_concurrency and max_concurrency_per_tenant (caps on unfinished requests, cluster-wide); validated at start, reloaded on SIGHUP")
	fs.StringVar(&cfg.TenantsFile, "tenants-file", "", "YAML `file` of tenants: each tenant's webhook signing secrets (whsec_...) and default endpoints, and optionally its API keys (with or instead of --api-keys-file); validated at start, reloaded on SIGHUP. Needed for outbound webhooks")
	fs.Func("webhook-allow-hosts", "comma-separated host names, IP addresses or CIDRs that outbound webhooks may reach although they are private or loopback (your own receivers inside your network)", func(v string) error {
		cfg.WebhookAllowHosts = splitSecrets(v)
		return nil
	})
	fs.BoolVar(&cfg.WebhookAllowPrivate, "webhook-allow-private", false, "let outbound webhooks reach any private, loopback or link-local address (for a gateway whose tenants are all trusted, and tests); off, only public addresses and --webhook-allow-hosts are reached")
	fs.DurationVar(&cfg.WebhookTimeout, "webhook-timeout", 10*time.Second, "bound of one outbound webhook attempt, from connecting to the end of the answer")
	fs.DurationVar(&cfg.WebhookRetryMin, "webhook-retry-min", 5*time.Second, "delay before an outbound webhook's first retry; each later one doubles it (with jitter), up to --webhook-retry-max")
	fs.DurationVar(&cfg.WebhookRetryMax, "webhook-retry-max", time.Hour, "longest delay between two attempts of an outbound webhook (a Retry-After may ask for more)")
	fs.DurationVar(&cfg.WebhookRetryHorizon, "webhook-retry-horizon", 24*time.Hour, "how long an outbound webhook is retried after its first attempt before it is given up as failed")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow listening on a non-loopback address without --api-keys-file")
	fs.Float64Var(&cfg.SubmitRate, "submit-rate", 0, "submits per second each tenant may make (token bucket); cluster-wide with --redis-url; 0 is unlimited")
	fs.IntVar(&cfg.SubmitBurst, "submit-burst", 10, "submits a tenant may make at once before --submit-rate applies")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate `file` (chain) to serve both listeners over TLS; needs --tls-key")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key `file` for --tls-cert")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log `format`: text or json")
	fs.TextVar(&cfg.LogLevel, "log-level", slog.LevelInfo, "least severe `level` logged: debug, info, warn or error")
	fs.StringVar(&cfg.WebhookAddr, "webhook-addr", "", "optional listen address (`host:port`) that serves RunComfy's callbacks only (POST /webhooks/runcomfy/...), the one listener that must face the internet; --public-url must then reach it. Empty serves callbacks on --http-addr")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", "", "optional listen address (`host:port`) for operators: /metrics, /healthz, /readyz and /debug/pprof/; --http-addr then serves no /metrics. Keep it private")
	fs.Func("cors-origins", "comma-separated `origins` (https://app.example.com, or *) whose browser pages may call the REST API (CORS, with preflight); empty allows none", func(v string) error {
		cfg.CORSOrigins = splitSecrets(v)
		return nil
	})
	fs.StringVar(&cfg.DebugAddr, "debug-addr", "", "listen address (`host:port`) of Go's profiler, /debug/pprof/; empty serves none. Keep it private: profiles cost CPU")
	fs.UintVar(&cfg.MaxStreams, "max-concurrent-streams", server.DefaultMaxConcurrentStreams, "most gRPC calls and watch streams one client connection may have open at once; a Go client queues more, other clients see them refused")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", state.DefaultPollInterval, "how long an unfinished request may go without any update before RunComfy is polled for it (backs off for long queues, with jitter; halved while watched)")
	fs.IntVar(&cfg.PollConcurrency, "poll-concurrency", 8, "most polls in flight toward RunComfy at once, per replica")
	fs.DurationVar(&cfg.RefreshTimeout, "refresh-timeout", server.DefaultRefreshTimeout, "how long GetStatus and GetResult wait for RunComfy to confirm a state that is not fresh (synced within --poll-interval, or final); past it they answer the stored state with refresh_error")
	// The usage goes out for --help only: a bad flag is one error line (in
	// the log format asked for, see cmd/comfygate), not the whole list.
	usage := func() {
		fmt.Fprintf(fs.Output(), "comfygate: a gRPC and REST gateway to the RunComfy Serverless API.\n\n")
		fmt.Fprintf(fs.Output(), "Usage: comfygate [flags]\n\nEvery flag can also be set by its environment variable; a flag on the command line wins.\n")
		fmt.Fprintf(fs.Output(), "The RunComfy API token is read from %s only.\n\nFlags:\n", TokenEnv)
		flagenv.PrintFlags(fs.Output(), fs, envOf)
	}
	testFlags(fs, cfg)
	fs.Usage = func() {}

	var envErrs []error
	if err := flagenv.SetFromEnv(fs, envOf, getenv); err != nil {
		envErrs = append(envErrs, err)
	}
	// Only a secret on the command line shows in process listings; one from
	// the environment does not.
	cfg.webhookSecretFlag = false
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage()
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("%w (comfygate --help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		envErrs = append(envErrs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	cfg.RunComfyToken = getenv(TokenEnv)
	cfg.getenv = getenv
	cfg.Tracing = getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	if cfg.WebhookSecretFile != "" {
		if err := cfg.readSecretFile(); err != nil {
			envErrs = append(envErrs, err)
		}
	}
	if err := errors.Join(append(envErrs, cfg.Validate())...); err != nil {
		return nil, err
	}
	return cfg, nil
}

// RequestedLogFormat is the --log-format that args or the environment ask
// for, read without parsing the rest: for an error found while parsing.
func RequestedLogFormat(args []string, getenv func(string) string) string {
	format := getenv(envOf("log-format"))
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

// loopback reports whether addr listens on loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true // reported by the address check
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// callbackAddr is the listener that serves callbacks.
func (c *Config) callbackAddr() string { return cmp.Or(c.WebhookAddr, c.HTTPAddr) }

// selfURL is the URL at which a process on this machine reaches the callback
// listener: the simulator calls back there when no public URL is given.
func (c *Config) selfURL() string {
	host, port, err := net.SplitHostPort(c.callbackAddr())
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Validate reports every problem at once, so an operator fixes them in one go.
func (c *Config) Validate() error {
	var errs []error
	for _, a := range []struct{ flag, addr string }{{"--grpc-addr", c.GRPCAddr}, {"--http-addr", c.HTTPAddr}, {"--debug-addr", c.DebugAddr}, {"--webhook-addr", c.WebhookAddr}, {"--admin-addr", c.AdminAddr}} {
		if a.addr == "" && a.flag != "--grpc-addr" && a.flag != "--http-addr" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port", a.flag, a.addr))
		}
	}
	// The RunComfy client's own checks, one setting at a time so that each
	// error names its flag; the token is checked below, naming its variable.
	if c.RunComfyURL == "" {
		errs = append(errs, errors.New("--runcomfy-url must not be empty"))
	} else if err := (runcomfy.Config{Token: "checked below", BaseURL: c.RunComfyURL}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--runcomfy-url: %w", err))
	}
	if err := (runcomfy.Config{Token: "checked below", APIVersion: c.RunComfyAPIVersion}).Validate(); err != nil || c.RunComfyAPIVersion == "" {
		errs = append(errs, fmt.Errorf("--runcomfy-api-version %q: want v1 or v2", c.RunComfyAPIVersion))
	}
	if c.Simulate && c.RunComfyURL != runcomfy.DefaultBaseURL {
		errs = append(errs, errors.New("--simulate and --runcomfy-url exclude each other: the simulator is the upstream"))
	}
	if !c.Simulate && c.RunComfyToken == "" {
		errs = append(errs, fmt.Errorf("%s is not set: RunComfy needs an API token (or use --simulate)", TokenEnv))
	}
	if c.UpstreamTimeout <= 0 {
		errs = append(errs, errors.New("--upstream-timeout must be positive"))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("--shutdown-timeout must be positive"))
	}
	if c.PublicURL != "" {
		if err := webhook.CheckPublicURL(c.PublicURL); err != nil {
			errs = append(errs, fmt.Errorf("--public-url: %w", err))
		}
		if len(c.WebhookSecrets) == 0 {
			errs = append(errs, errors.New("--public-url needs --webhook-secret-file (or COMFYGATE_WEBHOOK_SECRET): callback URLs must carry a token"))
		}
	}
	if len(c.WebhookSecrets) > 0 {
		if err := webhook.CheckSecrets(c.WebhookSecrets); err != nil {
			errs = append(errs, fmt.Errorf("--webhook-secret: %w", err))
		}
	}
	if c.Simulate && c.PublicURL == "" {
		if _, port, err := net.SplitHostPort(c.callbackAddr()); err == nil && port == "0" {
			errs = append(errs, errors.New("--simulate without --public-url calls back to --http-addr (or --webhook-addr), which needs a fixed port"))
		}
	}
	if c.RedisURL != "" {
		var err error
		if c.redisCluster() {
			_, err = c.redisClusterOptions()
		} else {
			_, err = c.redisOptions()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.RedisBuckets < 0 || c.RedisBuckets > redisstore.MaxBuckets {
		errs = append(errs, fmt.Errorf("--redis-buckets %d: want 0 to %d", c.RedisBuckets, redisstore.MaxBuckets))
	} else if c.RedisBuckets != 0 && c.RedisURL == "" {
		errs = append(errs, errors.New("--redis-buckets needs --redis-url: state kept in this process has no buckets"))
	}
	if c.RedisPrefix == "" {
		errs = append(errs, errors.New("--redis-prefix must not be empty"))
	}
	if c.DeploymentsFile != "" {
		if _, err := deployments.Load(c.DeploymentsFile); err != nil {
			errs = append(errs, fmt.Errorf("--deployments-file: %w", err))
		}
	}
	tenantKeys := false
	if c.TenantsFile != "" {
		tenants, err := auth.LoadTenants(c.TenantsFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--tenants-file: %w", err))
		case c.APIKeysFile != "":
			keys, kerr := auth.Load(c.APIKeysFile)
			if kerr == nil {
				if _, err := auth.Union(keys, tenants); err != nil {
					errs = append(errs, fmt.Errorf("--tenants-file and --api-keys-file: %w", err))
				}
			}
			tenantKeys = tenants.HasKeys()
		default:
			tenantKeys = tenants.HasKeys()
		}
	}
	if c.WebhookTimeout <= 0 || c.WebhookRetryMin <= 0 || c.WebhookRetryMax <= 0 || c.WebhookRetryHorizon <= 0 {
		errs = append(errs, errors.New("--webhook-timeout, --webhook-retry-min, --webhook-retry-max and --webhook-retry-horizon must be positive"))
	} else if c.WebhookRetryMin > c.WebhookRetryMax {
		errs = append(errs, errors.New("--webhook-retry-min must not be longer than --webhook-retry-max"))
	}
	if _, err := c.webhookGuard(); err != nil {
		errs = append(errs, err)
	}
	if c.StorageURL != "" {
		if _, err := storage.ParseURL(c.StorageURL); err != nil {
			errs = append(errs, fmt.Errorf("--storage-url: %w", err))
		}
	}
	if c.StorageURLLifetime < time.Second || c.StorageURLLifetime > 7*24*time.Hour {
		errs = append(errs, errors.New("--storage-url-lifetime must be between 1s and 168h (what a presigned URL allows)"))
	}
	if c.StorageMaxOutputBytes < 1 || c.StorageRetention < 0 || c.StorageCopyTimeout <= 0 {
		errs = append(errs, errors.New("--storage-max-output-bytes and --storage-copy-timeout must be positive, --storage-retention not negative"))
	}
	if c.UploadMaxBytes < 1 || c.UploadInlineMaxBytes < 0 || c.UploadTimeout <= 0 {
		errs = append(errs, errors.New("--upload-max-bytes and --upload-timeout must be positive, --upload-inline-max-bytes not negative"))
	}
	if c.UploadLifetime < time.Minute || c.UploadLifetime > 7*24*time.Hour {
		errs = append(errs, errors.New("--upload-lifetime must be between 1m and 168h (what a presigned URL allows)"))
	}
	if c.StorageRetention > 0 && c.UploadLifetime > c.StorageRetention {
		errs = append(errs, errors.New("--upload-lifetime must not exceed --storage-retention, which deletes every object older"))
	}
	if err := uploads.CheckTypes(uploadTypes(c.UploadTypes)); err != nil {
		errs = append(errs, fmt.Errorf("--upload-types: %w", err))
	}
	if c.StorageRetention > 0 && c.StorageRetention < 24*time.Hour {
		errs = append(errs, errors.New("--storage-retention must be at least 24h (object stores expire by the day)"))
	}
	if c.APIKeysFile == "" && !tenantKeys && !c.Insecure {
		for _, a := range []struct{ flag, addr string }{{"--grpc-addr", c.GRPCAddr}, {"--http-addr", c.HTTPAddr}, {"--debug-addr", c.DebugAddr}, {"--admin-addr", c.AdminAddr}} {
			if a.addr != "" && !loopback(a.addr) {
				errs = append(errs, fmt.Errorf("%s %s is not a loopback address and there are no API keys: anyone who reaches it could spend the RunComfy account (give --api-keys-file or keys in --tenants-file, or --insecure to accept that)", a.flag, a.addr))
			}
		}
	}
	for _, o := range c.CORSOrigins {
		if u, err := url.Parse(o); o != "*" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "") {
			errs = append(errs, fmt.Errorf("--cors-origins %q: want an origin such as https://app.example.com, or *", o))
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.LogFormat))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	} else if _, err := c.tlsConfig(); err != nil {
		errs = append(errs, err)
	}
	if c.APIKeysFile != "" {
		if _, err := auth.Load(c.APIKeysFile); err != nil {
			errs = append(errs, fmt.Errorf("--api-keys-file: %w", err))
		}
	}
	for _, r := range []struct {
		flag string
		v    float64
	}{{"--submit-rate", c.SubmitRate}, {"--read-rate", c.ReadRate}} {
		if math.IsNaN(r.v) || math.IsInf(r.v, 0) {
			errs = append(errs, fmt.Errorf("%s must be a finite number", r.flag))
		}
	}
	if c.SubmitRate < 0 || c.SubmitBurst < 1 {
		errs = append(errs, errors.New("--submit-rate must not be negative and --submit-burst must be at least 1"))
	}
	if c.PollInterval < 100*time.Millisecond {
		errs = append(errs, errors.New("--poll-interval must be at least 100ms"))
	}
	if c.RefreshTimeout < 10*time.Millisecond {
		errs = append(errs, errors.New("--refresh-timeout must be at least 10ms"))
	}
	if c.MaxStreams < 1 || c.MaxStreams > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("--max-concurrent-streams must be between 1 and %d", uint32(math.MaxUint32)))
	}
	if c.PollConcurrency < 1 {
		errs = append(errs, errors.New("--poll-concurrency must be at least 1"))
	}
	if c.Retention < time.Minute {
		errs = append(errs, errors.New("--retention must be at least 1m"))
	}
	if c.ReadTimeout <= 0 || c.IdleTimeout <= 0 || c.MaxConnectionIdle <= 0 {
		errs = append(errs, errors.New("--read-timeout, --idle-timeout and --max-connection-idle must be positive"))
	}
	if c.MaxInflightBodyBytes < c.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("--max-inflight-body-bytes (%d) must be at least --max-body-bytes (%d): one body must fit", c.MaxInflightBodyBytes, c.MaxBodyBytes))
	}
	if c.RedisTimeout <= 0 {
		errs = append(errs, errors.New("--redis-timeout must be positive"))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, errors.New("--max-connections must not be negative"))
	}
	if c.MaxWatchesPerTenant < 0 {
		errs = append(errs, errors.New("--max-watches-per-tenant must not be negative"))
	}
	if c.ReadRate < 0 || c.ReadBurst < 1 {
		errs = append(errs, errors.New("--read-rate must not be negative and --read-burst must be at least 1"))
	}
	if c.SubmitRate >= 0 && c.SubmitBurst >= 1 && c.ReadRate >= 0 && c.ReadBurst >= 1 && c.MaxWatchesPerTenant >= 0 {
		// The limits' own check, past the flags' stricter ones above (which
		// name the flag): whatever it refuses, the gateway would not start.
		if err := c.limitsConfig().Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--submit-rate, --read-rate or --max-watches-per-tenant: %w", err))
		}
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, errors.New("--max-body-bytes must be at least 1024"))
	}
	return errors.Join(errs...)
}

// webhookGuard is the outbound webhooks' client, as --webhook-allow-hosts,
// --webhook-allow-private and --webhook-timeout set it.
func (c *Config) webhookGuard() (*http.Client, error) {
	client, err := hooks.NewGuardedClient(hooks.GuardConfig{
		AllowHosts: c.WebhookAllowHosts, AllowPrivate: c.WebhookAllowPrivate, Timeout: max(c.WebhookTimeout, time.Millisecond),
	})
	if err != nil {
		return nil, fmt.Errorf("--webhook-allow-hosts: %w", err)
	}
	return client, nil
}

// upstreamConfig is the RunComfy client's configuration, at baseURL with
// token (the simulator's, with --simulate).
func (c *Config) upstreamConfig(baseURL, token string) runcomfy.Config {
	return runcomfy.Config{BaseURL: baseURL, APIVersion: c.RunComfyAPIVersion, Token: token, Timeout: c.UpstreamTimeout}
}

// limitsConfig is the per-tenant limits' configuration, less where the
// buckets are kept and what counts refusals.
func (c *Config) limitsConfig() server.LimitsConfig {
	return server.LimitsConfig{
		SubmitRate: c.SubmitRate, SubmitBurst: c.SubmitBurst,
		ReadRate: c.ReadRate, ReadBurst: c.ReadBurst,
		MaxWatches: c.MaxWatchesPerTenant,
	}
}

// tlsConfig loads --tls-cert and --tls-key; nil without them.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.TLSCert == "" || c.TLSKey == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// redisOptions are the Redis client's options from a one-server
// --redis-url, each call bounded by --redis-timeout.
func (c *Config) redisOptions() (*redis.Options, error) {
	opts, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		// The URL may hold a password: name the flag, not the value.
		return nil, fmt.Errorf("--redis-url: %w", redactURLError(c.RedisURL, err))
	}
	opts.DialerRetries, opts.DialTimeout = c.redisDialBounds(opts.DialerRetries, opts.DialTimeout)
	opts.PoolTimeout = c.RedisTimeout
	opts.ContextTimeoutEnabled = true
	return opts, nil
}

// redisDialBounds are the dial retries and dial timeout of a Redis client
// whose URL asked for retries and timeout (0: not asked). Every call is
// bounded by --redis-timeout, and so are its parts: a dial, and the wait
// for a pooled connection. go-redis then honours the call's deadline on the
// connection itself.
func (c *Config) redisDialBounds(retries int, timeout time.Duration) (int, time.Duration) {
	if retries == 0 {
		// go-redis dials five times by default before a command fails; an
		// outage should turn /readyz and Submit to unavailable promptly.
		retries = 2
	}
	if timeout <= 0 || timeout > c.RedisTimeout {
		timeout = c.RedisTimeout
	}
	return retries, timeout
}

// clusterScheme is the go-redis scheme a --redis-url scheme of a Redis
// Cluster stands for, and false for any other scheme. A scheme of its own,
// rather than go-redis's redis://host?addr=host2 form, because a cluster of
// one seed address and one server look alike in that form, and they keep
// their keys apart (redisstore.Options.Buckets).
func clusterScheme(scheme string) (string, bool) {
	switch strings.ToLower(scheme) {
	case "redis+cluster":
		return "redis", true
	case "rediss+cluster":
		return "rediss", true
	}
	return "", false
}

// redisClusterStateReload is how often the cluster client re-reads which
// master serves which slots. go-redis re-reads it after a MOVED answer, but
// a master that crashed answers nothing: without a periodic re-read (go-redis
// defaults to a minute) calls to its slots fail until then, though a
// replica took over within seconds.
const redisClusterStateReload = 2 * time.Second

// redisCluster reports whether --redis-url names a Redis Cluster.
func (c *Config) redisCluster() bool {
	scheme, _, ok := strings.Cut(c.RedisURL, "://")
	_, cluster := clusterScheme(scheme)
	return ok && cluster
}

// redisClusterOptions are the cluster client's options from a
// redis+cluster:// or rediss+cluster:// --redis-url, with the bounds of
// redisOptions. The hosts listed are seeds: the client learns the others
// from them. The URL is rewritten to go-redis's own cluster form
// (redis://host1?addr=host2&...), so that it takes the query options
// (dial_timeout, pool_size, ...) go-redis documents for it.
func (c *Config) redisClusterOptions() (*redis.ClusterOptions, error) {
	scheme, rest, _ := strings.Cut(c.RedisURL, "://")
	if passwordSpills(c.RedisURL) {
		return nil, fmt.Errorf("--redis-url: %w", errPasswordSpills)
	}
	// The authority ends where url.Parse ends it; the user name and
	// password are before its last '@', the hosts after it.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hosts := "", authority
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		userinfo, hosts = authority[:at+1], authority[at+1:]
	}
	if hosts == "" {
		return nil, errors.New("--redis-url: a Redis Cluster URL needs at least one host:port")
	}
	addrs := strings.Split(hosts, ",")
	var errs []error
	for _, addr := range addrs {
		host, port, err := net.SplitHostPort(addr)
		n, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			errs = append(errs, fmt.Errorf("--redis-url: cluster address %q: want host:port", addr))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	base, _ := clusterScheme(scheme)
	raw := base + "://" + userinfo + addrs[0] + tail
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %w", redactURLError(raw, err))
	}
	// A cluster has DB 0 only: a DB named in the URL would silently be
	// another one's on one server, so it is refused rather than ignored.
	if db := strings.TrimPrefix(u.Path, "/"); db != "" && db != "0" {
		return nil, fmt.Errorf("--redis-url: DB %q: a Redis Cluster has DB 0 only", db)
	}
	q := u.Query()
	for _, db := range q["db"] {
		if db != "0" {
			return nil, fmt.Errorf("--redis-url: db=%q: a Redis Cluster has DB 0 only", db)
		}
	}
	// Reads from replicas could miss what this replica just wrote; the
	// gateway reads its own writes (versions, leases, idempotency keys).
	for _, name := range []string{"read_only", "route_by_latency", "route_randomly"} {
		if q.Has(name) {
			return nil, fmt.Errorf("--redis-url: %s is refused: the gateway must read from masters, which hold what it just wrote", name)
		}
	}
	q.Del("db")
	for _, addr := range addrs[1:] {
		q.Add("addr", addr)
	}
	u.Path, u.RawPath, u.RawQuery, u.Fragment = "", "", q.Encode(), ""
	opts, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %w", redactURLError(raw, err))
	}
	opts.DialerRetries, opts.DialTimeout = c.redisDialBounds(opts.DialerRetries, opts.DialTimeout)
	opts.PoolTimeout = c.RedisTimeout
	opts.ContextTimeoutEnabled = true
	opts.ClusterStateReloadInterval = redisClusterStateReload
	opts.ReadOnly = false
	return opts, nil
}

// splitSecrets splits comma-separated secrets, dropping blanks.
func splitSecrets(v string) []string {
	var out []string
	for _, sec := range strings.Split(v, ",") {
		if sec = strings.TrimSpace(sec); sec != "" {
			out = append(out, sec)
		}
	}
	return out
}

// readSecretFile reads the webhook secrets from WebhookSecretFile: one per
// line (or comma-separated), '#' comments and blank lines ignored. Together
// with --webhook-secret the file is refused: two sources of one secret list
// would leave the operator guessing which signs.
func (c *Config) readSecretFile() error {
	if len(c.WebhookSecrets) > 0 {
		return errors.New("--webhook-secret (or COMFYGATE_WEBHOOK_SECRET) and --webhook-secret-file exclude each other")
	}
	data, err := os.ReadFile(c.WebhookSecretFile)
	if err != nil {
		return fmt.Errorf("--webhook-secret-file: %w", err)
	}
	if fi, err := os.Stat(c.WebhookSecretFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		c.webhookSecretFileOpen = true
	}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		c.WebhookSecrets = append(c.WebhookSecrets, splitSecrets(line)...)
	}
	if len(c.WebhookSecrets) == 0 {
		return fmt.Errorf("--webhook-secret-file %s holds no secret", c.WebhookSecretFile)
	}
	return nil
}

// errPasswordSpills is the error of a Redis URL whose password spills past
// the host (passwordSpills).
var errPasswordSpills = errors.New("not a valid Redis URL: an '@' after the host; percent-encode '/', '?', '#' and '@' in the user name and password")

// passwordSpills reports whether raw has an '@' past its host: a password
// with an unescaped '/', '?' or '#' ends the host part early and spills
// into the path or query, which parse errors quote.
func passwordSpills(raw string) bool {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return strings.Contains(raw, "@")
	}
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		return strings.Contains(rest[end:], "@")
	}
	return false
}

// redactURLError keeps the parse error of the Redis URL raw from echoing the
// URL, which may hold a password. go-redis's own errors quote the scheme,
// the path, options and addresses, never the user name or password, unless
// the password spilled into them (passwordSpills).
func redactURLError(raw string, err error) error {
	if passwordSpills(raw) {
		return errPasswordSpills
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	// A bad escape may be in the password: say so without quoting it.
	var ee url.EscapeError
	if errors.As(ue.Err, &ee) {
		return fmt.Errorf("%s: a '%%' not followed by two hex digits (write a literal '%%' as %%25)", ue.Op)
	}
	return fmt.Errorf("%s: %w", ue.Op, ue.Err)
}

// uploadTypes is --upload-types as a list.
func uploadTypes(v string) []string {
	var types []string
	for t := range strings.SplitSeq(v, ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, t)
		}
	}
	return types
}
