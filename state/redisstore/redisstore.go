// Package redisstore is the shared state backend for many replicas: records in
// Redis, written by one Lua script that compares, writes and publishes
// atomically, and one pub/sub connection per replica that subscribes per watched
// request. It implements state.Store and state.Bus with the same contract as the
// memory backend (state/statetest runs against both).
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// saveScript is Save: compare the stored epoch and seq (and rank), write the
// record with its TTL, and publish it, as one atomic step. Two replicas
// applying the same callback at the same instant both read seq n and both try
// n+1: exactly one script run sees n and writes; the other sees n+1 and
// reports a conflict, after which that replica re-reads and finds the update a
// duplicate. A record that was lost and created again has another epoch, so a
// writer that still holds the lost one conflicts even where the seqs agree.
//
// KEYS[1] record key, KEYS[2] the request's description key; ARGV: 1 new
// seq, 2 new rank, 3 record JSON, 4 TTL in ms, 5 channel, 6 epoch, 7 the
// request's description for the poll schedule (written with the record, so
// only by a save that succeeds; empty leaves it, and a final save deletes it).
// A save that makes a webhook event also has KEYS[3] the request's outbox
// stream and KEYS[4] the delivery job stream, ARGV 8 the event JSON and 9 the
// request id (both ” without an event): the event is appended and a job
// queued only when the record is written (KEYS[4] is the jobs stream of the
// request's bucket). The last
// two KEYS are the listing indexes the record belongs in now (its owner's,
// by state; its owner's on its deployment, by state; list.go), ARGV 10 its
// creation time in ms (the score) and 11 its id: a written record is added
// to both, and removed from the ones it was in (the 'ix' field) if they
// differ (a record already in them is left as it is); each index lives at
// least as long as the records in it (extended by an hour more whenever a
// record would outlive it, so that most saves leave its TTL alone). Before
// them is the usage bucket of the hour the record ended (state/usage.go),
// ARGV 12 its TTL (” for a record that has not ended) and the rest the
// counters and increments: a save that makes the record final-state for the
// first time (the stored rank below 3) adds them. Every key is in the
// request's bucket (keys.go), so the script is valid on a cluster. A record
// that holds a concurrency slot (its 'cap' field names the two counts,
// slots.go) loses the field when it becomes final. Returns {1, the 'cap'
// field or nil} written (the writer then gives the slot back, or moves its
// expiry, in the counts' own slot), or {0, stored record JSON or nil,
// synced, epoch} when the record is not at (epoch, seq-1) or the rank would go
// down, so the writer merges again without another round trip. The 'synced'
// field is Touch's, newer than the JSON's synced_at when set; the 'epoch'
// field is the record's epoch, which wins over the JSON's (a replica of a
// version before epochs rewrites the JSON without one, and leaves the field).
const saveScript = `
local cur = redis.call('HMGET', KEYS[1], 'seq', 'rank', 'epoch', 'ix', 'cap', 'synced')
local seq = tonumber(cur[1]) or 0
local rank = tonumber(cur[2]) or 0
if seq + 1 ~= tonumber(ARGV[1]) or tonumber(ARGV[2]) < rank or (seq > 0 and (cur[3] or '0') ~= ARGV[6]) then
  local stored = redis.call('HMGET', KEYS[1], 'data', 'synced', 'epoch')
  return {0, stored[1], stored[2], stored[3]}
end
local byState, byDep = KEYS[#KEYS-1], KEYS[#KEYS]
local ix = byState .. '\n' .. byDep
if cur[4] ~= ix then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'rank', ARGV[2], 'data', ARGV[3], 'epoch', ARGV[6], 'ix', ix)
else
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'rank', ARGV[2], 'data', ARGV[3], 'epoch', ARGV[6])
end
local final = tonumber(ARGV[2]) == 3
if cur[6] and cur[5] and final then
  redis.call('HDEL', KEYS[1], 'synced', 'cap')
elseif cur[6] then
  redis.call('HDEL', KEYS[1], 'synced')
elseif cur[5] and final then
  redis.call('HDEL', KEYS[1], 'cap')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[4])
elseif tonumber(ARGV[2]) == 3 then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[5], ARGV[3])
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[8])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('XADD', KEYS[4], '*', 'r', ARGV[9])
end
if cur[4] ~= ix then
  if cur[4] then
    local sep = string.find(cur[4], '\n', 1, true)
    if sep then
      local oldState, oldDep = string.sub(cur[4], 1, sep - 1), string.sub(cur[4], sep + 1)
      if oldState ~= byState then redis.call('ZREM', oldState, ARGV[11]) end
      if oldDep ~= byDep then redis.call('ZREM', oldDep, ARGV[11]) end
    end
  end
  redis.call('ZADD', byState, ARGV[10], ARGV[11])
  redis.call('ZADD', byDep, ARGV[10], ARGV[11])
end
local ttl = tonumber(ARGV[4])
for _, k in ipairs({byState, byDep}) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl + 3600000)
  end
end
if ARGV[12] ~= '' and rank < 3 and final then
  local usage = KEYS[#KEYS-2]
  for i = 13, #ARGV, 2 do
    redis.call('HINCRBY', usage, ARGV[i], ARGV[i + 1])
  end
  if redis.call('PTTL', usage) < 0 then
    redis.call('PEXPIRE', usage, ARGV[12])
  end
end
return {1, cur[5]}
`

// touchScript is Touch: KEYS[1] record key; ARGV: 1 epoch, 2 seq, 3 synced
// time in Unix ms. It sets the 'synced' field when the record is still at
// (epoch, seq), and nothing else.
const touchScript = `
local cur = redis.call('HMGET', KEYS[1], 'seq', 'epoch', 'synced')
if cur[1] ~= ARGV[2] or (cur[2] or '0') ~= ARGV[1] or (tonumber(cur[3]) or 0) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'synced', ARGV[3])
return 1
`

// subscribeTimeout bounds the wait for Redis to confirm a subscription.
const subscribeTimeout = 5 * time.Second

// Options configure a Backend.
type Options struct {
	// Prefix starts every key and channel; default DefaultPrefix.
	Prefix string
	// Logger receives connection events.
	Logger *slog.Logger
	// PingInterval is how long the pub/sub connection may stay silent before it
	// is pinged, so a dead connection is noticed; default 5s.
	PingInterval time.Duration
	// CallTimeout, when positive, bounds every command and pipeline, its
	// retries included: a Redis that hangs (stopped, not down) makes a call
	// fail with state.ErrUnavailable within it, instead of holding its caller
	// for as long as go-redis's read timeouts and retries add up to. The
	// pub/sub connection's blocking reads are not commands and keep their
	// own rhythm (PingInterval).
	CallTimeout time.Duration
	// Buckets spreads the keys every request shares (the poll schedule,
	// the delivery jobs, the listing indexes and usage buckets, the poll
	// pause) over this many hash slots (keys.go). 0 keeps one server's
	// layout, the key names of versions before buckets: on a Redis Cluster
	// it is DefaultClusterBuckets. Changing it moves every key.
	Buckets int
}

// DefaultClusterBuckets is the number of buckets on a Redis Cluster when
// Options.Buckets is 0: a few per master of a large cluster.
const DefaultClusterBuckets = 16

// Backend is the Redis state backend.
type Backend struct {
	rdb     redis.UniversalClient
	prefix  string
	keys    Keys
	log     *slog.Logger
	ping    time.Duration
	save    *redis.Script
	release *redis.Script
	pause   *redis.Script
	touch   *redis.Script
	list    *redis.Script
	// reserve, bind, place and follow serve the concurrency counts
	// (slots.go).
	reserve, bind, place, follow *redis.Script
	// outboxLease, wakeDue, handBack and forgetIdle serve the webhook
	// outbox (outbox.go).
	outboxLease *redis.Script
	wakeDue     *redis.Script
	handBack    *redis.Script
	forgetIdle  *redis.Script
	callTimeout time.Duration
	// pings shares one round of Ping's asks among concurrent callers.
	pings sharedCall

	// ps is the pub/sub connection on one server; on a Redis Cluster,
	// shards keeps one sharded subscription connection per shard instead
	// (and ps is nil), and the save script publishes with SPUBLISH, to the
	// shard of the record's slot only.
	ps     *redis.PubSub
	shards *shardSubscriber
	saves  saveQueue

	mu      sync.Mutex
	subs    map[string]subscription    // by channel
	waiters map[string][]chan struct{} // subscriptions awaiting confirmation
	// resyncAll and resyncIDs are what the next resync covers: every
	// watched request, or these (a shard's, on a cluster).
	resyncAll bool
	resyncIDs map[string]struct{}

	reconnects atomic.Int64
	// rotate picks the first bucket of a walk over all of them.
	rotate atomic.Uint64
	// layoutOK is set once the layout under the prefix is known to be
	// this replica's (layoutReady); layoutBad logs the first refusal.
	layoutOK  atomic.Bool
	layoutBad sync.Once
	// generation is the token of GenerationKey this replica last saw.
	generation atomic.Pointer[string]
}

// New returns a Backend on rdb. Call Run to serve subscriptions.
func New(rdb redis.UniversalClient, opts Options) (*Backend, error) {
	if rdb == nil {
		return nil, errors.New("redisstore: client is required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Logger == nil {
		return nil, errors.New("redisstore: logger is required")
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 5 * time.Second
	}
	_, cluster := rdb.(*redis.ClusterClient)
	switch {
	case opts.Buckets < 0 || opts.Buckets > MaxBuckets:
		return nil, fmt.Errorf("redisstore: buckets must be from 0 to %d", MaxBuckets)
	case opts.Buckets == 0 && cluster:
		opts.Buckets = DefaultClusterBuckets
	}
	if opts.CallTimeout > 0 {
		rdb.AddHook(callTimeout(opts.CallTimeout))
	}
	save := saveScript
	var (
		ps     *redis.PubSub
		shards *shardSubscriber
	)
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		save = strings.Replace(save, "redis.call('PUBLISH'", "redis.call('SPUBLISH'", 1)
		shards = newShardSubscriber(cc, opts.Logger, opts.PingInterval)
	} else {
		ps = rdb.Subscribe(context.Background())
	}
	return &Backend{
		rdb:         rdb,
		prefix:      opts.Prefix,
		keys:        NewKeys(opts.Prefix, opts.Buckets),
		log:         opts.Logger,
		ping:        opts.PingInterval,
		save:        redis.NewScript(save),
		release:     redis.NewScript(releaseScript),
		pause:       redis.NewScript(pauseScript),
		touch:       redis.NewScript(touchScript),
		list:        redis.NewScript(listScript),
		reserve:     redis.NewScript(reserveScript),
		bind:        redis.NewScript(bindScript),
		place:       redis.NewScript(placeScript),
		follow:      redis.NewScript(followScript),
		outboxLease: redis.NewScript(outboxLeaseScript),
		wakeDue:     redis.NewScript(wakeDueScript),
		handBack:    redis.NewScript(handBackScript),
		forgetIdle:  redis.NewScript(forgetIdleScript),
		callTimeout: opts.CallTimeout,
		ps:          ps,
		shards:      shards,
		subs:        make(map[string]subscription),
		resyncIDs:   make(map[string]struct{}),
		waiters:     make(map[string][]chan struct{}),
	}, nil
}

// unavailable wraps a Redis failure as state.ErrUnavailable, keeping the
// caller's own cancellation visible as such.
func unavailable(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("redis %s: %w", op, ctxErr)
	}
	return fmt.Errorf("redis %s: %w: %w", op, state.ErrUnavailable, err)
}

// Ping checks that Redis answers; readiness and Submit use it, as the proof
// that a record can be written. On a Redis Cluster a request's record goes to
// the master of its bucket's slot, which is not known before RunComfy names
// the request: every master that serves a bucket is asked, at once, for one
// of its bucket keys (EXISTS), so that a shard that is down, whose master
// died and whose replica is not yet promoted, or whose master refuses keys
// (CLUSTERDOWN: the cluster is not whole yet after a restart, or the slot is
// served by nobody) makes Submit refuse before it starts a job it could not
// record. A redirection (a slot on the move) is an answer. The asks are bounded by
// CallTimeout: they go to the masters' own clients, past the cluster
// client's hooks.
//
// Concurrent calls share one round of asks (sharedCall): a Submit still
// waits for an answer that comes back after it asked, and a burst of Submits
// costs Redis one PING instead of one each.
func (b *Backend) Ping(ctx context.Context) error {
	if err := b.layoutReady(ctx); err != nil {
		return err
	}
	if err := b.pings.do(ctx, b.pingRound); err != nil {
		if ctx.Err() != nil {
			return unavailable(ctx, "ping", err)
		}
		return err
	}
	return nil
}

// pingRound is one round of Ping's asks, under a ctx no caller cancels.
func (b *Backend) pingRound(ctx context.Context) error {
	cc, ok := b.rdb.(*redis.ClusterClient)
	if !ok {
		if err := b.rdb.Ping(ctx).Err(); err != nil {
			return unavailable(ctx, "ping", err)
		}
		return nil
	}
	// The asks run within the call timeout; a failure is judged against the
	// caller's ctx (unavailable), not this one, whose end is a timeout of
	// Redis's, not a cancellation of the caller's.
	pctx := ctx
	if b.callTimeout > 0 {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(ctx, b.callTimeout)
		defer cancel()
	}
	type master struct {
		node *redis.Client
		key  string // one of its bucket keys
	}
	masters := map[string]master{}
	for i := range b.keys.Buckets() {
		key := b.keys.Pending(i)
		node, err := cc.MasterForKey(pctx, key)
		if err != nil {
			return unavailable(ctx, "ping", err)
		}
		masters[node.Options().Addr] = master{node, key}
	}
	errs := make(chan error, len(masters))
	for addr, m := range masters {
		go func() {
			err := m.node.Exists(pctx, m.key).Err()
			switch {
			case redis.HasErrorPrefix(err, "ASK"):
				// The slot is moving between two live masters.
				err = nil
			case redis.HasErrorPrefix(err, "MOVED"):
				// The slot moved, and its master answers for it: the
				// client's map is older; it reads it again.
				cc.ReloadState(context.WithoutCancel(ctx))
				err = nil
			}
			if err != nil {
				errs <- fmt.Errorf("%s: %w", addr, err)
				return
			}
			errs <- nil
		}()
	}
	var first error
	for range masters {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return unavailable(ctx, "ping", first)
	}
	return nil
}

// ClaimProvesWrites reports whether an idempotency claim written before
// RunComfy is called proves that the request's record can be written too:
// on one server, yes; on a cluster the claim's slot and the record's are on
// different masters, so Submit pings as well (server.Pinger).
func (b *Backend) ClaimProvesWrites() bool {
	_, cluster := b.rdb.(*redis.ClusterClient)
	return !cluster
}

// Check asks Redis whether it is what the client takes it for, so that a
// wrong --redis-url is refused at start rather than found by every save: a
// node of a Redis Cluster named as one server (its scripts would fail with
// CROSSSLOT), one server named as a cluster, a password refused. An
// answer that does not come (Redis down, for now) is state.ErrUnavailable,
// and says nothing of the configuration.
func (b *Backend) Check(ctx context.Context) error {
	_, cluster := b.rdb.(*redis.ClusterClient)
	info, err := b.rdb.Info(ctx, "cluster").Result()
	var rerr redis.Error
	switch {
	case err != nil && errors.As(err, &rerr):
		return fmt.Errorf("redis refused the connection: %w", err)
	case err != nil:
		return unavailable(ctx, "check", err)
	case !cluster && strings.Contains(info, "cluster_enabled:1"):
		return errors.New("redis is a node of a Redis Cluster: name the cluster as redis+cluster://host:port,host:port")
	}
	if err := b.checkLayout(ctx); err != nil {
		return err
	}
	b.layoutOK.Store(true)
	return nil
}

// layoutReady is nil once the layout under the prefix was found to be this
// replica's (checkLayout), and an error, state.ErrUnavailable among others,
// until then: Ping and every save ask it, so that a replica that started
// while Redis did not answer, and names its keys in another layout than the
// others, writes nothing and is not ready. After the first success it costs
// an atomic load.
func (b *Backend) layoutReady(ctx context.Context) error {
	if b.layoutOK.Load() {
		return nil
	}
	err := b.checkLayout(ctx)
	switch {
	case err == nil:
		b.layoutOK.Store(true)
		return nil
	case errors.Is(err, state.ErrUnavailable):
		return err
	}
	b.layoutBad.Do(func() {
		b.log.Error("this replica's key layout is not the one under the prefix: it writes nothing", "error", err)
	})
	return unavailable(ctx, "layout", err)
}

// checkLayout notes the number of buckets under the prefix the first time,
// and refuses another number later: a replica that names its keys in
// another layout than the others would not find their requests (listings,
// usage and schedules would each see a part).
func (b *Backend) checkLayout(ctx context.Context) error {
	key, n := b.keys.LayoutKey(), strconv.Itoa(len(b.keys.tags))
	set, err := b.rdb.SetNX(ctx, key, n, 0).Result()
	if err != nil {
		return unavailable(ctx, "check", err)
	}
	if set {
		return nil
	}
	cur, err := b.rdb.Get(ctx, key).Result()
	if err != nil {
		return unavailable(ctx, "check", err)
	}
	if cur != n {
		return fmt.Errorf("the keys under prefix %q are in %s buckets (0: one server's layout) and this replica would name them in %s: give every replica the same number of buckets, or this one another prefix", b.prefix, cur, n)
	}
	return nil
}

// Get returns the current record, or state.ErrNotFound.
func (b *Backend) Get(ctx context.Context, requestID string) (*state.Record, error) {
	vals, err := b.rdb.HMGet(ctx, b.recordKey(requestID), "data", "synced", "epoch").Result()
	if err != nil {
		return nil, unavailable(ctx, "get", err)
	}
	data, _ := vals[0].(string)
	if data == "" {
		return nil, state.ErrNotFound
	}
	synced, _ := vals[1].(string)
	epoch, _ := vals[2].(string)
	rec, err := decodeRecord(data, synced, epoch)
	if err != nil {
		return nil, fmt.Errorf("redis get %s: %w", requestID, err)
	}
	return rec, nil
}

// decodeRecord reads a stored record: its JSON, the 'synced' field Touch
// sets (Unix ms; empty when none) and the 'epoch' field (empty when none).
func decodeRecord(data, synced, epoch string) (*state.Record, error) {
	var rec state.Record
	if err := json.Unmarshal([]byte(data), &rec); err != nil {
		return nil, fmt.Errorf("stored record is not valid: %w", err)
	}
	if e, err := strconv.ParseInt(epoch, 10, 64); err == nil {
		rec.Epoch = e
	}
	if ms, err := strconv.ParseInt(synced, 10, 64); err == nil {
		if at := time.UnixMilli(ms); at.After(rec.SyncedAt) {
			rec.SyncedAt = at
		}
	}
	return &rec, nil
}

// Touch implements state.Toucher.
func (b *Backend) Touch(ctx context.Context, requestID string, pos state.Position, at time.Time) error {
	err := b.touch.Run(ctx, b.rdb, []string{b.recordKey(requestID)}, pos.Epoch, pos.Seq, at.UnixMilli()).Err()
	if err != nil {
		return unavailable(ctx, "touch", err)
	}
	return nil
}

// Missing implements state.MissingChecker: one EXISTS per id, in one
// pipeline.
func (b *Backend) Missing(ctx context.Context, ids []string) ([]string, error) {
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Exists(ctx, b.recordKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, unavailable(ctx, "exists", err)
	}
	var missing []string
	for i, c := range cmds {
		if c.Val() == 0 {
			missing = append(missing, ids[i])
		}
	}
	return missing, nil
}

// Lost implements state.LossDetector: it reports whether Redis lost its data
// under the prefix since the last call (a restart without persistence, a
// failover to a replica that had nothing, a flush), which the records
// alone cannot tell: a request whose record is gone may simply have expired.
// The first call, and the first after a loss, write a new generation token
// when there is none; every replica then sees the token change once.
func (b *Backend) Lost(ctx context.Context) (bool, error) {
	key := b.keys.GenerationKey()
	got, err := b.rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		token := rand.Text()
		set, serr := b.rdb.SetNX(ctx, key, token, 0).Result()
		switch {
		case serr != nil:
			return false, unavailable(ctx, "generation", serr)
		case set:
			got, err = token, nil
		default: // another replica wrote one first
			got, err = b.rdb.Get(ctx, key).Result()
		}
	}
	if err != nil {
		return false, unavailable(ctx, "generation", err)
	}
	prev := b.generation.Swap(&got)
	return prev != nil && *prev != got, nil
}

// Delete removes requestID's record, as an eviction or a restart would.
// Tests use it to lose data on purpose.
func (b *Backend) Delete(ctx context.Context, requestID string) error {
	if err := b.rdb.Del(ctx, b.recordKey(requestID)).Err(); err != nil {
		return unavailable(ctx, "delete", err)
	}
	return nil
}

// Save writes and publishes rec if its seq follows the stored one (the script
// above), else returns a *state.ConflictError with the stored record.
func (b *Backend) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	return b.SaveScheduled(ctx, rec, ttl, time.Time{}, false)
}

// SaveScheduled implements state.ScheduledSaver: the schedule commands and the
// save script go in one pipeline, one round trip. They are separate commands,
// not one script, because the schedule is one key for all requests and a
// script may only touch keys of one cluster hash slot.
func (b *Backend) SaveScheduled(ctx context.Context, rec *state.Record, ttl time.Duration, due time.Time, forget bool) error {
	return b.SaveWithEvent(ctx, rec, ttl, due, forget, nil)
}

// SaveWithEvent implements state.OutboxSaver: SaveScheduled whose script
// also appends ev to the request's outbox and queues a delivery job, in the
// same atomic step as the record's write.
func (b *Backend) SaveWithEvent(ctx context.Context, rec *state.Record, ttl time.Duration, due time.Time, forget bool, ev *state.Event) error {
	if err := ctx.Err(); err != nil {
		// Once queued, a save is sent whatever becomes of its caller; one
		// whose caller has already gone is not.
		return fmt.Errorf("redis save: %w", err)
	}
	if err := b.layoutReady(ctx); err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %s: %w", rec.RequestID, err)
	}
	rank, ttlMs := state.Rank(rec.State), max(ttl.Milliseconds(), 1)
	op := &saveOp{
		keys:   []string{b.recordKey(rec.RequestID), b.aboutKey(rec.RequestID)},
		args:   []any{rec.Seq, rank, data, ttlMs, b.channel(rec.RequestID), rec.Epoch, "", "", ""},
		id:     rec.RequestID,
		forget: forget,
		final:  rank == 3,
		ttl:    ttlMs,
		wake:   make(chan struct{}, 1),
	}
	if ev != nil {
		evData, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode event of %s: %w", rec.RequestID, err)
		}
		op.keys = append(op.keys, b.outboxKey(rec.RequestID), b.jobsKey(rec.RequestID))
		op.args[7], op.args[8] = evData, rec.RequestID
	}
	st := state.ListState(rec.State)
	bucket := b.keys.Bucket(rec.RequestID)
	op.keys = append(op.keys, b.keys.Usage(bucket, rec.Owner, state.UsageHour(rec)),
		b.keys.List(bucket, rec.Owner, "", st), b.keys.List(bucket, rec.Owner, rec.DeploymentID, st))
	op.args = append(op.args, rec.CreatedMs(), rec.RequestID)
	if incs := state.UsageIncrements(rec); len(incs) > 0 {
		op.args = append(op.args, state.UsageRetention.Milliseconds())
		for _, inc := range incs {
			op.args = append(op.args, inc.Field, inc.By)
		}
	} else {
		op.args = append(op.args, "")
	}
	if !due.IsZero() {
		op.due = float64(due.UnixMilli())
		about, err := json.Marshal(state.ScheduledRequest{DeploymentID: rec.DeploymentID, Owner: rec.Owner, OwnerAttached: rec.OwnerAttached, CreatedAt: rec.CreatedAt,
			Webhooks: rec.Webhooks, MaxQueue: rec.MaxQueue, MaxRun: rec.MaxRun})
		if err != nil {
			return fmt.Errorf("encode request %s: %w", rec.RequestID, err)
		}
		op.args[6] = about
	}
	b.saves.do(ctx, op, b.sendSaves)
	res, err := op.cmd.Slice()
	if err != nil {
		return unavailable(ctx, "save", err)
	}
	if len(res) == 0 {
		return unavailable(ctx, "save", fmt.Errorf("unexpected answer %v", res))
	}
	if ok, _ := res[0].(int64); ok == 1 {
		return nil
	}
	conflict := &state.ConflictError{}
	if len(res) > 1 && res[1] != nil {
		stored, _ := res[1].(string)
		var synced, epoch string
		if len(res) > 3 {
			synced, _ = res[2].(string)
			epoch, _ = res[3].(string)
		}
		cur, err := decodeRecord(stored, synced, epoch)
		if err != nil {
			return fmt.Errorf("redis save %s: %w", rec.RequestID, err)
		}
		conflict.Current = cur
	}
	return conflict
}

// sendSaves sends a batch of saves in one pipeline, each as its schedule
// commands around the save script, and wakes each op with its result.
func (b *Backend) sendSaves(ctx context.Context, ops []*saveOp) {
	send := func(ops []*saveOp, sha bool) error {
		pipe := b.rdb.Pipeline()
		for _, op := range ops {
			if op.due != 0 {
				pipe.ZAdd(ctx, b.pendingKey(op.id), redis.Z{Score: op.due, Member: op.id})
			}
			if sha {
				op.cmd = b.save.EvalSha(ctx, pipe, op.keys, op.args...)
			} else {
				op.cmd = b.save.Eval(ctx, pipe, op.keys, op.args...)
			}
			if op.forget {
				pipe.ZRem(ctx, b.pendingKey(op.id), op.id)
			}
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	if err := send(ops, true); err != nil {
		// Redis restarted or flushed its scripts: send the script itself for
		// the saves it refused (none of them ran; the schedule commands are
		// idempotent, so repeating them is safe).
		var retry []*saveOp
		for _, op := range ops {
			if redis.HasErrorPrefix(op.cmd.Err(), "NOSCRIPT") {
				retry = append(retry, op)
			}
		}
		if len(retry) > 0 {
			_ = send(retry, false) // each op's command holds its own outcome
		}
	}
	b.followSlots(ctx, ops)
	for _, op := range ops {
		op.wake <- struct{}{}
	}
}

// followSlots gives back the concurrency slots of the written records that
// became final, and moves the others' expiry with their record's: the
// counts are in their deployment's slot, not the record's, so this is a
// second step after the save script, taken only for records that hold a
// slot. A failure leaves a final record's slot to the next reservation at
// the cap, which drops slots whose record has ended.
func (b *Backend) followSlots(ctx context.Context, ops []*saveOp) {
	var calls []scriptCall
	for _, op := range ops {
		res, _ := op.cmd.Slice()
		if len(res) < 2 {
			continue
		}
		field, _ := res[1].(string)
		dep, tenant, ok := strings.Cut(field, "\n")
		if !ok {
			continue
		}
		final := 0
		if op.final {
			final = 1
		}
		calls = append(calls, scriptCall{keys: []string{dep, tenant}, args: []any{op.id, final, op.ttl}})
	}
	if len(calls) == 0 {
		return
	}
	for _, cmd := range b.runAll(ctx, b.follow, calls) {
		if err := cmd.Err(); err != nil {
			b.log.Warn("concurrency slot not updated after a save; the next reservation at the cap checks it", "error", err)
		}
	}
}

// scriptCall is one run of a script among many sent together.
type scriptCall struct {
	keys []string
	args []any
}

// runAll runs script once per call in one pipeline (go-redis splits it by
// node on a cluster), sending the script itself for the calls a server
// refused for not knowing it (a restart, a new node), and returns each
// call's command.
func (b *Backend) runAll(ctx context.Context, script *redis.Script, calls []scriptCall) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(calls))
	pipe := b.rdb.Pipeline()
	for i, c := range calls {
		cmds[i] = script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	if _, err := pipe.Exec(ctx); err == nil {
		return cmds
	}
	pipe = b.rdb.Pipeline()
	var again []int
	for i, c := range calls {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			cmds[i] = script.Eval(ctx, pipe, c.keys, c.args...)
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		_, _ = pipe.Exec(ctx) // each call's command holds its own outcome
	}
	return cmds
}

// Subscribe subscribes the replica's pub/sub connection to requestID's channel
// and returns once Redis has confirmed it, so that a snapshot read afterwards
// cannot miss a record published in between.
func (b *Backend) Subscribe(ctx context.Context, requestID string, deliver func(*state.Record)) error {
	ch := b.channel(requestID)
	if b.shards != nil {
		b.mu.Lock()
		b.subs[ch] = subscription{id: requestID, deliver: deliver}
		b.mu.Unlock()
		if err := b.shards.Subscribe(ctx, ch); err != nil {
			b.mu.Lock()
			delete(b.subs, ch)
			b.mu.Unlock()
			return unavailable(ctx, "subscribe", err)
		}
		return nil
	}
	confirmed := make(chan struct{})
	b.mu.Lock()
	b.subs[ch] = subscription{id: requestID, deliver: deliver}
	b.waiters[ch] = append(b.waiters[ch], confirmed)
	b.mu.Unlock()

	err := b.ps.Subscribe(ctx, ch)
	if err == nil {
		t := time.NewTimer(subscribeTimeout)
		defer t.Stop()
		select {
		case <-confirmed:
			return nil
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
			err = errors.New("no confirmation from Redis")
		}
	}
	// Undo everything, including go-redis's memory of the channel, which it
	// would otherwise resubscribe after a reconnect.
	b.mu.Lock()
	delete(b.subs, ch)
	delete(b.waiters, ch)
	b.mu.Unlock()
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), subscribeTimeout)
	_ = b.ps.Unsubscribe(uctx, ch)
	cancel()
	return unavailable(ctx, "subscribe", err)
}

// Unsubscribe ends requestID's subscription.
func (b *Backend) Unsubscribe(ctx context.Context, requestID string) error {
	ch := b.channel(requestID)
	b.mu.Lock()
	delete(b.subs, ch)
	b.mu.Unlock()
	var err error
	if b.shards != nil {
		err = b.shards.Unsubscribe(ctx, ch)
	} else {
		err = b.ps.Unsubscribe(ctx, ch)
	}
	if err != nil {
		return unavailable(ctx, "unsubscribe", err)
	}
	return nil
}

// Reconnects counts how often a pub/sub connection was re-established.
func (b *Backend) Reconnects() int64 {
	if b.shards != nil {
		return b.shards.Reconnects()
	}
	return b.reconnects.Load()
}

// Run reads the pub/sub connection until ctx ends, handing each record to its
// subscriber (never blocking: subscribers must not block) and confirming
// subscriptions. When the connection fails, go-redis reconnects and resubscribes
// on the next read; once a read succeeds again, resync is called (in its own
// goroutine, retried until it succeeds) so that watchers get what was published
// while the connection was down. resync is given the requests to resync, or
// none for every watched request: on a Redis Cluster, a shard's connection
// that came back names the requests subscribed on it.
func (b *Backend) Run(ctx context.Context, resync func(ctx context.Context, only []string) error) error {
	resyncs := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.resyncLoop(ctx, resyncs, resync)
	}()
	defer func() {
		<-done
	}()
	signal := func() {
		select {
		case resyncs <- struct{}{}:
		default:
		}
	}
	askResync := func() {
		b.mu.Lock()
		b.resyncAll = true
		b.mu.Unlock()
		signal()
	}
	if b.shards != nil {
		return b.shards.Run(ctx, b.deliver, func(chans []string) {
			b.mu.Lock()
			for _, ch := range chans {
				if sub, ok := b.subs[ch]; ok {
					b.resyncIDs[sub.id] = struct{}{}
				}
			}
			b.mu.Unlock()
			signal()
		})
	}
	// A blocked read does not watch ctx: closing the connection ends it.
	stop := context.AfterFunc(ctx, func() { _ = b.ps.Close() })
	defer stop()
	defer b.ps.Close()

	broken := false
	pingPending := false
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		msg, err := b.ps.ReceiveTimeout(ctx, b.ping)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !pingPending {
					// Silence: ask for a pong, which any live connection answers.
					pingPending = true
					_ = b.ps.Ping(ctx)
					continue
				}
				// The ping went unanswered: the connection is dead without having
				// been closed (a partition, a vanished host), which TCP would only
				// notice many minutes later. A read that may not time out makes
				// go-redis drop the connection; the next read reconnects and
				// resubscribes.
				dctx, cancel := context.WithTimeout(ctx, time.Millisecond)
				_, _ = b.ps.ReceiveTimeout(dctx, 0)
				cancel()
				err = errors.New("ping unanswered")
			}
			pingPending = false
			if !broken {
				b.log.Warn("redis pub/sub connection lost; reconnecting", "error", err)
			}
			broken = true
			if !sleep(ctx, backoff) {
				break
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		pingPending = false
		if broken {
			broken, backoff = false, 50*time.Millisecond
			b.reconnects.Add(1)
			b.log.Info("redis pub/sub connection restored; resyncing watched requests")
			askResync()
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			// A confirmation nobody waits for is a resubscription: go-redis
			// reconnected inside some other call (a ping, a subscribe), and what
			// was published meanwhile is lost, so resync.
			if m.Kind == "subscribe" && !b.confirm(m.Channel) {
				askResync()
			}
		case *redis.Message:
			b.dispatch(m)
		}
	}
	return nil
}

// confirm releases the Subscribe calls waiting for ch, and reports whether there
// were any.
func (b *Backend) confirm(ch string) bool {
	b.mu.Lock()
	ws := b.waiters[ch]
	delete(b.waiters, ch)
	b.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
	return len(ws) > 0
}

// dispatch hands a record to its channel's subscriber. A record that
// arrives while a Subscribe of the channel awaits its confirmation was
// published before that subscription was active (the connection delivers in
// order): it is an old subscription's, still in flight after its
// Unsubscribe, and is dropped, so that a new subscriber gets nothing saved
// before it subscribed.
func (b *Backend) dispatch(m *redis.Message) {
	b.mu.Lock()
	deliver := b.subs[m.Channel].deliver
	pending := len(b.waiters[m.Channel]) > 0
	b.mu.Unlock()
	if pending {
		return // an old subscription's
	}
	b.deliverTo(deliver, m.Channel, m.Payload)
}

// subscription is a watched request's: its id and where its records go.
type subscription struct {
	id      string
	deliver func(*state.Record)
}

// deliver hands a record a shard connection received to its channel's
// subscriber (shardSubscriber has dropped those of old subscriptions).
func (b *Backend) deliver(ch, payload string) {
	b.mu.Lock()
	deliver := b.subs[ch].deliver
	b.mu.Unlock()
	b.deliverTo(deliver, ch, payload)
}

// deliverTo decodes a record and hands it to deliver, unless the channel
// was unsubscribed meanwhile (deliver is nil).
func (b *Backend) deliverTo(deliver func(*state.Record), ch, payload string) {
	if deliver == nil {
		return
	}
	var rec state.Record
	if err := json.Unmarshal([]byte(payload), &rec); err != nil {
		b.log.Error("undecodable record on channel", "channel", ch, "error", err)
		return
	}
	deliver(&rec)
}

// resyncLoop runs resync once per signal, over what was asked since the
// last one (resyncAll, resyncIDs), retrying with backoff until it works.
func (b *Backend) resyncLoop(ctx context.Context, signals <-chan struct{}, resync func(context.Context, []string) error) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-signals:
		}
		b.mu.Lock()
		all, ids := b.resyncAll, make([]string, 0, len(b.resyncIDs))
		for id := range b.resyncIDs {
			ids = append(ids, id)
		}
		b.resyncAll = false
		clear(b.resyncIDs)
		b.mu.Unlock()
		if all {
			ids = nil
		} else if len(ids) == 0 {
			continue
		}
		for wait := 50 * time.Millisecond; ; wait = min(wait*2, 2*time.Second) {
			err := resync(ctx, ids)
			if err == nil {
				break
			}
			b.log.Warn("resync after reconnect failed; retrying", "error", err)
			if !sleep(ctx, wait) {
				return
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Persistence is what Redis keeps on disk.
type Persistence struct {
	// AOF: every change is appended to a file (appendonly yes).
	AOF bool
	// RDB: snapshots are taken on a schedule (a non-empty save).
	RDB bool
}

// Persistence reads Redis's persistence settings (CONFIG GET), so that the
// gateway can warn when a restart of Redis would lose every record. Managed
// services often refuse CONFIG: the error then says so, and nothing is known.
func (b *Backend) Persistence(ctx context.Context) (Persistence, error) {
	var p Persistence
	aof, err := b.rdb.ConfigGet(ctx, "appendonly").Result()
	if err != nil {
		return p, fmt.Errorf("redis: CONFIG GET appendonly: %w", err)
	}
	save, err := b.rdb.ConfigGet(ctx, "save").Result()
	if err != nil {
		return p, fmt.Errorf("redis: CONFIG GET save: %w", err)
	}
	p.AOF = strings.EqualFold(aof["appendonly"], "yes")
	p.RDB = strings.TrimSpace(save["save"]) != ""
	return p, nil
}

// callTimeout is a go-redis hook that gives every command and pipeline a
// deadline (Options.CallTimeout); the process hooks wrap go-redis's retries.
type callTimeout time.Duration

func (d callTimeout) DialHook(next redis.DialHook) redis.DialHook { return next }

func (d callTimeout) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(d))
		defer cancel()
		return next(ctx, cmd)
	}
}

func (d callTimeout) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(d))
		defer cancel()
		return next(ctx, cmds)
	}
}
