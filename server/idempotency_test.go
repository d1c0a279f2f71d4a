package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state/redisstore"
)

func TestIdempotentSubmit(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	first, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"seed":1}`, IdempotencyKey: "order-1"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"seed":1}`, IdempotencyKey: "order-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := again.GetRequest().GetRequestId(), first.GetRequest().GetRequestId(); got != want {
		t.Errorf("retry answered request %s, want the first one %s", got, want)
	}
	if got := g.sim.Calls("submit"); got != 1 {
		t.Errorf("RunComfy saw %d submits, want 1", got)
	}

	// Over REST, the header; the body is RunComfy's, unchanged.
	post := func(key, body string) (int, string) {
		req, err := http.NewRequest(http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code1, body1 := post("order-2", `{"seed":2}`)
	code2, body2 := post("order-2", `{"seed":2}`)
	if code1 != http.StatusOK || code2 != http.StatusOK || body1 != body2 {
		t.Errorf("REST retry: %d %s / %d %s, want the same answer twice", code1, body1, code2, body2)
	}
	if got := g.sim.Calls("submit"); got != 2 {
		t.Errorf("RunComfy saw %d submits, want 2", got)
	}

	// The same key for another input is refused, over both transports.
	_, err = g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"seed":99}`, IdempotencyKey: "order-1"})
	if got, want := status.Code(err), codes.AlreadyExists; got != want {
		t.Errorf("reused key, other body: %v, want %v", got, want)
	}
	if code, body := post("order-2", `{"seed":3}`); code != http.StatusConflict || !strings.Contains(body, "idempotency key") {
		t.Errorf("REST reused key, other body: %d %s, want 409 naming the key", code, body)
	}
	_, err = g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-2", InputJson: `{"seed":1}`, IdempotencyKey: "order-1"})
	if got, want := status.Code(err), codes.AlreadyExists; got != want {
		t.Errorf("reused key, other deployment: %v, want %v", got, want)
	}
	// A key that is not printable ASCII is bad input.
	_, err = g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, IdempotencyKey: "bad\nkey"})
	if got, want := status.Code(err), codes.InvalidArgument; got != want {
		t.Errorf("bad key: %v, want %v", got, want)
	}
	if got := g.sim.Calls("submit"); got != 2 {
		t.Errorf("RunComfy saw %d submits, want still 2", got)
	}
}

func TestIdempotencyKeysArePerTenant(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	a, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := g.client.Submit(as(ctx, keyB), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if a.GetRequest().GetRequestId() == b.GetRequest().GetRequestId() {
		t.Error("two tenants with the same key got the same request")
	}
	if got := g.sim.Calls("submit"); got != 2 {
		t.Errorf("RunComfy saw %d submits, want 2", got)
	}
}

// TestConcurrentRetriesOnTwoReplicas: two gateways sharing Redis and one
// RunComfy; the same submit with the same key arrives on both at once, many
// times: RunComfy sees one submit and every caller gets its request.
func TestConcurrentRetriesOnTwoReplicas(t *testing.T) {
	srv, err := redistest.Find()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	prefix := redistest.Prefix(t)
	a := redisReplica(t, srv, prefix)
	b := redisReplica(t, srv, prefix, func(o *gatewayOptions) { o.sharedSim, o.sharedSimURL = a.sim, a.simURL })
	// Slow submits widen the window in which retries overlap.
	a.sim.SetFaults(runcomfysim.Faults{Latency: 200 * time.Millisecond})

	ctx := ctxT(t)
	const callers = 20
	ids := make(chan string, callers)
	var wg sync.WaitGroup
	for i := range callers {
		g := a
		if i%2 == 1 {
			g = b
		}
		wg.Go(func() {
			resp, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"seed":7}`, IdempotencyKey: "retry-me"})
			if err != nil {
				t.Errorf("submit: %v", err)
				return
			}
			ids <- resp.GetRequest().GetRequestId()
		})
	}
	wg.Wait()
	close(ids)
	var first string
	for id := range ids {
		if first == "" {
			first = id
		}
		if id != first || id == "" {
			t.Errorf("callers got requests %q and %q, want one", first, id)
		}
	}
	if got := a.sim.Calls("submit"); got != 1 {
		t.Errorf("RunComfy saw %d submits, want 1", got)
	}
}

// redisReplica is a gateway whose state is in the Redis srv, under prefix
// (replicas share it), running until the test ends.
func redisReplica(t *testing.T, srv *redistest.Server, prefix string, opts ...func(*gatewayOptions)) *gateway {
	t.Helper()
	b, err := redisstore.New(srv.Client(t), redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, func(context.Context, []string) error { return nil })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return startGateway(t, append(opts, func(o *gatewayOptions) { o.redis = b })...)
}
