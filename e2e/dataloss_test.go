package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// restartRedisEmpty restarts the cluster's private Redis with nothing in it
// and waits until it answers again.
func restartRedisEmpty(ctx context.Context, t *testing.T, c *cluster) {
	t.Helper()
	if err := c.redis.RestartEmpty(200 * time.Millisecond); err != nil {
		t.Fatalf("restart Redis empty: %v", err)
	}
	eventually(ctx, t, "Redis to answer again", func() bool {
		conn, err := net.DialTimeout("tcp", c.redis.Addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// checkEndedInNewEpoch: the watcher ended OK, with the success as its last
// event, in another epoch than its first event's.
func checkEndedInNewEpoch(ctx context.Context, t *testing.T, w *watcher) {
	t.Helper()
	if err := w.wait(ctx, t); err != nil {
		t.Fatalf("%s ended with %v, want OK after the success; got %s", w.name, err, pairs(w.received()))
	}
	evs := w.received()
	first, last := evs[0], evs[len(evs)-1]
	if last.GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED || len(last.GetOutputUrls()) == 0 {
		t.Errorf("%s ended with %s, want the success with its outputs", w.name, pairs(evs))
	}
	if last.GetEpoch() == first.GetEpoch() {
		t.Errorf("%s: the last event's epoch %d is the first's; want the record made again in a new epoch", w.name, last.GetEpoch())
	}
}

// TestRedisRestartedEmptyThenCallback: Redis loses everything while watchers
// on A and B follow a running request, and then the success callback
// arrives. The record comes back in a new epoch whose first seq repeats one
// the watchers have seen: made again by the callback (the success at seq 1),
// or first put back as the replicas remembered it (running at seq 1, then
// the success at seq 2), whichever comes first; both watchers get the new
// epoch's current state as its first event, then its later ones in order,
// and end OK with the success.
func TestRedisRestartedEmptyThenCallback(t *testing.T) {
	ctx := setup(t)
	// Polls stay out of the way (the default interval): the callback, not a
	// rebuild from RunComfy, brings the record back.
	c := newCluster(ctx, t, clusterConfig{redis: startPrivateRedis(t), queueTime: queueTime, runTime: runTime})

	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	wa := watch(ctx, t, "watcher on A", c.a, rid, 0)
	wb := watch(ctx, t, "watcher on B", c.b, rid, 0)
	c.lb.step(ctx, t) // in_queue
	c.lb.step(ctx, t) // in_progress
	wa.waitSeq(ctx, t, 2)
	wb.waitSeq(ctx, t, 2)
	c.lb.waitHeld(ctx, t) // the success callback: the job has finished

	restartRedisEmpty(ctx, t, c)
	c.lb.open()
	checkEndedInNewEpoch(ctx, t, wa)
	checkEndedInNewEpoch(ctx, t, wb)
	for _, w := range []*watcher{wa, wb} {
		evs := w.received()
		last := evs[len(evs)-1]
		var seqs []int64
		for _, ev := range evs {
			if ev.GetEpoch() == last.GetEpoch() {
				seqs = append(seqs, ev.GetSeq())
			}
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Errorf("%s: the new epoch's seqs are %v, want them rising", w.name, seqs)
				break
			}
		}
		if last.GetSeq() > 2 {
			t.Errorf("%s: the success came at seq %d of its epoch, want 1 (made again by the callback) or 2 (after the restored state)", w.name, last.GetSeq())
		}
	}
}

// TestRedisRestartedEmptyNoCallback: Redis loses everything while watchers on
// A and B follow a request that has finished on RunComfy, and its success
// callback never comes. Nothing would ever poll the lost request; the
// replicas whose watchers follow it notice the record is gone and make it
// again from RunComfy, and both watchers end with the success within a poll
// interval.
func TestRedisRestartedEmptyNoCallback(t *testing.T) {
	ctx := setup(t)
	const poll = time.Second
	c := newCluster(ctx, t, clusterConfig{redis: startPrivateRedis(t), queueTime: queueTime, runTime: runTime,
		args: []string{"--poll-interval", poll.String()}})

	c.lb.hold()
	rid := c.submit(ctx, t, c.a)
	wa := watch(ctx, t, "watcher on A", c.a, rid, 0)
	wb := watch(ctx, t, "watcher on B", c.b, rid, 0)
	c.lb.step(ctx, t) // in_queue
	c.lb.step(ctx, t) // in_progress
	wa.waitSeq(ctx, t, 2)
	wb.waitSeq(ctx, t, 2)
	c.lb.waitHeld(ctx, t) // the success callback, held for good: the job has finished

	restartRedisEmpty(ctx, t, c)
	back := time.Now()
	checkEndedInNewEpoch(ctx, t, wa)
	checkEndedInNewEpoch(ctx, t, wb)
	// The replicas check their watched requests every half interval: the
	// success is there within one interval of Redis answering again. The
	// margin covers the replicas' Redis clients reconnecting.
	if took := time.Since(back); took > poll+2*time.Second {
		t.Errorf("the watchers ended %v after Redis came back, want within the poll interval (%v) and a reconnect", took, poll)
	}
	// Made again from RunComfy, finished (seq 1), or first put back as a
	// replica remembered it, then polled (seq 2), whichever came first.
	if got := c.recordSeq(ctx, t, rid); got != 1 && got != 2 {
		t.Errorf("the record in Redis is at seq %d, want 1 (made again, finished) or 2 (put back, then finished)", got)
	}
}
