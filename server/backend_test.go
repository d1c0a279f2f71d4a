package server_test

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
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
