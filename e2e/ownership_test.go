package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state/redisstore"
)

// The tenants of TestOwnershipSurvivesDataLoss: A and B may not attach (read
// requests the gateway has no record of); C may.
const (
	ownerKeyA = "ownership-test-key-a-0123456789abcdef"
	ownerKeyB = "ownership-test-key-b-0123456789abcdef"
	ownerKeyC = "ownership-test-key-c-0123456789abcdef"
)

// TestOwnershipSurvivesDataLoss: tenant B's request loses its record (Redis
// evicted it, or came back empty). On the replica that submitted it, which
// remembers it, the first read puts it back as B's: B reads it, A and C
// (which may attach) get NotFound. On a replica that remembers nothing (the
// gateway restarted), nobody may read, watch or cancel it: tenants A and B
// get NotFound for each, and no cancel reaches RunComfy. B's next callback,
// whose URL names B (authenticated), creates the record again with B as its
// owner, even after tenant C, which may attach, attached it meanwhile: B
// reads it, A still cannot, and neither can C (the request is owned again,
// by proof).
func TestOwnershipSurvivesDataLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	// First, so that its cleanup (deleting the test's keys) runs last, once
	// the gateway has stopped.
	prefix := redistest.Prefix(t)
	rdb := sharedRedis.Client(t)

	// RunComfy is the simulator, in this process and moved by hand, so the test
	// says when a callback goes out and counts the cancels that reach it. It
	// calls the gateway back at the public URL, whose host resolves to the
	// gateway's HTTP listener once that is up.
	const publicURL = "http://comfygate.test"
	var gatewayHTTP atomic.Pointer[string]
	callbacks := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		addr := gatewayHTTP.Load()
		if addr == nil {
			return nil, errors.New("the gateway is not up yet")
		}
		var d net.Dialer
		return d.DialContext(ctx, network, *addr)
	}}
	t.Cleanup(callbacks.CloseIdleConnections)
	sim := runcomfysim.New(runcomfysim.Options{Token: simToken, Manual: true, HTTPClient: &http.Client{Transport: callbacks}})
	t.Cleanup(sim.Close)
	simSrv := httptest.NewServer(sim.Handler())
	t.Cleanup(simSrv.Close)

	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("a "+ownerKeyA+"\nb "+ownerKeyB+"\nc "+ownerKeyC+" attach\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// start runs the gateway, the callbacks' target, and returns its API.
	start := func() (*gateway, comfygatev1.GatewayServiceClient) {
		g := launchGateway(ctx, t, gatewayBin, []string{
			"--runcomfy-url", simSrv.URL, "--api-keys-file", keys,
			"--redis-url", sharedRedis.URL, "--redis-prefix", prefix,
			"--public-url", publicURL,
		}, "RUNCOMFY_API_TOKEN="+simToken, "COMFYGATE_WEBHOOK_SECRET="+webhookSecret)
		addr := g.httpAddr
		gatewayHTTP.Store(&addr)
		conn, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return g, comfygatev1.NewGatewayServiceClient(conn)
	}
	g, api := start()
	as := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	// B submits; its callback URL names B.
	sub, err := api.Submit(as(ownerKeyB), &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: `{"prompt":"a cat"}`})
	if err != nil {
		t.Fatalf("B's submit: %v", err)
	}
	rid := sub.GetRequest().GetRequestId()
	if last, ok := sim.LastSubmit(); !ok || !strings.HasPrefix(last.Webhook, publicURL+"/webhooks/runcomfy/"+deployment+"/t/b/") {
		t.Fatalf("B's submit asked for callbacks at %q, want a URL naming tenant b", last.Webhook)
	}
	// The in_queue callback has been answered before the record goes, so
	// nothing but the test's next step can bring it back.
	eventually(ctx, t, "the in_queue callback to be delivered", func() bool { return sim.CallbackStats().Delivered == 1 })
	if got := recordOwner(ctx, t, rdb, prefix, rid); got != "b" {
		t.Fatalf("the record's owner = %q, want b", got)
	}

	lose := func() {
		t.Helper()
		if n, err := rdb.Del(ctx, redisstore.RecordKey(prefix, rid)).Result(); err != nil || n != 1 {
			t.Fatalf("deleting the record of %s: %d keys, %v", rid, n, err)
		}
	}

	// The record is lost. The gateway remembers B submitted it: A's read
	// puts it back, as B's, and A may not see it; nor may C, though it may
	// attach, since it has an owner by proof; B reads it.
	lose()
	for _, who := range []struct{ name, key string }{{"A", ownerKeyA}, {"C (attach)", ownerKeyC}} {
		for call, err := range callsOn(as(who.key), api, rid) {
			if status.Code(err) != codes.NotFound {
				t.Errorf("%s's %s of the lost request the gateway remembers: %v, want NotFound", who.name, call, err)
			}
		}
	}
	if got := recordOwner(ctx, t, rdb, prefix, rid); got != "b" {
		t.Errorf("the lost record was put back with owner %q, want b", got)
	}
	if st, err := api.GetStatus(as(ownerKeyB), &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid}); err != nil || st.GetRequest().GetStatus() != comfygatev1.Status_STATUS_QUEUED {
		t.Errorf("B's GetStatus of its request put back: %v, %v; want it queued", st, err)
	}
	if n := sim.Calls(runcomfysim.EndpointCancel); n != 0 {
		t.Errorf("%d cancels reached RunComfy, want none", n)
	}

	// A gateway that remembers nothing of it (this one, restarted), and the
	// record lost again.
	g.proc.stop()
	_, api = start()
	lose()

	// Nobody without the attach permission may take it over: A (and B
	// too, until its ownership is proven again) gets NotFound for every
	// call, and nothing is cancelled upstream.
	for _, who := range []struct{ name, key string }{{"A", ownerKeyA}, {"B", ownerKeyB}} {
		for call, err := range callsOn(as(who.key), api, rid) {
			if status.Code(err) != codes.NotFound {
				t.Errorf("%s's %s of the lost request: %v, want NotFound", who.name, call, err)
			}
		}
	}
	if n := sim.Calls(runcomfysim.EndpointCancel); n != 0 {
		t.Errorf("%d cancels reached RunComfy, want none", n)
	}
	if got := recordOwner(ctx, t, rdb, prefix, rid); got != "" {
		t.Errorf("the lost record came back with owner %q before any callback", got)
	}

	// C may attach: it reads the lost request, which becomes C's, on trust
	// only.
	if _, err := api.GetStatus(as(ownerKeyC), &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid}); err != nil {
		t.Fatalf("C's GetStatus of the lost request (C may attach): %v", err)
	}
	if got := recordOwner(ctx, t, rdb, prefix, rid); got != "c" {
		t.Fatalf("after C attached it the record's owner = %q, want c", got)
	}

	// B's next callback restores it, with B as its owner: its URL proves
	// what C's attach only claimed.
	if err := sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "the in_progress callback to be delivered", func() bool { return sim.CallbackStats().Delivered == 2 })
	if st := sim.CallbackStats(); st.Attempts != 2 || st.Failed != 0 {
		t.Errorf("callbacks: %+v, want two attempts, both delivered", st)
	}
	if got := recordOwner(ctx, t, rdb, prefix, rid); got != "b" {
		t.Fatalf("after B's callback the record's owner = %q, want b", got)
	}
	st, err := api.GetStatus(as(ownerKeyB), &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid})
	if err != nil {
		t.Fatalf("B's GetStatus after its callback: %v", err)
	}
	if got := st.GetRequest().GetStatus(); got != comfygatev1.Status_STATUS_RUNNING {
		t.Errorf("B's GetStatus after its callback: %v, want running", got)
	}
	wctx, stopWatch := context.WithCancel(as(ownerKeyB))
	w, err := api.WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: deployment, RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := w.Recv(); err != nil || ev.GetRequest().GetStatus() != comfygatev1.Status_STATUS_RUNNING {
		t.Errorf("B's watch after its callback: %v, %v; want the running state", ev, err)
	}
	stopWatch()

	// Nobody else may see it, a tenant that may attach included: the
	// request has an owner again.
	for _, who := range []struct{ name, key string }{{"A", ownerKeyA}, {"C (attach)", ownerKeyC}} {
		for call, err := range callsOn(as(who.key), api, rid) {
			if status.Code(err) != codes.NotFound {
				t.Errorf("%s's %s of B's restored request: %v, want NotFound", who.name, call, err)
			}
		}
	}
	if n := sim.Calls(runcomfysim.EndpointCancel); n != 0 {
		t.Errorf("%d cancels reached RunComfy, want none", n)
	}
	if got := recordOwner(ctx, t, rdb, prefix, rid); got != "b" {
		t.Errorf("after the others' calls the record's owner = %q, want b", got)
	}
	if state, _ := sim.JobState(rid); state != "in_progress" {
		t.Errorf("the job is %s upstream, want in_progress", state)
	}
}

// callsOn makes every call that reads or changes request rid, with ctx's
// credentials, and returns each one's error by name. A watch's error is the
// one its stream ends with (the first message, when it sends any, is
// refused as an error too).
func callsOn(ctx context.Context, api comfygatev1.GatewayServiceClient, rid string) map[string]error {
	errs := map[string]error{}
	_, errs["GetStatus"] = api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid})
	_, errs["GetResult"] = api.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: deployment, RequestId: rid})
	_, errs["Cancel"] = api.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: deployment, RequestId: rid})
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := api.WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: deployment, RequestId: rid})
	if err == nil {
		var ev *comfygatev1.WatchRequestResponse
		if ev, err = w.Recv(); err == nil {
			err = errors.New("the watch sent " + ev.GetRequest().GetStatus().String())
		}
	}
	errs["WatchRequest"] = err
	return errs
}

// recordOwner reads the owner of rid's record straight from Redis (the key
// layout of state/redisstore): "" when the record has none, or is gone.
func recordOwner(ctx context.Context, t *testing.T, rdb *redis.Client, prefix, rid string) string {
	t.Helper()
	data, err := rdb.HGet(ctx, redisstore.RecordKey(prefix, rid), "data").Result()
	if errors.Is(err, redis.Nil) {
		return ""
	}
	if err != nil {
		t.Fatalf("read the record of %s from Redis: %v", rid, err)
	}
	var rec struct {
		Owner string `json:"owner"`
	}
	if err := json.Unmarshal([]byte(data), &rec); err != nil {
		t.Fatalf("the record of %s in Redis: %v", rid, err)
	}
	return rec.Owner
}
