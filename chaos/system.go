package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

const (
	modeRedis   = "redis"
	modeCluster = "cluster"

	simToken       = "chaos-runcomfy-token"
	callbackSecret = "chaos-callback-secret-0123456789"
	redisPrefix    = "chaos:"
	// outputBytes is each output image's size: large enough that a copy to
	// S3 is a real transfer, small enough for two cores.
	outputBytes = 64 << 10
	// simQueue and simRun are every job's time in_queue and in_progress.
	simQueue = 500 * time.Millisecond
	simRun   = time.Second
)

// tenant is one team: its API key and its webhook signing secret.
type tenant struct {
	name, key, secret string
}

// system is everything a soak runs: the simulator (in this process, so its
// fault knobs and its books are at hand), the state backend, the S3 server,
// the webhook receiver, the callback balancer and the gateway replicas.
type system struct {
	mode    string
	dir     string
	sim     *runcomfysim.Sim
	simSrv  *http.Server
	simURL  string
	billing *billing

	redis   *redistest.Server  // modeRedis
	proxy   *stallProxy        // modeRedis: between the replicas and redis
	cluster *redistest.Cluster // modeCluster
	kv      redis.UniversalClient

	s3       *s3test.Server
	hooks    *hookReceiver
	balancer *balancer
	tenants  []tenant
	replicas []*replica
}

// billing is the simulator's book of jobs per idempotency key: the harness
// writes each submit's key into its input, and the simulator's outcome hook,
// which runs once per job created, counts it.
type billing struct {
	mu   sync.Mutex
	jobs map[string]int
}

func (b *billing) count(key string) {
	b.mu.Lock()
	b.jobs[key]++
	b.mu.Unlock()
}

func (b *billing) snapshot() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]int, len(b.jobs))
	for k, n := range b.jobs {
		out[k] = n
	}
	return out
}

// chaosInput is the part of a submit's input the simulator reads: the
// submit's idempotency key and how the job is to end.
type chaosInput struct {
	Overrides struct {
		Chaos struct {
			Inputs struct {
				Key  string `json:"key"`
				Fail bool   `json:"fail"`
			} `json:"inputs"`
		} `json:"chaos"`
	} `json:"overrides"`
}

func inputJSON(key string, fail bool) string {
	var in chaosInput
	in.Overrides.Chaos.Inputs.Key, in.Overrides.Chaos.Inputs.Fail = key, fail
	b, _ := json.Marshal(in)
	return string(b)
}

func startSystem(ctx context.Context, bins *binaries, o options, mode string) (s *system, err error) {
	s = &system{mode: mode, billing: &billing{jobs: map[string]int{}}}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if s.dir, err = os.MkdirTemp("", "comfygate-chaos-"+mode+"-"); err != nil {
		return s, err
	}
	if err := s.startSim(); err != nil {
		return s, err
	}
	switch mode {
	case modeRedis:
		if s.redis, err = redistest.StartPrivate(); err != nil {
			return s, err
		}
		if s.proxy, err = newStallProxy(s.redis.Addr); err != nil {
			return s, err
		}
		s.kv = redis.NewClient(&redis.Options{Addr: s.redis.Addr})
	case modeCluster:
		if s.cluster, err = redistest.StartCluster(3, 1); err != nil {
			return s, err
		}
		s.kv = redis.NewClusterClient(s.cluster.Options())
	}
	if s.s3, err = s3test.StartServer(ctx); err != nil {
		return s, err
	}
	if s.hooks, err = newHookReceiver(); err != nil {
		return s, err
	}
	for i := range 3 {
		t := tenant{name: fmt.Sprintf("team-%c", 'a'+i), key: randomHex(16)}
		secret := make([]byte, 24)
		_, _ = rand.Read(secret)
		t.secret = "whsec_" + base64.StdEncoding.EncodeToString(secret)
		s.tenants = append(s.tenants, t)
	}
	s.hooks.secrets = map[string]string{}
	for _, t := range s.tenants {
		s.hooks.secrets[t.name] = t.secret
	}
	tenantsFile := filepath.Join(s.dir, "tenants.yaml")
	if err := os.WriteFile(tenantsFile, []byte(s.tenantsYAML()), 0o600); err != nil {
		return s, err
	}
	if s.balancer, err = newBalancer(); err != nil {
		return s, err
	}
	bin := bins.gateway
	var extra []string
	if o.dropFinalEvery > 0 {
		bin = bins.broken
		extra = []string{"--test-drop-final-every", fmt.Sprint(o.dropFinalEvery)}
	}
	redisURL := ""
	if mode == modeRedis {
		redisURL = "redis://" + s.proxy.addr() + "/0"
	} else {
		redisURL = "redis+cluster://" + strings.Join(s.cluster.Addrs(), ",")
	}
	for i := range 3 {
		r := &replica{name: fmt.Sprintf("replica-%c", 'a'+i), bin: bin, dir: s.dir}
		for _, a := range []*string{&r.grpcAddr, &r.httpAddr, &r.adminAddr} {
			if *a, err = freeAddr(); err != nil {
				return s, err
			}
		}
		r.args = append([]string{
			"--grpc-addr", r.grpcAddr, "--http-addr", r.httpAddr, "--admin-addr", r.adminAddr,
			"--runcomfy-url", s.simURL, "--upstream-timeout", "5s",
			"--redis-url", redisURL, "--redis-prefix", redisPrefix,
			"--public-url", s.balancer.url(),
			"--tenants-file", tenantsFile, "--webhook-allow-private",
			"--webhook-timeout", "5s", "--webhook-retry-min", "250ms", "--webhook-retry-max", "2s",
			// A copy whose replica died is taken over once its lease ends:
			// the outputs here are small, so a short one.
			"--storage-url", s.s3.URL("outputs"), "--storage-copy-timeout", "20s",
			"--poll-interval", "5s", "--shutdown-timeout", "5s", "--log-format", "json",
			"--read-rate", "0", "--max-watches-per-tenant", "0",
		}, extra...)
		r.env = []string{
			"RUNCOMFY_API_TOKEN=" + simToken, "COMFYGATE_WEBHOOK_SECRET=" + callbackSecret,
			"AWS_ACCESS_KEY_ID=" + s.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.s3.SecretKey,
		}
		cc, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return s, err
		}
		r.conn, r.api = cc, comfygatev1.NewGatewayServiceClient(cc)
		s.replicas = append(s.replicas, r)
		if err := r.start(ctx); err != nil {
			return s, err
		}
		s.balancer.add(r)
	}
	return s, nil
}

func (s *system) startSim() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.sim = runcomfysim.New(runcomfysim.Options{
		Token: simToken, QueueTime: simQueue, RunTime: simRun,
		OutputBytes: outputBytes, SubmitHistory: -1,
		CallbackRetries: 5, CallbackBackoff: 100 * time.Millisecond, CallbackTimeout: 5 * time.Second,
	})
	s.sim.SetOutcome(func(_ string, input []byte) runcomfysim.Outcome {
		var in chaosInput
		_ = json.Unmarshal(input, &in)
		s.billing.count(in.Overrides.Chaos.Inputs.Key)
		if in.Overrides.Chaos.Inputs.Fail {
			return runcomfysim.Outcome{State: runcomfysim.OutcomeFailed, Error: &runcomfysim.Failure{Type: "ChaosError", Message: "failed on purpose"}}
		}
		return runcomfysim.Outcome{State: runcomfysim.OutcomeSucceeded, Images: 1}
	})
	s.simURL = "http://" + ln.Addr().String()
	s.simSrv = &http.Server{Handler: s.sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.simSrv.Serve(ln) }()
	return nil
}

func (s *system) tenantsYAML() string {
	var b strings.Builder
	b.WriteString("tenants:\n")
	for _, t := range s.tenants {
		// No attach permission: a read of a record the gateway lost is
		// NOT_FOUND, not made again from RunComfy by the read itself.
		fmt.Fprintf(&b, "  %s:\n    keys:\n      - key: %q\n", t.name, t.key)
		fmt.Fprintf(&b, "    webhooks:\n      secrets: [%q]\n      endpoints:\n        - url: %q\n          events: [queued, running, output, terminal]\n",
			t.secret, s.hooks.url()+"/"+t.name)
	}
	return b.String()
}

// live are the replicas running now.
func (s *system) live() []*replica {
	var out []*replica
	for _, r := range s.replicas {
		if r.up() {
			out = append(out, r)
		}
	}
	return out
}

func (s *system) stop() {
	for _, r := range s.replicas {
		r.stop()
		r.conn.Close()
	}
	if s.balancer != nil {
		s.balancer.close()
	}
	if s.hooks != nil {
		s.hooks.close()
	}
	if s.s3 != nil {
		s.s3.Close()
	}
	if s.kv != nil {
		s.kv.Close()
	}
	if s.proxy != nil {
		s.proxy.close()
	}
	if s.redis != nil {
		s.redis.Stop()
	}
	if s.cluster != nil {
		s.cluster.Stop()
	}
	if s.simSrv != nil {
		s.sim.Close()
		_ = s.simSrv.Close()
	}
}

// replica is one gateway process, restarted on the same addresses after a
// fault, so clients and the balancer find it again.
type replica struct {
	name, bin, dir                string
	grpcAddr, httpAddr, adminAddr string
	args, env                     []string
	conn                          *grpc.ClientConn
	api                           comfygatev1.GatewayServiceClient

	mu   sync.Mutex
	p    *proc
	runs int
}

func (r *replica) start(ctx context.Context) error {
	p, err := startProc(r.dir, r.name, r.bin, r.args, r.env)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.p = p
	r.runs++
	r.mu.Unlock()
	// Ready once Redis answers; a fault elsewhere may hold that back.
	return waitOK(ctx, p, "http://"+r.httpAddr+"/readyz", 60*time.Second)
}

func (r *replica) proc() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p
}

func (r *replica) up() bool {
	p := r.proc()
	return p != nil && p.running()
}

// kill ends the replica at once (SIGKILL), or drains it (SIGTERM).
func (r *replica) kill(sig syscall.Signal) {
	if p := r.proc(); p != nil {
		p.signal(sig, 20*time.Second)
	}
}

func (r *replica) stop() { r.kill(syscall.SIGTERM) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
