package e2e

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// The reconciler, end to end: the tests below run replicas with a short
// --poll-interval (pollInterval; the lease then lives max(2×interval, 5s) = 5s)
// and the simulator with jobs that outlast a few intervals in each state.
const (
	pollInterval  = 300 * time.Millisecond
	pollQueueTime = time.Second
	pollRunTime   = time.Second
	// leaseTTL is the reconciler's lease time to live at pollInterval.
	leaseTTL = 5 * time.Second
)

// TestPollOnlyReplicasReachSuccess: replicas without --public-url ask
// RunComfy for no callback at all; a request submitted on A and watched on A,
// B and C still goes queued → running → succeeded for every watcher, with its
// outputs, within a few poll intervals of the job's end, as the same sequence
// everywhere. Once finished it leaves the poll schedule, and it was never
// polled by two replicas at once.
func TestPollOnlyReplicasReachSuccess(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: pollQueueTime, runTime: pollRunTime, pollInterval: pollInterval, pollOnly: true})

	rid := c.submit(ctx, t, c.a)
	for _, q := range c.up.submitted() {
		if q.Has("webhook") || q.Has("webhook_intermediate_status") {
			t.Errorf("a poll-only replica asked for callbacks: submit query %v", q)
		}
	}
	if !c.scheduled(ctx, t, rid) {
		t.Errorf("the submitted request is not in the poll schedule")
	}
	watchers := []*watcher{
		watch(ctx, t, "watcher on A", c.a, rid, 0),
		watch(ctx, t, "watcher on B", c.b, rid, 0),
		watch(ctx, t, "watcher on C", c.c, rid, 0),
	}
	var want []string
	for i, w := range watchers {
		evs := w.waitOK(ctx, t)
		if i == 0 {
			// The job ended upstream at finished_at; polling alone must
			// bring that to the watcher within a few intervals (generous
			// here: ten, for loaded machines).
			fin := evs[len(evs)-1].GetFinishedAt().AsTime()
			lag := time.Since(fin)
			t.Logf("the success reached the first watcher %v after the job finished upstream", lag.Round(time.Millisecond))
			if evs[len(evs)-1].GetFinishedAt() == nil || lag > 10*pollInterval {
				t.Errorf("the success reached the watcher %v after the job finished (finished_at %v), want within a few poll intervals of %v",
					lag, evs[len(evs)-1].GetFinishedAt(), pollInterval)
			}
			want = pairs(evs)
			continue
		}
		if got := pairs(evs); !slices.Equal(got, want) {
			t.Errorf("%s got %v, %s got %v: want identical sequences", w.name, got, watchers[0].name, want)
		}
	}
	t.Logf("every watcher got %v", want)
	// A poll may record news within a state (the first one adds the queue
	// position), so the statuses are compared without repeats.
	if got, wantStatuses := statusesOf(watchers[0].received()), []string{"QUEUED", "RUNNING", "SUCCEEDED"}; !slices.Equal(got, wantStatuses) {
		t.Errorf("statuses %v, want %v: polling sees every state of a job that stays in it for several intervals", got, wantStatuses)
	}
	final := watchers[0].lastSeq()
	if got := c.recordSeq(ctx, t, rid); got != final {
		t.Errorf("the record in Redis is at seq %d, the watchers ended at %d", got, final)
	}
	eventually(ctx, t, "the finished request to leave the poll schedule", func() bool { return !c.scheduled(ctx, t, rid) })

	calls := callsOf(c.up.statusCalls(), rid)
	t.Logf("%d status calls: %s", len(calls), describeCalls(calls, calls[0].At))
	if n := maxOverlap(calls); n > 1 {
		t.Errorf("up to %d status calls of the request were in flight at once, want 1: %s", n, describeCalls(calls, calls[0].At))
	}
	checkLeased(t, calls, calls[0].At)
}

// statusesOf returns the events' statuses, consecutive repeats dropped.
func statusesOf(evs []*comfygatev1.RequestState) []string {
	var out []string
	for _, e := range evs {
		s := strings.TrimPrefix(e.GetStatus().String(), "STATUS_")
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// checkLeased: every status call was made by the replica holding the
// request's lease at that moment, so no replica polled without it.
func checkLeased(t *testing.T, calls []statusCall, t0 time.Time) {
	t.Helper()
	for _, cl := range calls {
		if cl.Holder != cl.Replica {
			t.Errorf("replica %s called status of %s at %v while the lease was held by %q: %s",
				cl.Replica, cl.RequestID, cl.At.Sub(t0).Round(time.Millisecond), cl.Holder, describeCalls(calls, t0))
			return
		}
	}
}

// TestPollOneReplicaAtATime: five poll-only requests, submitted on the three
// replicas and watched by nobody, are polled to success while every status
// answer takes 200ms. Each request is polled by one replica at a time (never
// two of its status calls in flight at once, each made by the lease holder),
// and about as often as one replica alone would poll it: not three times as
// often. Once finished, a request is no longer polled.
func TestPollOneReplicaAtATime(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: pollQueueTime, runTime: pollRunTime, pollInterval: pollInterval, pollOnly: true})
	c.up.setStatusDelay(200 * time.Millisecond)

	type job struct {
		id                  string
		submitted, finished time.Time
	}
	jobs := make([]job, 5)
	for i := range jobs {
		g := c.gateways()[i%3]
		jobs[i] = job{id: c.submit(ctx, t, g), submitted: time.Now()}
	}
	t0 := jobs[0].submitted
	// Nobody watches: the requests are polled at the plain interval, and
	// found finished in Redis.
	eventually(ctx, t, "every request to finish", func() bool {
		done := true
		for i := range jobs {
			if jobs[i].finished.IsZero() {
				if c.rank(ctx, t, jobs[i].id) == 3 {
					jobs[i].finished = time.Now()
				} else {
					done = false
				}
			}
		}
		return done
	})
	// Then nothing polls them any more: out of the schedule, no lease, no
	// status call in flight.
	eventually(ctx, t, "the finished requests to leave the schedule, unleased", func() bool {
		for _, j := range jobs {
			if owner, _ := c.lease(ctx, t, j.id); owner != "" || c.scheduled(ctx, t, j.id) {
				return false
			}
		}
		for _, cl := range c.up.statusCalls() {
			if cl.Done.IsZero() {
				return false
			}
		}
		return true
	})

	all := c.up.statusCalls()
	byReplica := map[string]int{}
	for _, j := range jobs {
		calls := callsOf(all, j.id)
		for _, cl := range calls {
			byReplica[cl.Replica]++
		}
		elapsed := j.finished.Sub(j.submitted)
		bound := int(elapsed/pollInterval) + 2
		t.Logf("request %s…: finished after %v, %d status calls (one poller: at most %d): %s",
			j.id[:8], elapsed.Round(time.Millisecond), len(calls), bound, describeCalls(calls, t0))
		if n := maxOverlap(calls); n != 1 {
			t.Errorf("request %s: up to %d status calls in flight at once, want 1", j.id, n)
		}
		checkLeased(t, calls, t0)
		if len(calls) > bound {
			t.Errorf("request %s: %d status calls in %v, more than one replica polling every %v would make (%d)",
				j.id, len(calls), elapsed, pollInterval, bound)
		}
		for _, cl := range calls {
			if cl.At.After(j.finished) {
				t.Errorf("request %s polled at %v, after it had finished at %v", j.id, cl.At.Sub(t0), j.finished.Sub(t0))
			}
		}
	}
	t.Logf("status calls by replica: %v", byReplica)
}

// TestPollLeaseOfKilledReplicaIsTakenOver: the replica polling a request is
// killed (SIGKILL) while its status call is in flight, holding the request's
// lease. No other replica polls the request while that lease lives; once it
// expires (5s), a survivor takes the request over and the watchers on the
// survivors get the success. (The kill lands during the first poll's 2s
// delay at the proxy; later polls are answered at once.)
func TestPollLeaseOfKilledReplicaIsTakenOver(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: 500 * time.Millisecond, runTime: 500 * time.Millisecond, pollInterval: pollInterval, pollOnly: true})
	// A slow first poll: still in flight when its replica dies.
	c.up.setStatusDelay(2 * time.Second)

	rid := c.submit(ctx, t, c.a)
	t0 := time.Now()
	watchers := map[string]*watcher{}
	for _, g := range c.gateways() {
		watchers[g.name] = watch(ctx, t, "watcher on "+g.name, g, rid, 0)
	}
	var first statusCall
	c.up.await(ctx, t, "the first status call", func(calls []statusCall) bool {
		cs := kindOf(calls, "status")
		if len(cs) > 0 {
			first = cs[0]
		}
		return len(cs) > 0
	})
	// PTTL is read after readAt: the lease ends at readAt+ttl or later.
	readAt := time.Now()
	owner, ttl := c.lease(ctx, t, rid)
	pid, ok := leasePID(owner)
	if !ok {
		t.Fatalf("lease owner %q: want <host>-<pid>-<random>", owner)
	}
	if ttl <= 0 || ttl > leaseTTL {
		t.Errorf("the lease has %v to live, want at most %v", ttl, leaseTTL)
	}
	victim := c.byPID(pid)
	if victim == nil || victim.name != first.Replica {
		t.Fatalf("the lease is held by %q (pid %d), the status call in flight comes from %s", owner, pid, first.Replica)
	}
	leaseEnd := readAt.Add(ttl)
	t.Logf("killing %s, mid-poll, %v after the submit; its lease has %v left", victim.name, time.Since(t0).Round(time.Millisecond), ttl)
	victim.proc.kill(t)
	c.up.setStatusDelay(0)

	for name, w := range watchers {
		if name == victim.name {
			if err := w.wait(ctx, t); err == nil {
				t.Errorf("%s: the stream from the killed replica ended with OK; want an error", w.name)
			}
			continue
		}
		w.waitOK(ctx, t)
	}
	calls := callsOf(c.up.statusCalls(), rid)
	t.Logf("status calls: %s", describeCalls(calls, t0))
	if len(calls) < 2 {
		t.Fatalf("%d status calls; want the killed replica's and a survivor's", len(calls))
	}
	if calls[0].Code != 0 {
		t.Errorf("the killed replica's status call was answered %d; want it cut off by the kill", calls[0].Code)
	}
	for _, cl := range calls[1:] {
		if cl.Replica == victim.name {
			t.Errorf("the killed replica made a status call at %v", cl.At.Sub(t0))
		}
		// Redis keeps time in milliseconds.
		if cl.At.Before(leaseEnd.Add(-5 * time.Millisecond)) {
			t.Errorf("%s polled at %v, %v before the killed replica's lease expired", cl.Replica, cl.At.Sub(t0), leaseEnd.Sub(cl.At))
		}
	}
	checkLeased(t, calls[1:], t0)
	t.Logf("%s took over %v after the lease expired", calls[1].Replica, calls[1].At.Sub(leaseEnd).Round(time.Millisecond))
	eventually(ctx, t, "the finished request to leave the schedule", func() bool { return !c.scheduled(ctx, t, rid) })
}

// TestPollRateLimitSlowsThePoller: RunComfy answers every status call 429
// with Retry-After: 2 for three seconds. Three watched requests, which the
// interval would poll every 150–300ms each, are polled a handful of times in
// the two seconds after the first 429: a replica that gets a 429 makes no
// status call at all for the Retry-After. Then polling resumes and every
// request succeeds.
func TestPollRateLimitSlowsThePoller(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: pollQueueTime, runTime: pollRunTime, pollInterval: pollInterval, pollOnly: true})
	c.up.throttle(3*time.Second, "2")

	var watchers []*watcher
	var rids []string
	for _, g := range c.gateways() {
		rid := c.submit(ctx, t, g)
		rids = append(rids, rid)
		watchers = append(watchers, watch(ctx, t, "watcher on "+g.name, g, rid, 0))
	}
	for _, w := range watchers {
		w.waitOK(ctx, t)
	}

	all := c.up.statusCalls()
	t1 := all[0].At
	t.Logf("status calls: %s", describeCalls(all, t1))
	if all[0].Code != http.StatusTooManyRequests {
		t.Fatalf("the first status call was answered %d, want 429", all[0].Code)
	}
	checkRetryAfterHonoured(t, all, 2*time.Second)
	window := map[string]int{}
	for _, cl := range all {
		if cl.At.Sub(t1) < 2*time.Second {
			window[cl.Replica]++
		}
	}
	// Unthrottled, the watched requests would be polled every 150–300ms:
	// some twenty calls in those two seconds.
	t.Logf("status calls in the 2s after the first 429, by replica: %v", window)
	for name, n := range window {
		if n > 3 {
			t.Errorf("replica %s made %d status calls in the 2s after the first 429, want at most 3", name, n)
		}
	}
	for _, rid := range rids {
		calls := callsOf(all, rid)
		checkLeased(t, calls, t1)
		if last := calls[len(calls)-1]; last.Code != http.StatusOK {
			t.Errorf("request %s: the last status call was answered %d, want 200 once the 429s stopped", rid, last.Code)
		}
	}
}

// checkRetryAfterHonoured: once any replica got a 429, no replica makes a
// status call (for any request) until retryAfter has passed: the pause is
// shared through Redis. Calls sent already may arrive just after the 429 left
// the proxy; a call arriving later than that means polling went on.
func checkRetryAfterHonoured(t *testing.T, calls []statusCall, retryAfter time.Duration) {
	t.Helper()
	const inFlight, timers = 200 * time.Millisecond, 100 * time.Millisecond
	for _, limited := range calls {
		if limited.Code != http.StatusTooManyRequests {
			continue
		}
		for _, cl := range calls {
			// RunComfy limits the account: the pause holds on every replica.
			if d := cl.At.Sub(limited.Done); d > inFlight && d < retryAfter-timers {
				t.Errorf("replica %s called status of %s %v after a 429 (for %s) with Retry-After %v",
					cl.Replica, cl.RequestID, d.Round(time.Millisecond), limited.RequestID, retryAfter)
			}
		}
	}
}

// TestCallbacksFlowingNoPolls: replicas with the load balancer as
// --public-url get every callback; jobs much shorter than the poll interval
// (even halved, as it is for a watched request) finish by callbacks alone,
// watched on another replica than their submit's, and no status call is ever
// made.
func TestCallbacksFlowingNoPolls(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{
		queueTime: 300 * time.Millisecond, runTime: 300 * time.Millisecond,
		pollInterval: 5 * time.Second,
	})
	gs := c.gateways()
	var watchers []*watcher
	var rids []string
	for i, g := range gs {
		rid := c.submit(ctx, t, g)
		rids = append(rids, rid)
		on := gs[(i+1)%3]
		watchers = append(watchers, watch(ctx, t, "watcher on "+on.name, on, rid, 0))
	}
	for _, q := range c.up.submitted() {
		if !q.Has("webhook") {
			t.Errorf("a replica with --public-url asked for no callback: submit query %v", q)
		}
	}
	for i, w := range watchers {
		evs := w.waitOK(ctx, t)
		t.Logf("%s: %v", w.name, pairs(evs))
		// Finished: out of the schedule, so no poll can come later.
		eventually(ctx, t, "the finished request to leave the schedule", func() bool { return !c.scheduled(ctx, t, rids[i]) })
	}
	if calls := c.up.statusCalls(); len(calls) != 0 {
		t.Errorf("%d status calls with callbacks flowing, want none: %s", len(calls), describeCalls(calls, calls[0].At))
	}
	if len(c.lb.all()) == 0 {
		t.Error("no callback went through the balancer")
	}
}

// TestAttachOverGRPCAndREST: requests submitted to RunComfy by another tool
// (straight to the simulator, with the account's token) are unknown to the
// gateway, yet a replica answers GetStatus and WatchRequest for them over
// gRPC and REST: it reads them upstream, records them, and polls them to
// success (nobody asked RunComfy for a callback of them).
func TestAttachOverGRPCAndREST(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: pollQueueTime, runTime: pollRunTime, pollInterval: pollInterval, pollOnly: true})

	viaWatchGRPC := c.submitDirect(ctx, t)
	viaWatchREST := c.submitDirect(ctx, t)
	viaStatusGRPC := c.submitDirect(ctx, t)
	viaStatusREST := c.submitDirect(ctx, t)
	if n := c.submits.Load(); n != 0 {
		t.Fatalf("%d submits went through the replicas, want none", n)
	}
	for _, rid := range []string{viaWatchGRPC, viaWatchREST, viaStatusGRPC, viaStatusREST} {
		if seq := c.recordSeq(ctx, t, rid); seq != 0 {
			t.Fatalf("request %s submitted elsewhere has a record (seq %d) before any call", rid, seq)
		}
	}

	// Attach by GetStatus: the answer is recorded (seq 1) and the request
	// tracked from then on.
	st, err := c.a.api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: viaStatusGRPC})
	if err != nil {
		t.Fatalf("gRPC GetStatus of a request submitted elsewhere: %v", err)
	}
	if st.GetRequest().GetSeq() != 1 || rank(st.GetRequest().GetStatus()) == 0 || rank(st.GetRequest().GetStatus()) == 3 {
		t.Errorf("gRPC GetStatus of a request submitted elsewhere: %v, want it recorded at seq 1, unfinished", st.GetRequest())
	}
	code, rs := c.restGetStatus(ctx, t, c.b, viaStatusREST)
	if code != http.StatusOK || rs.Seq != 1 || rs.RequestID != viaStatusREST || (rs.Status != "STATUS_QUEUED" && rs.Status != "STATUS_RUNNING") {
		t.Errorf("REST GetStatus of a request submitted elsewhere: %d %+v, want it recorded at seq 1, unfinished", code, rs)
	}
	for _, rid := range []string{viaStatusGRPC, viaStatusREST} {
		if !c.scheduled(ctx, t, rid) {
			t.Errorf("request %s attached by GetStatus is not in the poll schedule", rid)
		}
	}

	// Attach by WatchRequest, and follow the ones attached by GetStatus on
	// another replica, each over the other transport.
	grpcWatch := watch(ctx, t, "gRPC watch on C (attach)", c.c, viaWatchGRPC, 0)
	restWatch := c.restWatch(ctx, t, "REST watch on A (attach)", c.a, viaWatchREST)
	grpcFollow := watch(ctx, t, "gRPC watch on C (attached by REST GetStatus)", c.c, viaStatusREST, 0)
	restFollow := c.restWatch(ctx, t, "REST watch on B (attached by gRPC GetStatus)", c.b, viaStatusGRPC)
	final := map[string]string{}
	for rid, w := range map[string]*watcher{viaWatchGRPC: grpcWatch, viaStatusREST: grpcFollow} {
		evs := w.waitOK(ctx, t)
		t.Logf("%s: %v", w.name, pairs(evs))
		final[rid] = pairs(evs)[len(evs)-1]
	}
	for rid, w := range map[string]*restWatcher{viaWatchREST: restWatch, viaStatusGRPC: restFollow} {
		got := w.waitOK(ctx, t)
		t.Logf("%s: %v", w.name, got)
		final[rid] = got[len(got)-1]
	}

	// Every transport on every replica now answers the success from the
	// record, with the seq the watchers ended at.
	for rid, want := range final {
		for _, g := range c.gateways() {
			st, err := g.api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid})
			if err != nil {
				t.Errorf("gRPC GetStatus of %s on %s: %v", rid, g.name, err)
				continue
			}
			if got := pairs([]*comfygatev1.RequestState{st.GetRequest()})[0]; got != want || len(st.GetRequest().GetOutputUrls()) == 0 {
				t.Errorf("gRPC GetStatus of %s on %s: %s with %d output URLs, want %s with outputs", rid, g.name, got, len(st.GetRequest().GetOutputUrls()), want)
			}
			code, rs := c.restGetStatus(ctx, t, g, rid)
			if code != http.StatusOK || rs.pair() != want || len(rs.OutputURLs) == 0 {
				t.Errorf("REST GetStatus of %s on %s: %d %s with %d output URLs, want %s with outputs", rid, g.name, code, rs.pair(), len(rs.OutputURLs), want)
			}
		}
		eventually(ctx, t, "the finished request to leave the schedule", func() bool { return !c.scheduled(ctx, t, rid) })
	}

	// A request RunComfy does not know is not attached.
	unknown := "00000000-0000-4000-8000-000000000000"
	if _, err := c.a.api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: unknown}); status.Code(err) != codes.NotFound {
		t.Errorf("gRPC GetStatus of a request unknown upstream: %v, want NotFound", err)
	}
	if code, _ := c.restGetStatus(ctx, t, c.b, unknown); code != http.StatusNotFound {
		t.Errorf("REST GetStatus of a request unknown upstream: %d, want 404", code)
	}
	if seq := c.recordSeq(ctx, t, unknown); seq != 0 || c.scheduled(ctx, t, unknown) {
		t.Errorf("a request unknown upstream was recorded (seq %d) or scheduled", seq)
	}
}

// TestPollRateLimitPausesWholeReplica: a 429 with Retry-After pauses all
// polling of the replica that got it, not only the request whose poll got
// it. One replica runs; while it waits out the first 429, a second request
// falls due, and waits too.
func TestPollRateLimitPausesWholeReplica(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: 300 * time.Millisecond, runTime: 300 * time.Millisecond, pollInterval: pollInterval, pollOnly: true})
	var wg sync.WaitGroup
	wg.Go(c.b.proc.stop)
	wg.Go(c.c.proc.stop)
	wg.Wait()
	const retryAfter = 2 * time.Second
	c.up.throttle(time.Second, "2")

	first := c.submit(ctx, t, c.a)
	w1 := watch(ctx, t, "watcher of the first request", c.a, first, 0)
	var t1 time.Time
	c.up.await(ctx, t, "the first 429", func(calls []statusCall) bool {
		if calls = kindOf(calls, "status"); len(calls) > 0 && calls[0].Code == http.StatusTooManyRequests {
			t1 = calls[0].Done
			return true
		}
		return false
	})
	// A second request, due (watched: half an interval on) well within the
	// Retry-After of the first 429.
	second := c.submit(ctx, t, c.a)
	w2 := watch(ctx, t, "watcher of the second request", c.a, second, 0)
	w1.waitOK(ctx, t)
	w2.waitOK(ctx, t)

	all := c.up.statusCalls()
	t.Logf("status calls: %s", describeCalls(all, t1))
	checkRetryAfterHonoured(t, all, retryAfter)
	switch cs := callsOf(all, second); {
	case len(cs) == 0:
		t.Errorf("the second request was never polled")
	case cs[0].At.Sub(t1) < retryAfter-100*time.Millisecond:
		t.Errorf("the second request was polled %v after the 429, want after its Retry-After %v", cs[0].At.Sub(t1), retryAfter)
	}
}

// TestPollSlowerThanLease: a poll that takes longer than its lease (RunComfy
// answers its status, then its result, in 3s each: 6s against a 5s lease)
// must not let a second replica poll the same request meanwhile: one replica
// at a time calls RunComfy about a request. Only the first poll is slow; the
// request then succeeds however the slow poll is dealt with (cut short at
// the lease's end, or its lease extended).
func TestPollSlowerThanLease(t *testing.T) {
	ctx := setup(t)
	c := newCluster(ctx, t, clusterConfig{queueTime: 100 * time.Millisecond, runTime: 100 * time.Millisecond, pollInterval: pollInterval, pollOnly: true})
	c.up.setStatusDelay(3 * time.Second)
	c.up.setResultDelay(3 * time.Second)

	rid := c.submit(ctx, t, c.a)
	w := watch(ctx, t, "watcher on A", c.a, rid, 0)
	c.up.await(ctx, t, "the first status call", func(calls []statusCall) bool { return len(kindOf(calls, "status")) > 0 })
	c.up.setStatusDelay(0)
	c.up.await(ctx, t, "the first result call", func(calls []statusCall) bool { return len(kindOf(calls, "result")) > 0 })
	c.up.setResultDelay(0)
	w.waitOK(ctx, t)
	// Every call ended (a poll cut short or not), then they are compared.
	c.up.await(ctx, t, "every call to end", func(calls []statusCall) bool {
		return !slices.ContainsFunc(calls, func(cl statusCall) bool { return cl.Done.IsZero() })
	})
	calls := callsOf(c.up.readCalls(), rid)
	t.Logf("status and result calls: %s", describeCalls(calls, calls[0].At))
	if n := maxOverlap(calls); n > 1 {
		t.Errorf("up to %d calls about the request in flight at once, want 1 (one poller at a time)", n)
	}
}
