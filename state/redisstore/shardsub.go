package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// shardSubscriber subscribes to sharded pub/sub channels (SSUBSCRIBE) on a
// Redis Cluster, where a record is SPUBLISHed to the master that serves its
// channel's slot and only subscribers on that master's connection (or its
// replicas') see it.
//
// It keeps at most one subscription connection per shard (master), opened
// on a client of its own for that node, and does all the reconnecting
// itself: go-redis's ClusterClient.SSubscribe picks a node from one channel
// when it (re)connects and resubscribes every channel in one SSUBSCRIBE,
// which Redis refuses with CROSSSLOT when they span slots; and a
// server-pushed sunsubscribe (the slot moved, or the master was demoted)
// reaches go-redis as a mere *redis.Subscription it does nothing about.
// So whenever a shard's connection breaks, goes silent, receives what it did
// not ask for, or loses a channel to the server, the connection is closed and
// each of its channels is placed again on the master that serves it now
// (one SSUBSCRIBE command per channel, so that no command ever mixes slots);
// once Redis has confirmed them all, lost is called so that the caller
// resyncs what was published meanwhile.
type shardSubscriber struct {
	rdb  *redis.ClusterClient
	log  *slog.Logger
	ping time.Duration
	// name is the CLIENT SETNAME of its connections: the cluster client's
	// name (or comfygate) with -shardsub, for CLIENT LIST.
	name string

	// deliverMu serialises deliver per channel (by hash): a channel's
	// messages normally come from one connection's reader, but a channel
	// unsubscribed and subscribed again on another shard could otherwise
	// have two readers deliver for it at once.
	seed      maphash.Seed
	deliverMu [16]sync.Mutex

	reconnects atomic.Int64
	// kick wakes Run to serve a connection opened since it last looked.
	kick chan struct{}

	mu    sync.Mutex
	chans map[string]*shardChan // every channel wanted, by name
	// shards is the open connection of each shard, by the master's address;
	// conns is every connection whose reader has not finished (open ones,
	// and broken ones whose reader is yet to take their channels).
	shards map[string]*shardConn
	conns  map[*shardConn]struct{}
	// retry is the wait before placing again the channels of a shard whose
	// connection broke soon after it was opened, by address (see rebuild).
	retry            map[string]time.Duration
	running, stopped bool
	deliver          func(channel, payload string)
	lost             func(channels []string)
}

// shardChan is a wanted channel.
type shardChan struct {
	// shard is the connection it is subscribed (or being subscribed) on; nil
	// while relocating: its connection broke, and the reader of that
	// connection is placing it again.
	shard      *shardConn
	relocating bool
	// waiters are the Subscribe calls awaiting Redis's confirmation.
	waiters []chan error
	// group is the re-establishment it awaits a confirmation for, if any.
	group *lostGroup
}

// lostGroup is the channels of one broken connection being subscribed again:
// once none is left unconfirmed, lost is called with the confirmed ones (if
// any was confirmed, and not merely dropped meanwhile).
type lostGroup struct {
	pending   int
	confirmed []string
}

// shardConn is one subscription connection to a shard's master.
type shardConn struct {
	addr   string
	client *redis.Client // the connection's own, closed with it
	ps     *redis.PubSub
	opened time.Time
	once   sync.Once

	// Guarded by shardSubscriber.mu.
	chans map[string]struct{} // the channels placed on it
	// expect counts, per channel, the SSUBSCRIBEs sent on this connection
	// that Redis has not confirmed yet; unexpect counts the SUNSUBSCRIBEs,
	// so that an sunsubscribe Redis sends on its own can be told apart.
	expect, unexpect map[string]int
	served           bool  // Run started its reader
	closed           bool  // nothing more is placed on it or written to it
	retired          bool  // closed because its last channel went: no rebuild
	cause            error // why it was closed as broken
}

// Tuning of reconnection: a connection that breaks within shardCalm of
// being opened waits before its channels are placed again, from
// shardRetryMin doubling up to shardRetryMax, so that a stale slot map
// (which sends channels to a node that refuses them) cannot make a loop of
// connections; a connection that lived longer is replaced at once.
const (
	shardCalm     = time.Second
	shardRetryMin = 50 * time.Millisecond
	shardRetryMax = 500 * time.Millisecond
	// shardCheckTimeout bounds the check that a node answers as a master.
	shardCheckTimeout = time.Second
)

// newShardSubscriber returns a subscriber of rdb's shard channels; ping is
// how long a connection may stay silent before it is pinged (default 5s),
// and an unanswered ping counts as a broken connection. Run serves it.
func newShardSubscriber(rdb *redis.ClusterClient, log *slog.Logger, ping time.Duration) *shardSubscriber {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ping <= 0 {
		ping = 5 * time.Second
	}
	return &shardSubscriber{
		rdb:    rdb,
		log:    log,
		ping:   ping,
		name:   cmp.Or(rdb.Options().ClientName, "comfygate") + "-shardsub",
		seed:   maphash.MakeSeed(),
		kick:   make(chan struct{}, 1),
		chans:  map[string]*shardChan{},
		shards: map[string]*shardConn{},
		conns:  map[*shardConn]struct{}{},
		retry:  map[string]time.Duration{},
	}
}

// Subscribe SSUBSCRIBEs ch on the connection of the shard (master) that
// serves ch's slot, opening that shard's connection if it is the first
// channel there, and returns once Redis confirmed the subscription (bounded
// by ctx and by subscribeTimeout), so that a snapshot read afterwards cannot
// miss a record published in between. Confirmations are read by Run: a
// Subscribe before Run starts waits for it. On failure nothing of ch remains
// (no resubscription later), as with Backend.Subscribe.
func (s *shardSubscriber) Subscribe(ctx context.Context, ch string) error {
	ctx, cancel := context.WithTimeoutCause(ctx, subscribeTimeout, errors.New("no confirmation from Redis"))
	defer cancel()
	w := make(chan error, 1)
	s.mu.Lock()
	c := s.chans[ch]
	if c == nil {
		c = &shardChan{}
		s.chans[ch] = c
	}
	c.waiters = append(c.waiters, w)
	s.mu.Unlock()

	err := s.place(ctx, ch, c)
	if err == nil {
		select {
		case err = <-w:
			if err == nil {
				return nil
			}
		case <-ctx.Done():
			err = context.Cause(ctx)
		}
	}
	s.abandon(ctx, ch, c, w)
	return fmt.Errorf("redis: ssubscribe %s: %w", ch, err)
}

// place sends the SSUBSCRIBE of c (ch's entry) on the connection it belongs
// on: its current one, or else that of the master the cluster client names
// for ch's slot. It returns nil without sending anything while ch's
// connection is broken: the reader of that connection places ch again.
func (s *shardSubscriber) place(ctx context.Context, ch string, c *shardChan) error {
	for {
		s.mu.Lock()
		switch {
		case s.stopped:
			s.mu.Unlock()
			return errors.New("the shard subscriber has stopped")
		case s.chans[ch] != c:
			s.mu.Unlock()
			return errors.New("unsubscribed meanwhile")
		case c.relocating || (c.shard != nil && c.shard.closed):
			s.mu.Unlock()
			return nil
		case c.shard != nil:
			sh := c.shard
			sh.expect[ch]++
			s.mu.Unlock()
			s.send(ctx, sh, ch)
			return nil
		}
		s.mu.Unlock()

		node, err := s.rdb.MasterForKey(ctx, ch)
		if err != nil {
			return fmt.Errorf("find the master of its slot: %w", err)
		}
		s.mu.Lock()
		if s.chans[ch] != c || c.relocating || c.shard != nil {
			s.mu.Unlock()
			continue // placed (or dropped) meanwhile: look again
		}
		sh, err := s.shardLocked(node.Options().Addr)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.assignLocked(sh, ch, c)
		s.mu.Unlock()
		s.send(ctx, sh, ch)
		return nil
	}
}

// abandon undoes a Subscribe that failed: its waiter goes, and so does ch
// (SUNSUBSCRIBEd, so that nothing of it remains), unless ch was dropped or
// subscribed again already.
func (s *shardSubscriber) abandon(ctx context.Context, ch string, c *shardChan, w chan error) {
	s.mu.Lock()
	for i, x := range c.waiters {
		if x == w {
			c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
			break
		}
	}
	if s.chans[ch] != c {
		s.mu.Unlock()
		return
	}
	d := s.dropLocked(ch, c)
	s.mu.Unlock()
	s.finishDrop(ctx, ch, d, errors.New("a concurrent subscription failed"))
}

// Unsubscribe ends ch's subscription (SUNSUBSCRIBE); nothing is delivered for
// ch once it returns, and a connection left without channels is closed. It
// does not fail: a connection that does not take the SUNSUBSCRIBE is dropped
// and replaced without ch. A Subscribe of ch still waiting fails.
func (s *shardSubscriber) Unsubscribe(ctx context.Context, ch string) error {
	s.mu.Lock()
	c := s.chans[ch]
	if c == nil {
		s.mu.Unlock()
		return nil
	}
	d := s.dropLocked(ch, c)
	s.mu.Unlock()
	s.finishDrop(ctx, ch, d, errors.New("unsubscribed meanwhile"))
	return nil
}

// dropped is what is left to do, outside the lock, once a channel is
// forgotten.
type dropped struct {
	waiters []chan error
	unsub   *shardConn // send SUNSUBSCRIBE on it
	retire  *shardConn // close it: ch was its last channel
	lost    []string   // ch was the last one a re-establishment waited for: its channels
}

// dropLocked forgets ch (whose entry is c).
func (s *shardSubscriber) dropLocked(ch string, c *shardChan) dropped {
	var d dropped
	delete(s.chans, ch)
	d.waiters, c.waiters = c.waiters, nil
	d.lost = s.leaveGroupLocked(c, ch, false)
	sh := c.shard
	c.shard, c.relocating = nil, false
	if sh == nil {
		return d
	}
	delete(sh.chans, ch)
	switch {
	case sh.closed: // its reader is taking its channels, without ch now
	case len(sh.chans) == 0:
		s.closeLocked(sh)
		sh.retired = true
		if !sh.served {
			delete(s.conns, sh)
		}
		d.retire = sh
	default:
		sh.unexpect[ch]++
		d.unsub = sh
	}
	return d
}

// finishDrop does what dropLocked left to do; why is what waiting Subscribe
// calls of the channel return.
func (s *shardSubscriber) finishDrop(ctx context.Context, ch string, d dropped, why error) {
	for _, w := range d.waiters {
		w <- why
	}
	if d.lost != nil {
		s.reestablished(d.lost)
	}
	if d.retire != nil {
		d.retire.close()
	}
	if d.unsub != nil {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), subscribeTimeout)
		defer cancel()
		if err := d.unsub.ps.SUnsubscribe(wctx, ch); err != nil {
			s.breakConn(d.unsub, fmt.Errorf("sunsubscribe: %w", err))
		}
	}
}

// Run serves every shard connection until ctx ends, then closes them all; it
// runs once. deliver is called (never concurrently for one channel, in the
// order the shard sent them; it must not block) for each message of a
// confirmed subscription; a message arriving for a channel whose Subscribe
// still awaits its confirmation is dropped (it was published before that
// subscription was active). lost is called with channels (it must not
// block; the caller resyncs them from stored state) whenever they were
// re-established after anything that may have lost messages: a broken or
// silent connection, a failover, a slot moved away. Channels on other
// shards are not named: they lost nothing.
func (s *shardSubscriber) Run(ctx context.Context, deliver func(channel, payload string), lost func(channels []string)) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("redis: the shard subscriber runs already (or ran)")
	}
	s.running = true
	s.deliver, s.lost = deliver, lost
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer func() {
		s.mu.Lock()
		s.stopped = true
		var all []*shardConn
		for sh := range s.conns {
			s.closeLocked(sh)
			all = append(all, sh)
		}
		s.mu.Unlock()
		// A blocked read does not watch ctx: closing its connection ends it.
		for _, sh := range all {
			sh.close()
		}
		wg.Wait()
	}()
	follow := time.NewTicker(shardFollow)
	defer follow.Stop()
	for {
		s.mu.Lock()
		for sh := range s.conns {
			if !sh.served {
				sh.served = true
				wg.Go(func() { s.serve(ctx, sh) })
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		case <-follow.C:
			s.followMap(ctx)
		}
	}
}

// shardFollow is how often the connections are compared with the cluster
// client's slot map (followMap).
const shardFollow = 250 * time.Millisecond

// followMap gives up each connection whose channels the cluster client's
// slot map now places on another master: a failover the saves already
// follow (they go to the promoted replica), while the old master, hung or
// cut off, keeps the connection open and silent. Waiting for the ping to go
// unanswered would leave the watchers without the states saved meanwhile.
// (A master that was only paused may still, when it wakes and before it
// learns it was replaced, run a save it had queued and publish it; Redis
// passes that publish on to the rest of the shard, the promoted replica
// included. Such a record is older than the replica's at its seq, and the
// hub drops it: state.Watcher.) The lookups read the client's cached map
// (read again every ClusterStateReloadInterval): no round trip.
func (s *shardSubscriber) followMap(ctx context.Context) {
	type probe struct {
		sh    *shardConn
		chans []string // one per slot
	}
	s.mu.Lock()
	probes := make([]probe, 0, len(s.shards))
	for _, sh := range s.shards {
		if sh.closed || len(sh.chans) == 0 {
			continue
		}
		seen := map[int]bool{}
		p := probe{sh: sh}
		for ch := range sh.chans {
			if slot := keySlot(ch); !seen[slot] {
				seen[slot] = true
				p.chans = append(p.chans, ch)
			}
		}
		probes = append(probes, p)
	}
	s.mu.Unlock()
	for _, p := range probes {
		for _, ch := range p.chans {
			node, err := s.rdb.MasterForKey(ctx, ch)
			if err != nil {
				break // no map now: the connection's own reads will tell
			}
			if addr := node.Options().Addr; addr != p.sh.addr {
				s.breakConn(p.sh, fmt.Errorf("the slot map names %s for %s now", addr, ch))
				break
			}
		}
	}
}

// Shards reports, per shard address (the master's host:port), how many
// channels are subscribed (or being subscribed) on its connection.
func (s *shardSubscriber) Shards() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.shards))
	for addr, sh := range s.shards {
		if n := len(sh.chans); n > 0 {
			m[addr] = n
		}
	}
	return m
}

// Reconnects counts re-establishments: the channels of a lost connection
// subscribed again and confirmed, each followed by a call of lost.
func (s *shardSubscriber) Reconnects() int64 { return s.reconnects.Load() }

// shardLocked returns the open connection of the shard at addr, opening one
// (served once Run sees it) if there is none.
func (s *shardSubscriber) shardLocked(addr string) (*shardConn, error) {
	if sh := s.shards[addr]; sh != nil {
		return sh, nil
	}
	if s.stopped {
		return nil, errors.New("the shard subscriber has stopped")
	}
	client := s.newClient(addr, s.name, 0)
	sh := &shardConn{
		addr:     addr,
		client:   client,
		ps:       client.SSubscribe(context.Background()), // connects on first use
		opened:   time.Now(),
		chans:    map[string]struct{}{},
		expect:   map[string]int{},
		unexpect: map[string]int{},
	}
	s.shards[addr] = sh
	s.conns[sh] = struct{}{}
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return sh, nil
}

// newClient returns a client of the node at addr, with the cluster client's
// connection settings, for one subscription connection (named, so that it
// shows in CLIENT LIST) or, unnamed and with every step bounded by timeout,
// for a check. It is a client of its own, rather than the cluster client's
// for that node, so that go-redis neither moves its connection elsewhere
// (maintenance notifications) nor retries dials and commands the subscriber
// retries itself.
func (s *shardSubscriber) newClient(addr, name string, timeout time.Duration) *redis.Client {
	o := s.rdb.Options()
	opt := &redis.Options{
		Addr:                         addr,
		ClientName:                   name,
		Dialer:                       o.Dialer,
		OnConnect:                    o.OnConnect,
		Protocol:                     o.Protocol,
		Username:                     o.Username,
		Password:                     o.Password,
		CredentialsProvider:          o.CredentialsProvider,
		CredentialsProviderContext:   o.CredentialsProviderContext,
		StreamingCredentialsProvider: o.StreamingCredentialsProvider,
		DialTimeout:                  o.DialTimeout,
		DialerRetries:                1,
		MaxRetries:                   -1,
		WriteTimeout:                 o.WriteTimeout,
		TLSConfig:                    o.TLSConfig,
		DisableIdentity:              o.DisableIdentity,
		IdentitySuffix:               o.IdentitySuffix,
		PoolSize:                     1,
		MaintNotificationsConfig:     &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if timeout > 0 {
		// go-redis heeds a ctx's deadline only when told to.
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = timeout, timeout, timeout
		opt.ContextTimeoutEnabled = true
	}
	if o.NewClient != nil {
		return o.NewClient(opt)
	}
	return redis.NewClient(opt)
}

// assignLocked places ch (entry c) on sh and counts the SSUBSCRIBE the
// caller is about to send.
func (s *shardSubscriber) assignLocked(sh *shardConn, ch string, c *shardChan) {
	c.shard = sh
	sh.chans[ch] = struct{}{}
	sh.expect[ch]++
}

// send writes an SSUBSCRIBE of each of chans on sh, one command per channel.
// The writes do not end with the caller's ctx (a half-written command would
// spoil the connection); a connection that fails one is broken, and its
// reader places its channels again.
func (s *shardSubscriber) send(ctx context.Context, sh *shardConn, chans ...string) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), subscribeTimeout)
	defer cancel()
	for _, ch := range chans {
		if err := sh.ps.SSubscribe(wctx, ch); err != nil {
			s.breakConn(sh, fmt.Errorf("ssubscribe: %w", err))
			return
		}
	}
}

// closeLocked marks sh closed: nothing is placed on it any more, and a new
// connection of its shard may open.
func (s *shardSubscriber) closeLocked(sh *shardConn) {
	sh.closed = true
	if s.shards[sh.addr] == sh {
		delete(s.shards, sh.addr)
	}
}

// breakConn closes a connection found broken (by a failed write); its
// reader, seeing it closed, places its channels again.
func (s *shardSubscriber) breakConn(sh *shardConn, err error) {
	s.mu.Lock()
	if !sh.closed {
		s.closeLocked(sh)
		sh.cause = err
	}
	s.mu.Unlock()
	sh.close()
}

// close closes sh's connection and client.
func (sh *shardConn) close() {
	sh.once.Do(func() {
		_ = sh.ps.Close()
		_ = sh.client.Close()
	})
}

// serve reads sh until it breaks or Run ends, then, if it broke, places its
// channels again.
func (s *shardSubscriber) serve(ctx context.Context, sh *shardConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, sh)
		s.mu.Unlock()
	}()
	err := s.read(ctx, sh)
	s.mu.Lock()
	retired := sh.retired
	if sh.cause != nil {
		err = sh.cause
	}
	s.mu.Unlock()
	if ctx.Err() != nil || retired {
		sh.close()
		return
	}
	s.rebuild(ctx, sh, err)
}

// read reads sh's messages until something shows it cannot be trusted to
// deliver every message of its channels any more, and returns what.
func (s *shardSubscriber) read(ctx context.Context, sh *shardConn) error {
	pingPending := false
	for {
		msg, err := sh.ps.ReceiveTimeout(ctx, s.ping)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
			if pingPending {
				// The ping went unanswered: the connection is dead without
				// having been closed (a partition, a vanished host), which TCP
				// would only notice many minutes later.
				return errors.New("ping unanswered")
			}
			// Silence: ask for a pong, which any live connection answers.
			pingPending = true
			pctx, cancel := context.WithTimeout(ctx, s.ping)
			err := sh.ps.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			continue
		}
		pingPending = false
		switch m := msg.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				if !s.confirmed(sh, m.Channel) {
					// A confirmation nobody asked for is a resubscription:
					// go-redis reconnected inside some call, and whatever was
					// published meanwhile is lost, and whatever it
					// resubscribed is on a node of its choosing.
					return fmt.Errorf("unexpected confirmation of %s: go-redis reconnected", m.Channel)
				}
			case "sunsubscribe":
				if s.pushedOut(sh, m.Channel) {
					return fmt.Errorf("redis unsubscribed %s (its slot moved, or the node is no master any more)", m.Channel)
				}
			default:
				return fmt.Errorf("unexpected %s of %s", m.Kind, m.Channel)
			}
		case *redis.Message:
			s.dispatch(sh, m)
		}
	}
}

// confirmed takes Redis's confirmation of an SSUBSCRIBE of ch on sh: once
// every SSUBSCRIBE of ch sent on sh is confirmed, the subscription is active,
// and its waiters return. It reports false for a confirmation nobody sent an
// SSUBSCRIBE for.
func (s *shardSubscriber) confirmed(sh *shardConn, ch string) bool {
	s.mu.Lock()
	n := sh.expect[ch]
	switch {
	case n == 0:
		s.mu.Unlock()
		return false
	case n > 1:
		sh.expect[ch] = n - 1
		s.mu.Unlock()
		return true
	}
	delete(sh.expect, ch)
	c := s.chans[ch]
	if c == nil || c.shard != sh {
		s.mu.Unlock()
		return true // dropped (or moved) meanwhile
	}
	ws := c.waiters
	c.waiters = nil
	lost := s.leaveGroupLocked(c, ch, true)
	s.mu.Unlock()
	for _, w := range ws {
		w <- nil
	}
	if lost != nil {
		s.reestablished(lost)
	}
	return true
}

// pushedOut takes an sunsubscribe of ch on sh, and reports whether Redis sent
// it on its own (not in answer to a SUNSUBSCRIBE) for a channel still placed
// on sh: the slot moved to another master, or this one became a replica.
func (s *shardSubscriber) pushedOut(sh *shardConn, ch string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := sh.unexpect[ch]; n > 0 {
		if n == 1 {
			delete(sh.unexpect, ch)
		} else {
			sh.unexpect[ch] = n - 1
		}
		return false
	}
	c := s.chans[ch]
	return c != nil && c.shard == sh
}

// dispatch hands a message to deliver if its channel is subscribed on sh and
// confirmed. A message that arrives while an SSUBSCRIBE of the channel awaits
// its confirmation was published before that subscription was active (the
// connection delivers in order): it is an old subscription's, still in
// flight after its SUNSUBSCRIBE, and is dropped, so that a new subscriber
// gets nothing published before it subscribed.
func (s *shardSubscriber) dispatch(sh *shardConn, m *redis.Message) {
	s.mu.Lock()
	c := s.chans[m.Channel]
	ok := c != nil && c.shard == sh && sh.expect[m.Channel] == 0 && len(c.waiters) == 0
	deliver := s.deliver
	s.mu.Unlock()
	if !ok || deliver == nil {
		return
	}
	mu := &s.deliverMu[maphash.String(s.seed, m.Channel)%uint64(len(s.deliverMu))]
	mu.Lock()
	defer mu.Unlock()
	deliver(m.Channel, m.Payload)
}

// rebuild places again the channels of sh, a connection that broke (or may
// have lost messages), on the masters that serve them now, retrying with
// backoff until the cluster answers, and asks the cluster client to reload
// its slot map, which may not know yet of a failover or a moved slot. lost
// is called once they are all confirmed (by whichever connections they land
// on; a connection that breaks in turn takes over the rest).
func (s *shardSubscriber) rebuild(ctx context.Context, sh *shardConn, cause error) {
	s.mu.Lock()
	s.closeLocked(sh)
	g := &lostGroup{}
	chans := make([]string, 0, len(sh.chans))
	var lost [][]string
	for ch := range sh.chans {
		c := s.chans[ch]
		if c == nil || c.shard != sh {
			continue // cannot be: a channel is on the connection its entry names
		}
		c.shard, c.relocating = nil, true
		if l := s.leaveGroupLocked(c, ch, false); l != nil {
			lost = append(lost, l)
		}
		c.group = g
		g.pending++
		chans = append(chans, ch)
	}
	clear(sh.chans)
	var wait time.Duration
	if time.Since(sh.opened) < shardCalm {
		wait = min(max(2*s.retry[sh.addr], shardRetryMin), shardRetryMax)
	}
	s.retry[sh.addr] = wait
	s.mu.Unlock()
	sh.close()
	for _, l := range lost {
		s.reestablished(l)
	}
	if len(chans) == 0 {
		return
	}
	s.log.Warn("redis shard pub/sub connection lost; subscribing its channels again",
		"shard", sh.addr, "channels", len(chans), "error", cause)
	for {
		s.rdb.ReloadState(ctx)
		if wait > 0 && !sleep(ctx, wait) {
			return
		}
		err := s.relocate(ctx, chans)
		if err == nil || ctx.Err() != nil {
			return
		}
		s.log.Debug("redis shard pub/sub: cannot place channels yet; retrying", "shard", sh.addr, "error", err)
		wait = min(max(2*wait, shardRetryMin), shardRetryMax)
	}
}

// relocate places the channels of chans still relocating on the masters that
// serve them, once each of those answers as a master (nothing is placed
// unless all are). The cluster client's slot map may not know yet of a
// failover: while go-redis reloads it, asking each node in turn, a dead master
// makes the reload slow and a hung one slower still. So when the master it
// names does not answer as one, the replica it names for the slot is asked:
// promoted, it serves the slot now. A node that answers as a master but does
// not serve the slot (a map that missed a moved slot) refuses the SSUBSCRIBE
// with MOVED, and its connection's reader places its channels again.
func (s *shardSubscriber) relocate(ctx context.Context, chans []string) error {
	byAddr := map[string][]string{}
	checked := map[string]error{}
	check := func(addr string) error {
		err, ok := checked[addr]
		if !ok {
			err = s.checkMaster(ctx, addr)
			checked[addr] = err
		}
		return err
	}
	for _, ch := range chans {
		s.mu.Lock()
		c := s.chans[ch]
		wanted := c != nil && c.relocating
		s.mu.Unlock()
		if !wanted {
			continue
		}
		node, err := s.rdb.MasterForKey(ctx, ch)
		if err != nil {
			return fmt.Errorf("find the master of %s: %w", ch, err)
		}
		addr := node.Options().Addr
		if err := check(addr); err != nil {
			replica, rerr := s.rdb.SlaveForKey(ctx, ch)
			if rerr != nil || replica.Options().Addr == addr || check(replica.Options().Addr) != nil {
				return fmt.Errorf("%s: %w", addr, err)
			}
			addr = replica.Options().Addr
		}
		byAddr[addr] = append(byAddr[addr], ch)
	}
	for addr, list := range byAddr {
		s.mu.Lock()
		sh, err := s.shardLocked(addr)
		if err != nil {
			s.mu.Unlock()
			return nil // stopped: nothing is to be placed any more
		}
		send := list[:0]
		for _, ch := range list {
			if c := s.chans[ch]; c != nil && c.relocating {
				c.relocating = false
				s.assignLocked(sh, ch, c)
				send = append(send, ch)
			}
		}
		s.mu.Unlock()
		s.send(ctx, sh, send...)
	}
	return nil
}

// checkMaster asks the node at addr whether it is a master, on a connection
// of its own: the cluster client's for the node would retry a dead node's
// dials and commands for a while.
func (s *shardSubscriber) checkMaster(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, shardCheckTimeout)
	defer cancel()
	node := s.newClient(addr, "", shardCheckTimeout)
	defer node.Close()
	role, err := node.Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("ROLE: %w", err)
	}
	if len(role) == 0 || role[0] != "master" {
		return fmt.Errorf("not a master (ROLE %v)", role)
	}
	return nil
}

// leaveGroupLocked takes c (channel ch) out of the re-establishment it
// awaits, if any, confirmed or not, and returns the group's confirmed
// channels when that completes the group with channels confirmed: then lost
// is due for them.
func (s *shardSubscriber) leaveGroupLocked(c *shardChan, ch string, confirmed bool) []string {
	g := c.group
	if g == nil {
		return nil
	}
	c.group = nil
	g.pending--
	if confirmed {
		g.confirmed = append(g.confirmed, ch)
	}
	if g.pending == 0 && len(g.confirmed) > 0 {
		return g.confirmed
	}
	return nil
}

// reestablished counts a re-establishment and calls lost with its channels.
func (s *shardSubscriber) reestablished(chans []string) {
	s.reconnects.Add(1)
	s.mu.Lock()
	lost := s.lost
	s.mu.Unlock()
	s.log.Info("redis shard pub/sub channels subscribed again; resyncing their requests", "channels", len(chans))
	if lost != nil {
		lost(chans)
	}
}
