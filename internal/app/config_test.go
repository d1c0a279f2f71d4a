package app

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte("team config-test-key-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badKeys := filepath.Join(dir, "bad-keys")
	if err := os.WriteFile(badKeys, []byte("one-field-only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "whsec_Y29tZnlnYXRlIGV4YW1wbGUgc2VjcmV0OiBmYWtlISE="
	tenants := filepath.Join(dir, "tenants.yaml")
	if err := os.WriteFile(tenants, []byte("tenants:\n  team:\n    keys:\n      - key: \"tenant-file-key-0123456789\"\n    webhooks:\n      secrets: [\""+secret+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	webhooksOnly := filepath.Join(dir, "webhooks-only.yaml")
	if err := os.WriteFile(webhooksOnly, []byte("tenants:\n  local:\n    webhooks:\n      secrets: [\""+secret+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	policies := filepath.Join(dir, "deployments.yaml")
	if err := os.WriteFile(policies, []byte("deployments:\n  dep-a:\n    max_queue_duration: 10m\n    max_concurrency: 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badPolicies := filepath.Join(dir, "bad-deployments.yaml")
	if err := os.WriteFile(badPolicies, []byte("deployments:\n  dep-a:\n    max_queue_duration: 10m\n    max_concurrency: -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badTenants := filepath.Join(dir, "bad-tenants.yaml")
	if err := os.WriteFile(badTenants, []byte("tenants:\n  team:\n    webhooks:\n      secrets: [\"not-a-secret\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clash := filepath.Join(dir, "clash.yaml")
	if err := os.WriteFile(clash, []byte("tenants:\n  other:\n    keys:\n      - key: \"config-test-key-0123456789abcdef\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c *Config)
		wantErr []string // every substring must appear in the error
	}{
		{
			name: "defaults with simulate",
			args: []string{"--simulate"},
			check: func(t *testing.T, c *Config) {
				if c.GRPCAddr != "127.0.0.1:9090" || c.HTTPAddr != "127.0.0.1:8080" || c.RunComfyAPIVersion != "v1" {
					t.Errorf("defaults = %+v", c)
				}
			},
		},
		{
			name: "environment sets flags",
			env: map[string]string{
				"COMFYGATE_GRPC_ADDR": "0.0.0.0:7000", "COMFYGATE_SIMULATE": "true", "COMFYGATE_INSECURE": "true",
				"COMFYGATE_SHUTDOWN_TIMEOUT": "3s", "COMFYGATE_RUNCOMFY_API_VERSION": "v2",
			},
			check: func(t *testing.T, c *Config) {
				if c.GRPCAddr != "0.0.0.0:7000" || !c.Simulate || c.ShutdownTimeout != 3*time.Second || c.RunComfyAPIVersion != "v2" {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name: "command line wins over environment",
			args: []string{"--http-addr", "127.0.0.1:1"},
			env:  map[string]string{"COMFYGATE_HTTP_ADDR": "127.0.0.1:2", "RUNCOMFY_API_TOKEN": "tok"},
			check: func(t *testing.T, c *Config) {
				if c.HTTPAddr != "127.0.0.1:1" || c.RunComfyToken != "tok" {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:    "token required without simulate",
			wantErr: []string{"RUNCOMFY_API_TOKEN"},
		},
		{
			name: "every problem reported at once",
			args: []string{"--grpc-addr", "nope", "--runcomfy-url", "ftp://x", "--runcomfy-api-version", "v9", "--shutdown-timeout", "0s"},
			env:  map[string]string{"COMFYGATE_UPSTREAM_TIMEOUT": "-1s"},
			wantErr: []string{"--grpc-addr", "--runcomfy-url", "--runcomfy-api-version", "--shutdown-timeout",
				"--upstream-timeout", "RUNCOMFY_API_TOKEN"},
		},
		{
			name:    "bad environment value",
			env:     map[string]string{"COMFYGATE_SIMULATE": "maybe"},
			wantErr: []string{"COMFYGATE_SIMULATE"},
		},
		{
			name:    "simulate excludes runcomfy-url",
			args:    []string{"--simulate", "--runcomfy-url", "http://localhost:1"},
			wantErr: []string{"exclude"},
		},
		{
			name: "callbacks",
			args: []string{"--public-url", "https://gw.example.com/base", "--retention", "48h"},
			env:  map[string]string{"COMFYGATE_WEBHOOK_SECRET": "new-secret-0123456789, old-secret-0123456789", "RUNCOMFY_API_TOKEN": "t"},
			check: func(t *testing.T, c *Config) {
				if c.PublicURL != "https://gw.example.com/base" || c.Retention != 48*time.Hour ||
					len(c.WebhookSecrets) != 2 || c.WebhookSecrets[1] != "old-secret-0123456789" {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:    "public url needs a secret",
			args:    []string{"--simulate", "--public-url", "https://gw.example.com"},
			wantErr: []string{"--webhook-secret"},
		},
		{
			name:    "short secret and bad public url",
			args:    []string{"--simulate", "--public-url", "gw.example.com", "--webhook-secret", "short"},
			wantErr: []string{"--public-url", "shorter than 16"},
		},
		{
			name:    "simulate calls back a fixed port",
			args:    []string{"--simulate", "--http-addr", "127.0.0.1:0"},
			wantErr: []string{"fixed port"},
		},
		{
			name:    "retention too short",
			args:    []string{"--simulate", "--retention", "1s"},
			wantErr: []string{"--retention"},
		},
		{
			name: "redis",
			args: []string{"--simulate", "--redis-url", "rediss://:pw@redis.example.com:6380/2", "--redis-prefix", "cg:"},
			check: func(t *testing.T, c *Config) {
				if c.RedisURL != "rediss://:pw@redis.example.com:6380/2" || c.RedisPrefix != "cg:" {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:    "bad redis url",
			args:    []string{"--simulate", "--redis-url", "http://:hunter2-secret@x/1", "--redis-prefix", ""},
			wantErr: []string{"--redis-url", "--redis-prefix"},
		},
		{
			name: "redis cluster",
			args: []string{"--simulate", "--redis-url", "redis+cluster://:hunter2@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002", "--redis-buckets", "64"},
			check: func(t *testing.T, c *Config) {
				if !c.redisCluster() || c.RedisBuckets != 64 {
					t.Errorf("cluster %v, buckets %d", c.redisCluster(), c.RedisBuckets)
				}
			},
		},
		{
			name: "redis cluster over TLS, buckets from the environment",
			env:  map[string]string{"COMFYGATE_REDIS_URL": "REDISS+CLUSTER://user:hunter2@redis.example.com:6380/0", "COMFYGATE_REDIS_BUCKETS": "1024", "COMFYGATE_SIMULATE": "true"},
			check: func(t *testing.T, c *Config) {
				if !c.redisCluster() || c.RedisBuckets != 1024 {
					t.Errorf("cluster %v, buckets %d", c.redisCluster(), c.RedisBuckets)
				}
			},
		},
		{
			name: "one server with buckets",
			args: []string{"--simulate", "--redis-url", "redis://127.0.0.1:6379", "--redis-buckets", "8"},
			check: func(t *testing.T, c *Config) {
				if c.redisCluster() || c.RedisBuckets != 8 {
					t.Errorf("cluster %v, buckets %d", c.redisCluster(), c.RedisBuckets)
				}
			},
		},
		{
			name:    "redis cluster with a DB",
			args:    []string{"--simulate", "--redis-url", "redis+cluster://:hunter2@h1:7000,h2:7000/3"},
			wantErr: []string{"--redis-url", `DB "3"`, "DB 0 only"},
		},
		{
			name:    "redis cluster with a db option",
			args:    []string{"--simulate", "--redis-url", "rediss+cluster://:hunter2@h1:7000?db=1"},
			wantErr: []string{"--redis-url", `db="1"`, "DB 0 only"},
		},
		{
			name:    "redis cluster without hosts",
			args:    []string{"--simulate", "--redis-url", "redis+cluster://:hunter2@/"},
			wantErr: []string{"--redis-url", "at least one host:port"},
		},
		{
			name: "redis cluster with bad addresses, each named",
			args: []string{"--simulate", "--redis-url", "redis+cluster://:hunter2@h1:7000,h2,,h3:0,h4:65536,:7000,h5:x"},
			wantErr: []string{`cluster address "h2": want host:port`, `cluster address ""`, `cluster address "h3:0"`,
				`cluster address "h4:65536"`, `cluster address ":7000"`, `cluster address "h5:x"`},
		},
		{
			name:    "redis cluster reading from replicas",
			args:    []string{"--simulate", "--redis-url", "redis+cluster://:hunter2@h1:7000?route_randomly=true"},
			wantErr: []string{"--redis-url", "route_randomly is refused"},
		},
		{
			name:    "redis cluster with an unknown option",
			args:    []string{"--simulate", "--redis-url", "redis+cluster://:hunter2@h1:7000?sentinel=1"},
			wantErr: []string{"--redis-url", "unexpected option: sentinel"},
		},
		{
			// An unescaped '/' ends the host part inside the password: the
			// parse error must not quote the part before it.
			name:    "redis cluster password with a slash",
			args:    []string{"--simulate", "--redis-url", "redis+cluster://:hunter2/x@h1:7000"},
			wantErr: []string{"--redis-url", "percent-encode"},
		},
		{
			name:    "one server password with a slash",
			args:    []string{"--simulate", "--redis-url", "redis://:hunter2/x@h1:6379/0"},
			wantErr: []string{"--redis-url", "percent-encode"},
		},
		{
			name:    "one server password with a bad escape",
			args:    []string{"--simulate", "--redis-url", "redis://:hunter2%zz@h1:6379/0"},
			wantErr: []string{"--redis-url", "%25"},
		},
		{
			name:    "one server with an unknown option",
			args:    []string{"--simulate", "--redis-url", "redis://:hunter2@h1:6379/0?sentinel=1"},
			wantErr: []string{"--redis-url", "unexpected option: sentinel"},
		},
		{
			name:    "redis buckets out of range",
			args:    []string{"--simulate", "--redis-url", "redis://h1:6379", "--redis-buckets", "1025"},
			wantErr: []string{"--redis-buckets 1025: want 0 to 1024"},
		},
		{
			name:    "negative redis buckets",
			args:    []string{"--simulate", "--redis-url", "redis+cluster://h1:7000", "--redis-buckets", "-1"},
			wantErr: []string{"--redis-buckets -1: want 0 to 1024"},
		},
		{
			name:    "redis buckets without redis",
			args:    []string{"--simulate", "--redis-buckets", "16"},
			wantErr: []string{"--redis-buckets needs --redis-url"},
		},
		{
			name:    "open address without keys is refused",
			args:    []string{"--simulate", "--http-addr", "0.0.0.0:8080", "--grpc-addr", "[::]:9090"},
			wantErr: []string{"--http-addr 0.0.0.0:8080 is not a loopback", "--grpc-addr [::]:9090 is not a loopback", "--insecure"},
		},
		{
			name: "open address with keys",
			args: []string{"--simulate", "--http-addr", "0.0.0.0:8080", "--api-keys-file", keys},
			check: func(t *testing.T, c *Config) {
				if c.APIKeysFile != keys || c.Insecure {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name: "open address with --insecure",
			args: []string{"--simulate", "--http-addr", "0.0.0.0:8080", "--insecure"},
			check: func(t *testing.T, c *Config) {
				if !c.Insecure {
					t.Errorf("config = %+v", c)
				}
			},
		},
		// Validate runs the checks the parts' constructors run, so that a
		// configuration they would refuse is refused before anything starts.
		{
			name:    "keys file that does not load",
			args:    []string{"--simulate", "--api-keys-file", badKeys},
			wantErr: []string{"--api-keys-file", "bad-keys"},
		},
		{
			name:    "missing keys file",
			args:    []string{"--simulate", "--api-keys-file", filepath.Join(dir, "nope")},
			wantErr: []string{"--api-keys-file", "no such file"},
		},
		{
			name:    "public URL with a bare query mark",
			args:    []string{"--simulate", "--public-url", "https://gw.example.com/?", "--webhook-secret", "0123456789abcdef0123"},
			wantErr: []string{"--public-url", "without query"},
		},
		{
			name:    "certificate that does not load",
			args:    []string{"--simulate", "--tls-cert", filepath.Join(dir, "nope.pem"), "--tls-key", filepath.Join(dir, "nope.key")},
			wantErr: []string{"--tls-cert/--tls-key", "no such file"},
		},
		{
			name:    "empty API version",
			args:    []string{"--simulate", "--runcomfy-api-version", ""},
			wantErr: []string{"--runcomfy-api-version", "want v1 or v2"},
		},
		{
			name: "tenants file with keys opens an address",
			args: []string{"--simulate", "--http-addr", "0.0.0.0:8080", "--tenants-file", tenants},
			check: func(t *testing.T, c *Config) {
				if c.TenantsFile != tenants || c.WebhookTimeout != 10*time.Second || c.WebhookRetryMin != 5*time.Second ||
					c.WebhookRetryMax != time.Hour || c.WebhookRetryHorizon != 24*time.Hour || c.WebhookAllowPrivate {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:    "tenants file without keys does not",
			args:    []string{"--simulate", "--http-addr", "0.0.0.0:8080", "--tenants-file", webhooksOnly},
			wantErr: []string{"--http-addr 0.0.0.0:8080 is not a loopback", "--tenants-file"},
		},
		{
			name: "deployments file",
			args: []string{"--simulate", "--deployments-file", policies},
			check: func(t *testing.T, c *Config) {
				if c.DeploymentsFile != policies {
					t.Errorf("deployments file %q", c.DeploymentsFile)
				}
			},
		},
		{
			name:    "deployments file with an error names its line",
			args:    []string{"--simulate", "--deployments-file", badPolicies},
			wantErr: []string{"--deployments-file", badPolicies, "line 4:", "max_concurrency"},
		},
		{
			name:    "deployments file missing",
			args:    []string{"--simulate", "--deployments-file", filepath.Join(dir, "none.yaml")},
			wantErr: []string{"--deployments-file", "none.yaml"},
		},
		{
			name:    "tenants file that does not load",
			args:    []string{"--simulate", "--tenants-file", badTenants},
			wantErr: []string{"--tenants-file", `tenant "team"`, "secrets"},
		},
		{
			name:    "tenants file and keys file disagree",
			args:    []string{"--simulate", "--tenants-file", clash, "--api-keys-file", keys},
			wantErr: []string{"--tenants-file and --api-keys-file"},
		},
		{
			name: "webhook flags",
			args: []string{"--simulate", "--webhook-allow-hosts", "hooks.internal,10.1.0.0/16", "--webhook-allow-private",
				"--webhook-timeout", "3s", "--webhook-retry-min", "1s", "--webhook-retry-max", "1m", "--webhook-retry-horizon", "2h"},
			check: func(t *testing.T, c *Config) {
				if len(c.WebhookAllowHosts) != 2 || !c.WebhookAllowPrivate || c.WebhookTimeout != 3*time.Second ||
					c.WebhookRetryMin != time.Second || c.WebhookRetryMax != time.Minute || c.WebhookRetryHorizon != 2*time.Hour {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:    "webhook retry bounds",
			args:    []string{"--simulate", "--webhook-retry-min", "2h", "--webhook-retry-max", "1h"},
			wantErr: []string{"--webhook-retry-min must not be longer than --webhook-retry-max"},
		},
		{
			name:    "webhook timeout",
			args:    []string{"--simulate", "--webhook-timeout", "0s"},
			wantErr: []string{"--webhook-timeout"},
		},
		{
			name:    "webhook allowed host that is not one",
			args:    []string{"--simulate", "--webhook-allow-hosts", "http://hooks.internal/x"},
			wantErr: []string{"--webhook-allow-hosts"},
		},
		{
			name: "storage flags",
			args: []string{"--simulate", "--storage-url", "s3://bucket/prefix?endpoint=http://127.0.0.1:8333", "--storage-url-lifetime", "2h",
				"--storage-max-output-bytes", "1048576", "--storage-retention", "720h", "--storage-copy-timeout", "1m"},
			check: func(t *testing.T, c *Config) {
				if c.StorageURL == "" || c.StorageURLLifetime != 2*time.Hour || c.StorageMaxOutputBytes != 1<<20 ||
					c.StorageRetention != 720*time.Hour || c.StorageCopyTimeout != time.Minute {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:    "storage URL that does not parse",
			args:    []string{"--simulate", "--storage-url", "http://bucket/prefix"},
			wantErr: []string{"--storage-url"},
		},
		{
			name:    "storage bounds",
			args:    []string{"--simulate", "--storage-url-lifetime", "200h", "--storage-retention", "1h", "--storage-max-output-bytes", "0"},
			wantErr: []string{"--storage-url-lifetime must be between 1s and 168h", "--storage-retention must be at least 24h", "--storage-max-output-bytes"},
		},
		{
			name:    "stray argument",
			args:    []string{"--simulate", "serve"},
			wantErr: []string{"unexpected arguments"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(tt.args, env(tt.env), io.Discard)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, want one mentioning %v", tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error reveals a password: %v", err)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

// TestRedisClientConfig checks the client options each --redis-url form
// gives: the same bounds for one server and a cluster, and a cluster that
// follows a failover within seconds.
func TestRedisClientConfig(t *testing.T) {
	for _, tt := range []struct {
		name, url             string
		addrs                 []string
		user, password        string
		serverName            string // TLS; "" without
		dialTimeout           time.Duration
		dialerRetries         int
		poolSize, maxRedirect int // 0: go-redis's default
	}{
		{
			name: "one seed", url: "redis+cluster://h1:7000",
			addrs: []string{"h1:7000"}, dialTimeout: time.Second, dialerRetries: 2,
		},
		{
			name: "seeds, password and options", url: "redis+cluster://:s%2Fcret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/?pool_size=7&max_redirects=5&dial_timeout=300ms&dialer_retries=4",
			addrs: []string{"10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"}, password: "s/cret",
			dialTimeout: 300 * time.Millisecond, dialerRetries: 4, poolSize: 7, maxRedirect: 5,
		},
		{
			name: "TLS, user and DB 0", url: "rediss+cluster://app:pw@redis.example.com:6380,redis2.example.com:6380/0?db=0&dial_timeout=1m",
			addrs: []string{"redis.example.com:6380", "redis2.example.com:6380"}, user: "app", password: "pw",
			serverName: "redis.example.com", dialTimeout: time.Second, dialerRetries: 2,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{RedisURL: tt.url, RedisTimeout: time.Second}
			if !c.redisCluster() {
				t.Fatal("not a cluster URL")
			}
			o, err := c.redisClusterOptions()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(o.Addrs, tt.addrs) || o.Username != tt.user || o.Password != tt.password {
				t.Errorf("addrs %q, user %q, password %q; want %q, %q, %q", o.Addrs, o.Username, o.Password, tt.addrs, tt.user, tt.password)
			}
			if got := o.TLSConfig != nil; got != (tt.serverName != "") || (got && o.TLSConfig.ServerName != tt.serverName) {
				t.Errorf("TLS config %+v, want server name %q", o.TLSConfig, tt.serverName)
			}
			if o.DialTimeout != tt.dialTimeout || o.DialerRetries != tt.dialerRetries || o.PoolTimeout != time.Second || !o.ContextTimeoutEnabled {
				t.Errorf("dial timeout %v, dialer retries %d, pool timeout %v, context timeouts %v", o.DialTimeout, o.DialerRetries, o.PoolTimeout, o.ContextTimeoutEnabled)
			}
			if o.ClusterStateReloadInterval != redisClusterStateReload || o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
				t.Errorf("state reload %v, read only %v, by latency %v, randomly %v", o.ClusterStateReloadInterval, o.ReadOnly, o.RouteByLatency, o.RouteRandomly)
			}
			if o.PoolSize != tt.poolSize || o.MaxRedirects != tt.maxRedirect {
				t.Errorf("pool size %d, max redirects %d", o.PoolSize, o.MaxRedirects)
			}
		})
	}
	// One server keeps its options, under the same bounds.
	c := &Config{RedisURL: "rediss://:pw@redis.example.com:6380/2?dial_timeout=1m", RedisTimeout: time.Second}
	if c.redisCluster() {
		t.Fatal("one server taken for a cluster")
	}
	o, err := c.redisOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.Addr != "redis.example.com:6380" || o.DB != 2 || o.Password != "pw" || o.TLSConfig == nil ||
		o.DialTimeout != time.Second || o.DialerRetries != 2 || o.PoolTimeout != time.Second || !o.ContextTimeoutEnabled {
		t.Errorf("one server's options %+v", o)
	}
}

func TestHelpListsEveryFlagWithItsEnvironmentVariable(t *testing.T) {
	var out strings.Builder
	_, err := ParseConfig([]string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"--grpc-addr", "COMFYGATE_GRPC_ADDR", "--http-addr", "COMFYGATE_HTTP_ADDR",
		"--runcomfy-url", "COMFYGATE_RUNCOMFY_URL", "--simulate", "COMFYGATE_SIMULATE", "RUNCOMFY_API_TOKEN"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help does not mention %s:\n%s", want, out.String())
		}
	}
}

// TestRequestedLogFormat reads the format as the flag parser would.
func TestRequestedLogFormat(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--log-format", "json"}, want: "json"},
		{args: []string{"-log-format=json"}, want: "json"},
		{args: []string{"--log-format=text"}, env: "json", want: "text"},
		{env: "json", want: "json"},
		{args: []string{"log-format", "json"}, want: ""},
		{args: []string{"--log-format"}, want: ""},
	} {
		got := RequestedLogFormat(tt.args, env(map[string]string{"COMFYGATE_LOG_FORMAT": tt.env}))
		if got != tt.want {
			t.Errorf("RequestedLogFormat(%q, env %q) = %q, want %q", tt.args, tt.env, got, tt.want)
		}
	}
}
