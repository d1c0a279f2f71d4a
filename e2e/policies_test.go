package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// policiesFile is the replicas' deployments file in TestPolicies.
const policiesFile = `
deployments:
  dep-defaults:
    max_queue_duration: 1500ms
  dep-capped:
    max_concurrency: 2
`

// TestPolicies runs three replicas with a deployments file, behind a
// simulator whose jobs wait 2 s in the queue and then run for an hour.
//
// Deadlines: requests held in the queue past max_queue_duration (the
// submit's own, or the deployment's default) and running past
// max_run_duration are each cancelled on RunComfy exactly once, by one of
// the three replicas, and end CANCELLED with the deadline's error type, which
// a watcher on another replica receives as its last event.
//
// Caps: the deployment's cap counts unfinished requests across replicas: a
// submit past it is RESOURCE_EXHAUSTED on any replica, before RunComfy, and
// a cancel through another replica gives the slot back.
func TestPolicies(t *testing.T) {
	ctx := setup(t)
	path := filepath.Join(t.TempDir(), "deployments.yaml")
	if err := os.WriteFile(path, []byte(policiesFile), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(ctx, t, clusterConfig{queueTime: 2 * time.Second, runTime: time.Hour,
		pollInterval: 400 * time.Millisecond, args: []string{"--deployments-file", path}})

	t.Run("deadlines", func(t *testing.T) {
		submit := func(g *gateway, dep string, queue, run time.Duration) string {
			t.Helper()
			req := &comfygatev1.SubmitRequest{DeploymentId: dep, InputJson: `{}`}
			if queue > 0 {
				req.MaxQueueDuration = durationpb.New(queue)
			}
			if run > 0 {
				req.MaxRunDuration = durationpb.New(run)
			}
			resp, err := g.api.Submit(ctx, req)
			if err != nil {
				t.Fatalf("submit on %s: %v", g.name, err)
			}
			return resp.GetRequest().GetRequestId()
		}
		// In deadline order: the schedule is read earliest first, so by
		// the time the last has ended, a second cancel of any other would
		// have been made.
		requests := []struct {
			name, dep, id, kind string
		}{
			{"queue deadline", deployment, submit(c.a, deployment, time.Second, 0), "max_queue_duration_exceeded"},
			{"deployment's queue deadline", "dep-defaults", submit(c.b, "dep-defaults", 0, 0), "max_queue_duration_exceeded"},
			{"run deadline", deployment, submit(c.c, deployment, 0, time.Second), "max_run_duration_exceeded"},
			{"later run deadline", deployment, submit(c.a, deployment, 0, 1500*time.Millisecond), "max_run_duration_exceeded"},
		}
		watchers := make([]*watcher, len(requests))
		for i, r := range requests {
			watchers[i] = watchOn(ctx, t, "watcher on C of the "+r.name, c.c, r.dep, r.id, 0)
		}
		for i, r := range requests {
			if err := watchers[i].wait(ctx, t); err != nil {
				t.Fatalf("%s: stream ended with %v, want OK", r.name, err)
			}
			evs := watchers[i].received()
			checkProgress(t, watchers[i].name, evs)
			last := evs[len(evs)-1]
			if last.GetStatus() != comfygatev1.Status_STATUS_CANCELLED || last.GetError().GetType() != r.kind {
				t.Fatalf("%s ended %v with error %v, want CANCELLED with %s", r.name, last.GetStatus(), last.GetError(), r.kind)
			}
			limit := last.GetMaxQueueDuration().AsDuration()
			from := last.GetCreatedAt().AsTime()
			if r.kind == "max_run_duration_exceeded" {
				limit, from = last.GetMaxRunDuration().AsDuration(), last.GetStartedAt().AsTime()
			}
			if limit == 0 || last.GetFinishedAt().AsTime().Before(from.Add(limit)) {
				t.Fatalf("%s: cancelled at %v, before its deadline (%s after %v)", r.name, last.GetFinishedAt().AsTime(), limit, from)
			}
		}
		for _, r := range requests {
			if got := c.up.cancelsOf(r.id); len(got) != 1 {
				t.Errorf("%s: cancels from %v, want exactly one", r.name, got)
			}
		}
	})

	t.Run("caps", func(t *testing.T) {
		submit := func(g *gateway) (string, error) {
			resp, err := g.api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-capped", InputJson: `{}`})
			return resp.GetRequest().GetRequestId(), err
		}
		first, err := submit(c.a)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := submit(c.b); err != nil {
			t.Fatal(err)
		}
		before := c.submits.Load()
		for _, g := range []*gateway{c.a, c.b} {
			if _, err := submit(g); status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("third submit on %s = %v, want RESOURCE_EXHAUSTED", g.name, err)
			}
		}
		if n := c.submits.Load() - before; n != 0 {
			t.Fatalf("%d submits past the cap reached RunComfy", n)
		}
		if _, err := c.b.api.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: "dep-capped", RequestId: first}); err != nil {
			t.Fatal(err)
		}
		if _, err := submit(c.a); err != nil {
			t.Fatalf("submit on A after a cancel on B: %v", err)
		}
		if _, err := submit(c.b); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("submit past the cap again = %v, want RESOURCE_EXHAUSTED", err)
		}
	})
}
