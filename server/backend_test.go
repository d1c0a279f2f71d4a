package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// downRedis is a Redis backend whose server does not answer (nothing listens
// on port 1), as during an outage.
func downRedis(t *testing.T) *redisstore.Backend {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	b, err := redisstore.New(rdb, redisstore.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBackendDownRefusesSubmitBeforeUpstream: with the state backend down, a
// Submit fails with UNAVAILABLE and RunComfy is never called (no paid job without
// a record), /readyz fails, and a callback gets 503 so RunComfy retries it.
func TestBackendDownRefusesSubmitBeforeUpstream(t *testing.T) {
	down := downRedis(t)
	g := startGateway(t, withCallbacks, func(o *gatewayOptions) {
		o.store = func(state.Store) state.Store { return down }
		o.backend = down
	})
	ctx := ctxT(t)
	_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if got, want := status.Code(err), codes.Unavailable; got != want {
		t.Fatalf("Submit code = %v (%v), want %v", got, err, want)
	}
	if got := g.sim.Calls("submit"); got != 0 {
		t.Errorf("RunComfy saw %d submits, want 0", got)
	}
	code, body := g.rest(t, http.MethodPost, "/v1/deployments/dep-1/requests", []byte(`{}`))
	if code != http.StatusServiceUnavailable {
		t.Errorf("REST submit: HTTP %d, want 503: %v", code, body)
	}

	resp, err := http.Get(g.httpBase + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.StatusCode, http.StatusServiceUnavailable; got != want {
		t.Errorf("/readyz = %d, want %d", got, want)
	}

	cb, err := http.Post(g.callbackURL("dep-1"), "application/json",
		strings.NewReader(`{"request_id":"r-1","status":"in_progress"}`))
	if err != nil {
		t.Fatal(err)
	}
	cb.Body.Close()
	if got, want := cb.StatusCode, http.StatusServiceUnavailable; got != want {
		t.Errorf("callback = %d, want %d", got, want)
	}
}

// clusterPinger is a backend whose idempotency claims may or may not prove
// that a record can be written (on a Redis Cluster they do not), and whose
// Ping fails while down is set.
type clusterPinger struct {
	claimProves bool
	down        atomic.Bool
	pings       atomic.Int64
}

func (p *clusterPinger) Ping(context.Context) error {
	p.pings.Add(1)
	if p.down.Load() {
		return fmt.Errorf("a master is down: %w", state.ErrUnavailable)
	}
	return nil
}

func (p *clusterPinger) ClaimProvesWrites() bool { return p.claimProves }

// TestKeyedSubmitPingsWhereClaimsProveNothing: a submit with an
// Idempotency-Key skips the ping only where its claim proves that a record
// can be written (one server). On a cluster it pings too: with a master
// down it is refused before RunComfy, and its key is free again, so the
// retry once the master is back starts the job.
func TestKeyedSubmitPingsWhereClaimsProveNothing(t *testing.T) {
	for _, proves := range []bool{true, false} {
		t.Run(fmt.Sprintf("claim proves writes %v", proves), func(t *testing.T) {
			p := &clusterPinger{claimProves: proves}
			p.down.Store(true)
			g := startGateway(t, func(o *gatewayOptions) { o.backend = p })
			ctx := ctxT(t)
			req := &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, IdempotencyKey: "order-1"}
			_, err := g.client.Submit(ctx, req)
			if proves {
				if err != nil || p.pings.Load() != 0 || g.sim.Calls("submit") != 1 {
					t.Fatalf("Submit = %v, %d pings, %d submits upstream; want it accepted without a ping", err, p.pings.Load(), g.sim.Calls("submit"))
				}
				return
			}
			if status.Code(err) != codes.Unavailable || g.sim.Calls("submit") != 0 {
				t.Fatalf("Submit with a master down = %v, %d submits upstream; want UNAVAILABLE and none", err, g.sim.Calls("submit"))
			}
			p.down.Store(false)
			if _, err := g.client.Submit(ctx, req); err != nil || g.sim.Calls("submit") != 1 {
				t.Fatalf("the retry with the same key = %v, %d submits upstream; want it started once", err, g.sim.Calls("submit"))
			}
		})
	}
}
