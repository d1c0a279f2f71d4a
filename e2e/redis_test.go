package e2e

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/state/redisstore"
)

// startPrivateRedis starts a Redis server of the test's own: these tests kill
// connections and restart the server, which must not disturb other tests (or
// other packages' tests running at the same time on the shared server).
func startPrivateRedis(t *testing.T) *redistest.Server {
	t.Helper()
	srv, err := redistest.StartPrivate()
	if err != nil {
		t.Fatalf("start a private Redis: %v", err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

// pubsubClients lists the pub/sub connections Redis holds, one line each.
func pubsubClients(ctx context.Context, t *testing.T, admin *redis.Conn) []string {
	t.Helper()
	out, err := admin.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	var lines []string
	for l := range strings.Lines(out) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// killPubSub drops every pub/sub connection and returns how many there were.
func killPubSub(ctx context.Context, t *testing.T, admin *redis.Conn) int64 {
	t.Helper()
	n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
	if err != nil {
		t.Fatalf("CLIENT KILL TYPE pubsub: %v", err)
	}
	return n
}

// TestPubSubConnectionsKilled: the replicas' pub/sub connections are killed
// twice while three watchers follow a request. The first time they come back
// at once and the next update flows as usual. The second time Redis refuses
// new connections while the success is stored and published, so no replica is
// subscribed when it is published: only the resync after the reconnect can
// bring it to the watchers. Every watcher gets every event, in order, once.
func TestPubSubConnectionsKilled(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{redis: startPrivateRedis(t), queueTime: queueTime, runTime: runTime})
	// One connection of the test's own, opened now: it stays usable while
	// Redis refuses new connections.
	admin := c.rdb.Conn()
	t.Cleanup(func() { admin.Close() })
	if err := admin.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	watchers := []*watcher{
		watch(ctx, t, "watcher on A", c.a, rid, 0),
		watch(ctx, t, "watcher on B", c.b, rid, 0),
		watch(ctx, t, "watcher on C", c.c, rid, 0),
	}
	for _, w := range watchers {
		w.waitSeq(ctx, t, 1)
	}
	if d := c.lb.step(ctx, t); d.Status != "" {
		t.Fatalf("first callback %q, want the in_queue one", d.Status)
	}
	// One pub/sub connection per replica, whatever its watchers.
	if got := pubsubClients(ctx, t, admin); len(got) != 3 {
		t.Errorf("Redis holds %d pub/sub connections, want one per replica: %q", len(got), got)
	}

	// First kill: the replicas reconnect and resubscribe, then the next
	// update reaches every watcher.
	if n := killPubSub(ctx, t, admin); n != 3 {
		t.Errorf("killed %d pub/sub connections, want 3", n)
	}
	eventually(ctx, t, "the replicas to resubscribe", func() bool {
		got := pubsubClients(ctx, t, admin)
		return len(got) == 3 && !slices.ContainsFunc(got, func(l string) bool { return !strings.Contains(l, " sub=1 ") })
	})
	if d := c.lb.step(ctx, t); d.Status != "in_progress" || d.Answers["B"].Code != http.StatusOK {
		t.Fatalf("second callback %q answered %v by B, want in_progress, 200", d.Status, d.Answers["B"])
	}
	for _, w := range watchers {
		w.waitSeq(ctx, t, 2)
	}

	// Second kill, with Redis refusing new connections (the replicas' pooled
	// ones stay, so callbacks are still recorded).
	maxclients, err := admin.ConfigGet(ctx, "maxclients").Result()
	if err != nil || maxclients["maxclients"] == "" {
		t.Fatalf("CONFIG GET maxclients: %v %v", maxclients, err)
	}
	if err := admin.ConfigSet(ctx, "maxclients", "1").Err(); err != nil {
		t.Fatal(err)
	}
	reopened := false
	reopen := func() {
		if !reopened {
			reopened = true
			if err := admin.ConfigSet(context.WithoutCancel(ctx), "maxclients", maxclients["maxclients"]).Err(); err != nil {
				t.Errorf("restore maxclients: %v", err)
			}
		}
	}
	t.Cleanup(reopen)
	if n := killPubSub(ctx, t, admin); n != 3 {
		t.Errorf("killed %d pub/sub connections, want 3", n)
	}
	if d := c.lb.step(ctx, t); d.Status != "succeeded" || d.Answers["B"].Code != http.StatusOK {
		t.Fatalf("third callback %q answered %v by B, want succeeded, 200", d.Status, d.Answers["B"])
	}
	seq, err := admin.HGet(ctx, redisstore.RecordKey(c.prefix, rid), "seq").Int64()
	if err != nil || seq != 3 {
		t.Fatalf("the record in Redis is at seq %d (%v), want 3 after the success", seq, err)
	}
	if got := pubsubClients(ctx, t, admin); len(got) != 0 {
		t.Fatalf("a replica is subscribed while Redis refuses connections: %q", got)
	}
	for _, w := range watchers {
		if w.ended() || w.lastSeq() != 2 {
			t.Fatalf("%s got %v with no subscription to deliver it", w.name, pairs(w.received()))
		}
	}

	// Let the replicas reconnect: the resync brings the success.
	reopen()
	for _, w := range watchers {
		if got := seqs(w.waitOK(ctx, t)); !slices.Equal(got, []int64{1, 2, 3}) {
			t.Errorf("%s got seqs %v, want every one of 1, 2, 3 once", w.name, got)
		}
	}
}

// TestRedisRestart: Redis crashes and restarts (with its data) while a request
// runs and watchers on A and B follow it. During the outage the replicas say
// they are not ready, a Submit is refused with UNAVAILABLE before it reaches
// RunComfy, and the success callback gets 503, so the simulator retries it
// until Redis is back. The watchers' streams stay open throughout and end
// with the success.
func TestRedisRestart(t *testing.T) {
	ctx := setup(t)
	srv := startPrivateRedis(t)
	c := newCluster(ctx, t, clusterConfig{redis: srv, queueTime: queueTime, runTime: runTime})

	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	wa := watch(ctx, t, "watcher on A", c.a, rid, 0)
	wb := watch(ctx, t, "watcher on B", c.b, rid, 0)
	wa.waitSeq(ctx, t, 1)
	wb.waitSeq(ctx, t, 1)
	if d := c.lb.step(ctx, t); d.Status != "" {
		t.Fatalf("first callback %q, want the in_queue one", d.Status)
	}
	if d := c.lb.step(ctx, t); d.Status != "in_progress" {
		t.Fatalf("second callback %q, want in_progress", d.Status)
	}
	wa.waitSeq(ctx, t, 2)
	wb.waitSeq(ctx, t, 2)
	// The success callback waits at the balancer: the job has finished.
	c.lb.waitHeld(ctx, t)

	// Redis goes away now (SIGKILL) and comes back after three seconds, with
	// its data. The checks below run at once, side by side: each waits for
	// the replicas' Redis client to give up (dial retries, about 1.5s),
	// comfortably inside the outage.
	restarted, restartDone := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(restartDone)
		restarted <- srv.Restart(3 * time.Second)
	}()
	// Whatever happens, the restart ends before the server is stopped.
	t.Cleanup(func() { <-restartDone })
	eventually(ctx, t, "Redis to go down", func() bool {
		conn, err := net.DialTimeout("tcp", srv.Addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	submitted := c.submits.Load()
	var (
		wg       sync.WaitGroup
		ready    = make([]int, 3)
		subErr   error
		d        *delivery
		stepErr  error
		outageAt = time.Now()
	)
	for i, g := range c.gateways() {
		wg.Go(func() { ready[i] = c.readyz(ctx, g) })
	}
	wg.Go(func() {
		_, subErr = c.c.api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: `{}`})
	})
	// The success callback arrives during the outage: B cannot record it.
	wg.Go(func() { d, stepErr = c.lb.tryStep(ctx) })
	wg.Wait()
	t.Logf("the outage checks took %v", time.Since(outageAt))
	for i, g := range c.gateways() {
		if ready[i] != http.StatusServiceUnavailable {
			t.Errorf("readyz on %s during the outage: %d, want 503", g.name, ready[i])
		}
	}
	if status.Code(subErr) != codes.Unavailable {
		t.Errorf("Submit during the outage: %v, want Unavailable", subErr)
	}
	if got := c.submits.Load(); got != submitted {
		t.Errorf("Submit during the outage reached the simulator (%d submits, want %d)", got, submitted)
	}
	if stepErr != nil {
		t.Fatal(stepErr)
	}
	if d.Status != "succeeded" || d.Answers["B"].Code != http.StatusServiceUnavailable {
		t.Fatalf("callback %q during the outage answered %v by B, want succeeded, 503 (A %v, C %v)",
			d.Status, d.Answers["B"], d.Answers["A"], d.Answers["C"])
	}
	// Let the simulator's retries through.
	c.lb.open()

	select {
	case err := <-restarted:
		if err != nil {
			t.Fatalf("restart Redis: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Redis did not restart in time")
	}
	for _, w := range []*watcher{wa, wb} {
		if got := seqs(w.waitOK(ctx, t)); !slices.Equal(got, []int64{1, 2, 3}) {
			t.Errorf("%s got seqs %v, want 1, 2, 3", w.name, got)
		}
	}
	if got := c.recordSeq(ctx, t, rid); got != 3 {
		t.Errorf("the record in Redis is at seq %d, want 3", got)
	}
	retried := 0
	for _, d := range c.lb.all() {
		if d.Status == "succeeded" {
			retried++
		}
	}
	t.Logf("the success callback was sent %d times", retried)
	if retried < 2 {
		t.Errorf("the success callback was sent %d times; want it retried after the 503", retried)
	}

	// Back to normal: every replica is ready and takes submits again.
	for _, g := range c.gateways() {
		eventually(ctx, t, "replica "+g.name+" to be ready again", func() bool {
			return c.readyz(ctx, g) == http.StatusOK
		})
	}
	c.submit(ctx, t, c.c)
	if got := c.submits.Load(); got != submitted+1 {
		t.Errorf("%d submits reached the simulator, want %d", got, submitted+1)
	}
}

// TestPubSubSilentlyCut: C's pub/sub connection stops carrying anything (no
// FIN, no RST: a partition, a crashed Redis host, a failover behind a virtual
// IP) while a watcher on C follows a request. The replica pings its pub/sub
// connection after 5s of silence precisely to notice this; once it has, it
// must reconnect, resubscribe and resync, so the watcher still gets the
// success (invariant 4: the terminal event always arrives).
func TestPubSubSilentlyCut(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: queueTime, runTime: runTime, proxied: true})

	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	wa := watch(ctx, t, "watcher on A", c.a, rid, 0)
	wc := watch(ctx, t, "watcher on C", c.c, rid, 0)
	wa.waitSeq(ctx, t, 1)
	wc.waitSeq(ctx, t, 1)
	if n := c.c.redis.cutPubSub(); n != 1 {
		t.Fatalf("cut %d pub/sub connections of C, want 1", n)
	}
	c.lb.open()
	wa.waitOK(ctx, t)
	cut := time.Now()
	// Two ping intervals (5s each) and a reconnect fit well within the
	// test's deadline.
	wc.waitOK(ctx, t)
	t.Logf("the watcher on C got the success %v after the one on A", time.Since(cut))
}
