package e2e

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// limitRate and limitBurst are the per-tenant limits the replicas of these
// tests run with: a burst of 3, then one call a second.
const (
	limitRate  = 1
	limitBurst = 3
	// limitCalls is how many calls a test makes at once: twice the burst, so
	// that replicas keeping a bucket each would accept them all.
	limitCalls = 2 * limitBurst
)

// limitOutcome is what a burst of calls made of the limit: how many passed,
// how many were refused as over it, and how long the burst took.
type limitOutcome struct {
	accepted, refused int
	elapsed           time.Duration
}

// burstCalls makes limitCalls calls at once, call i on replica i%2 (A, B,
// A, ...), and sorts the answers: OK, or RESOURCE_EXHAUSTED carrying a
// RetryInfo and naming limit. Anything else fails the test.
func burstCalls(ctx context.Context, t *testing.T, c *cluster, limit string, call func(ctx context.Context, g *gateway, i int) error) limitOutcome {
	t.Helper()
	replicas := []*gateway{c.a, c.b}
	errs := make([]error, limitCalls)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range limitCalls {
		g := replicas[i%len(replicas)]
		wg.Go(func() { errs[i] = call(ctx, g, i) })
	}
	wg.Wait()
	out := limitOutcome{elapsed: time.Since(start)}
	for i, err := range errs {
		st := status.Convert(err)
		switch st.Code() {
		case codes.OK:
			out.accepted++
		case codes.ResourceExhausted:
			out.refused++
			if !strings.Contains(st.Message(), limit+" rate limit reached") {
				t.Errorf("call %d on %s: message %q does not name the %s limit", i+1, replicas[i%len(replicas)].name, st.Message(), limit)
			}
			if retryDelay(st) <= 0 {
				t.Errorf("call %d on %s: no positive RetryInfo in %v", i+1, replicas[i%len(replicas)].name, st.Details())
			}
		default:
			t.Errorf("call %d on %s: %v", i+1, replicas[i%len(replicas)].name, err)
		}
	}
	return out
}

// check asserts the burst was accepted once across the replicas. A token
// comes back each second; the calls take milliseconds, but on a machine so
// loaded that they took longer, the tokens that came back meanwhile may be
// spent too, and only those.
func (o limitOutcome) check(t *testing.T, what string) {
	t.Helper()
	extra := int(o.elapsed.Seconds() * limitRate)
	if o.accepted < limitBurst || o.accepted > limitBurst+extra || o.accepted+o.refused != limitCalls {
		t.Errorf("%s: %d accepted and %d refused of %d in %v, want %d accepted (the burst, once for all replicas) and the rest refused",
			what, o.accepted, o.refused, limitCalls, o.elapsed.Round(time.Millisecond), limitBurst)
	}
}

func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			return r.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// limitedCluster is a cluster whose replicas all run with args.
func limitedCluster(ctx context.Context, t *testing.T, args ...string) *cluster {
	t.Helper()
	return newCluster(ctx, t, clusterConfig{queueTime: queueTime, runTime: runTime, args: args})
}

// TestSubmitRateIsClusterWide: two replicas sharing Redis, each run with
// --submit-rate 1 --submit-burst 3, together accept 3 of 6 submits made at
// once, not 6; the others are RESOURCE_EXHAUSTED with a RetryInfo, and
// RunComfy sees only the accepted ones.
func TestSubmitRateIsClusterWide(t *testing.T) {
	ctx := setup(t)
	c := limitedCluster(ctx, t, "--submit-rate", "1", "--submit-burst", "3")
	out := burstCalls(ctx, t, c, "submit", func(ctx context.Context, g *gateway, _ int) error {
		_, err := g.api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: `{"prompt": "limited"}`})
		return err
	})
	out.check(t, "submits")
	if got, want := c.submits.Load(), int64(out.accepted); got != want {
		t.Errorf("RunComfy saw %d submits, want %d (the accepted ones)", got, want)
	}
}

// TestReadRateIsClusterWide: likewise for reads (--read-rate 1 --read-burst
// 3): GetStatus, GetResult and watch opens on two replicas spend one bucket.
func TestReadRateIsClusterWide(t *testing.T) {
	ctx := setup(t)
	c := limitedCluster(ctx, t, "--read-rate", "1", "--read-burst", "3")
	rid := c.submit(ctx, t, c.a) // a submit is not a read
	out := burstCalls(ctx, t, c, "read", func(ctx context.Context, g *gateway, i int) error {
		switch i % 3 {
		case 0:
			_, err := g.api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid})
			return err
		case 1:
			_, err := g.api.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: deployment, RequestId: rid})
			return err
		default:
			ctx, cancel := context.WithCancel(ctx)
			defer cancel() // open is all this read needs
			stream, err := g.api.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: deployment, RequestId: rid})
			if err != nil {
				return err
			}
			if _, err := stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			return nil
		}
	})
	out.check(t, "reads")
}
