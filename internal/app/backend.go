package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/state/redisstore"
)

// backend is where the gateway keeps its state: in this process, or in Redis
// shared by every replica. Adding a store is one more constructor here.
type backend struct {
	store    state.Store
	bus      state.Bus
	schedule state.Schedule
	idem     state.Idempotency
	outbox   state.Outbox
	queues   state.Queues
	lister   state.Lister
	usage    state.UsageReader
	slots    state.Slots
	// rates keeps the submit and read buckets; nil keeps them in this
	// process.
	rates server.RateLimiter
	// pinger, when set, is asked whether a record can be written now
	// (/readyz, Submit).
	pinger *redisstore.Backend
	// reconnects counts pub/sub reconnects; nil when there is no
	// connection to lose.
	reconnects func() int64
	// run, when set, serves the bus until its context ends.
	run func(context.Context, *state.Hub) error
	// close releases a backend that never ran.
	close func()
}

// newBackend builds the backend cfg names. It starts nothing.
func newBackend(ctx context.Context, cfg *Config, log *slog.Logger) (*backend, error) {
	if cfg.RedisURL == "" {
		return memoryBackend(), nil
	}
	return redisBackend(ctx, cfg, log)
}

// memoryBackend keeps everything in this process: one replica, nothing kept
// across restarts.
func memoryBackend() *backend {
	mem := memory.New(nil)
	return &backend{store: mem, bus: mem, schedule: mem, idem: mem, outbox: mem, queues: mem, lister: mem, usage: mem, slots: mem}
}

// redisBackend keeps everything in the Redis of --redis-url: one server, or
// a Redis Cluster.
func redisBackend(ctx context.Context, cfg *Config, log *slog.Logger) (*backend, error) {
	rdb, where, err := redisClient(cfg)
	if err != nil {
		return nil, err
	}
	rs, err := redisstore.New(rdb, redisstore.Options{Prefix: cfg.RedisPrefix, Logger: log.With("component", "redis"), CallTimeout: cfg.RedisTimeout, Buckets: cfg.RedisBuckets})
	if err != nil {
		rdb.Close()
		return nil, err
	}
	log.Info("state in Redis", append(where, "prefix", cfg.RedisPrefix)...)
	if err := checkRedis(ctx, rs, log); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("the Redis of --redis-url: %w", err)
	}
	checkPersistence(ctx, rs, log)
	return &backend{
		store: rs, bus: rs, schedule: rs, idem: rs, outbox: rs, queues: rs, lister: rs, usage: rs, slots: rs,
		rates:      rs.RateLimiter(),
		pinger:     rs,
		reconnects: rs.Reconnects,
		run: func(ctx context.Context, hub *state.Hub) error {
			defer rdb.Close()
			return rs.Run(ctx, func(ctx context.Context, only []string) error { return hub.Resync(ctx, rs, only...) })
		},
		close: func() { rdb.Close() },
	}, nil
}

// redisClient is the client of --redis-url, with the log attributes that
// say where it points (never its password). It dials nothing yet.
func redisClient(cfg *Config) (redis.UniversalClient, []any, error) {
	if cfg.redisCluster() {
		opts, err := cfg.redisClusterOptions()
		if err != nil {
			return nil, nil, err
		}
		// 0 buckets is the cluster's default: say which.
		return redis.NewClusterClient(opts), []any{"cluster", opts.Addrs, "buckets", cmp.Or(cfg.RedisBuckets, redisstore.DefaultClusterBuckets)}, nil
	}
	opts, err := cfg.redisOptions()
	if err != nil {
		return nil, nil, err
	}
	return redis.NewClient(opts), []any{"addr", opts.Addr, "db", opts.DB, "buckets", cfg.RedisBuckets}, nil
}

// checkRedis refuses a Redis that is not what --redis-url takes it for (a
// cluster node named as one server, or the reverse; a refused password).
// A Redis that does not answer now may come later: /readyz says so.
func checkRedis(ctx context.Context, rs *redisstore.Backend, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, persistenceCheckTimeout)
	defer cancel()
	err := rs.Check(ctx)
	if errors.Is(err, state.ErrUnavailable) {
		log.Warn("Redis does not answer yet; not ready until it does", "error", err)
		return nil
	}
	return err
}

// persistenceCheckTimeout bounds the start-up look at Redis's settings: a
// Redis that is down now is reported by /readyz, not here.
const persistenceCheckTimeout = 2 * time.Second

// checkPersistence warns when Redis keeps nothing on disk: a restart of it then
// loses every record, idempotency key and poll schedule (README, Operations).
func checkPersistence(ctx context.Context, rs *redisstore.Backend, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, persistenceCheckTimeout)
	defer cancel()
	p, err := rs.Persistence(ctx)
	switch {
	case err != nil:
		log.Info("Redis persistence not known (CONFIG GET refused or unanswered); make sure AOF or RDB is on", "error", err)
	case !p.AOF && !p.RDB:
		log.Warn("Redis keeps nothing on disk (no AOF, no RDB snapshots): a restart of Redis loses every request record, idempotency key and poll schedule; turn on appendonly")
	default:
		log.Info("Redis persistence", "aof", p.AOF, "rdb", p.RDB)
	}
}
