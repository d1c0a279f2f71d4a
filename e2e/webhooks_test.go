package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/internal/webhooktest"
	"github.com/comfygate/comfygate/state/redisstore"
)

// hookAttempt is one attempt a hookReceiver got.
type hookAttempt struct {
	path, id  string
	at        time.Time
	answered  int // the status answered; 0 when the sender went away first
	requestID string
	typ       string
	seq       int64
}

// hookReceiver is the tenant's service: it verifies every delivery with each
// of secrets, and records it. Paths under /hang wait, without answering,
// until release.
type hookReceiver struct {
	t       *testing.T
	secrets []string
	srv     *httptest.Server
	release chan struct{}
	mu      sync.Mutex
	got     []hookAttempt
	changed chan struct{}
}

func newHookReceiver(t *testing.T, secrets []string) *hookReceiver {
	r := &hookReceiver{t: t, secrets: secrets, release: make(chan struct{}), changed: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *hookReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	for _, s := range r.secrets {
		if err := webhooktest.Verify(s, req.Header, body, time.Now()); err != nil {
			r.t.Errorf("delivery %s: %v", req.Header.Get("webhook-id"), err)
		}
	}
	var ev struct {
		Type string `json:"type"`
		Data struct {
			RequestID string `json:"request_id"`
			Seq       string `json:"seq"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		r.t.Errorf("delivery body %q: %v", body, err)
	}
	a := hookAttempt{path: req.URL.Path, id: req.Header.Get("webhook-id"), at: time.Now(), requestID: ev.Data.RequestID, typ: ev.Type}
	a.seq, _ = strconv.ParseInt(ev.Data.Seq, 10, 64)
	if strings.HasPrefix(req.URL.Path, "/hang") {
		r.record(a) // the attempt arrived
		select {
		case <-r.release:
		case <-req.Context().Done():
			return
		}
	}
	a.answered = http.StatusOK
	r.record(a)
}

func (r *hookReceiver) record(a hookAttempt) {
	r.mu.Lock()
	r.got = append(r.got, a)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// until waits until done holds of the attempts so far, and returns them.
func (r *hookReceiver) until(ctx context.Context, t *testing.T, what string, done func([]hookAttempt) bool) []hookAttempt {
	t.Helper()
	for {
		r.mu.Lock()
		got := append([]hookAttempt(nil), r.got...)
		r.mu.Unlock()
		if done(got) {
			return got
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %d attempts so far", what, len(got))
		}
	}
}

// webhookCluster is a cluster whose replicas send the local tenant's
// webhooks (signed with secrets, two of them: a rotation) to loopback
// receivers.
func webhookCluster(ctx context.Context, t *testing.T, timeout time.Duration) (*cluster, []string) {
	t.Helper()
	return webhookClusterOn(ctx, t, timeout, nil)
}

// webhookClusterOn is webhookCluster on the Redis server r (nil: the
// package's shared one).
func webhookClusterOn(ctx context.Context, t *testing.T, timeout time.Duration, r *redistest.Server) (*cluster, []string) {
	t.Helper()
	var secrets []string
	for range 2 {
		s, err := hooks.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, s.String())
	}
	file := filepath.Join(t.TempDir(), "tenants.yaml")
	content := fmt.Sprintf("tenants:\n  local:\n    webhooks:\n      secrets: [%q, %q]\n", secrets[0], secrets[1])
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(ctx, t, clusterConfig{redis: r, queueTime: 100 * time.Millisecond, runTime: 100 * time.Millisecond, args: []string{
		"--tenants-file", file, "--webhook-allow-private",
		"--webhook-timeout", timeout.String(), "--webhook-retry-min", "100ms", "--webhook-retry-max", "500ms",
	}})
	return c, secrets
}

// submitHooked submits through g with a webhook to url for every event,
// and returns the request as the submit recorded it.
func submitHooked(ctx context.Context, t *testing.T, g *gateway, url string) *comfygatev1.RequestState {
	t.Helper()
	resp, err := g.api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: `{"overrides": {}}`,
		Webhook: &comfygatev1.Webhook{Url: url, Events: []comfygatev1.WebhookEvent{
			comfygatev1.WebhookEvent_WEBHOOK_EVENT_QUEUED, comfygatev1.WebhookEvent_WEBHOOK_EVENT_RUNNING,
			comfygatev1.WebhookEvent_WEBHOOK_EVENT_OUTPUT, comfygatev1.WebhookEvent_WEBHOOK_EVENT_TERMINAL,
		}}})
	if err != nil {
		t.Fatalf("submit on %s: %v", g.name, err)
	}
	return resp.GetRequest()
}

// counterOn reads the counter series (name and labels, as /metrics writes
// them) from g's /metrics; 0 when it is absent.
func counterOn(ctx context.Context, t *testing.T, c *cluster, g *gateway, series string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.httpAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.httpc.Do(req)
	if err != nil {
		t.Fatalf("metrics of %s: %v", g.name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return 0
}

// TestWebhooksDeliveredOnceAcrossReplicas: requests submitted on all three
// replicas, their callbacks recorded by any of them: every event reaches the
// receiver, signed with both secrets of a rotation, once (each by one
// replica: the replicas' delivered counts add up to the events), and in seq
// order per request.
func TestWebhooksDeliveredOnceAcrossReplicas(t *testing.T) {
	ctx := setup(t)
	c, secrets := webhookCluster(ctx, t, 2*time.Second)
	rcv := newHookReceiver(t, secrets)
	const perReplica = 4
	var rids []string
	// The state each request was in when its submit recorded the webhook:
	// RunComfy's callbacks can record a request, and move it on, before
	// the submit's answer comes, and the webhook's first event is then of
	// the state it finds (state.EventFor).
	attachedAt := map[string]string{}
	for _, g := range c.gateways() {
		for range perReplica {
			st := submitHooked(ctx, t, g, rcv.srv.URL+"/ok")
			rids = append(rids, st.GetRequestId())
			attachedAt[st.GetRequestId()] = "request." + strings.ToLower(strings.TrimPrefix(st.GetStatus().String(), "STATUS_"))
		}
	}
	got := rcv.until(ctx, t, "every request's terminal event", func(got []hookAttempt) bool {
		done := map[string]bool{}
		for _, a := range got {
			if a.typ == "request.succeeded" {
				done[a.requestID] = true
			}
		}
		return len(done) == len(rids)
	})
	seen := map[string]bool{}
	lastSeq := map[string]int64{}
	for _, a := range got {
		if seen[a.id] {
			t.Errorf("event %s (%s of %s) delivered twice", a.id, a.typ, a.requestID)
		}
		seen[a.id] = true
		if a.seq <= lastSeq[a.requestID] {
			t.Errorf("request %s: event at seq %d after seq %d", a.requestID, a.seq, lastSeq[a.requestID])
		}
		lastSeq[a.requestID] = a.seq
	}
	for _, rid := range rids {
		var types []string
		for _, a := range got {
			if a.requestID == rid {
				types = append(types, a.typ)
			}
		}
		if len(types) < 1 || types[0] != attachedAt[rid] || types[len(types)-1] != "request.succeeded" {
			t.Errorf("request %s: events %v, want %s (its state when the submit recorded the webhook) first and succeeded last", rid, types, attachedAt[rid])
		}
	}
	// Each delivery counted once, by the replica that made it.
	var total int
	eventually(ctx, t, "the replicas to count every delivery", func() bool {
		total = 0
		for _, g := range c.gateways() {
			total += counterOn(ctx, t, c, g, `comfygate_webhook_deliveries_total{outcome="delivered"}`)
		}
		return total >= len(seen)
	})
	if total != len(seen) {
		t.Errorf("the replicas count %d deliveries, the receiver got %d events", total, len(seen))
	}
}

// TestWebhookOfKilledReplicaDeliveredByAnother: the replica delivering an
// event is killed mid-attempt (the receiver holds the attempt open); another
// replica takes the delivery over once the dead one's job has been idle for
// its bound, and delivers the same event, with the same webhook-id.
func TestWebhookOfKilledReplicaDeliveredByAnother(t *testing.T) {
	ctx := setup(t)
	const timeout = time.Second // the lease, and the idle bound: 3×timeout+1s
	c, secrets := webhookCluster(ctx, t, timeout)
	rcv := newHookReceiver(t, secrets)
	rid := submitHooked(ctx, t, c.a, rcv.srv.URL+"/hang").GetRequestId()
	first := rcv.until(ctx, t, "the first attempt", func(got []hookAttempt) bool { return len(got) > 0 })[0]

	owner, err := c.rdb.Get(ctx, redisstore.OutboxLeaseKey(c.prefix, rid)).Result()
	if errors.Is(err, redis.Nil) {
		t.Fatal("no replica holds the delivery lease of a delivery in flight")
	} else if err != nil {
		t.Fatal(err)
	}
	pid, ok := leasePID(owner)
	victim := c.byPID(pid)
	if !ok || victim == nil {
		t.Fatalf("the delivery lease is held by %q, not a replica", owner)
	}
	victim.proc.kill(t)
	killedAt := time.Now()
	close(rcv.release) // from now on the receiver answers
	t.Logf("killed %s mid-attempt of %s", victim.name, first.id)

	got := rcv.until(ctx, t, "the event delivered by another replica", func(got []hookAttempt) bool {
		for _, a := range got {
			if a.id == first.id && a.answered == http.StatusOK && a.at.After(killedAt) {
				return true
			}
		}
		return false
	})
	for _, a := range got {
		if a.requestID != rid {
			t.Errorf("an attempt for request %s", a.requestID)
		}
	}
	// The request's later events follow, in order, from the survivors.
	got = rcv.until(ctx, t, "the terminal event", func(got []hookAttempt) bool {
		for _, a := range got {
			if a.typ == "request.succeeded" && a.answered == http.StatusOK {
				return true
			}
		}
		return false
	})
	var lastSeq int64
	for _, a := range got {
		if a.answered != http.StatusOK {
			continue
		}
		if a.seq < lastSeq {
			t.Errorf("event at seq %d delivered after seq %d", a.seq, lastSeq)
		}
		lastSeq = a.seq
	}
}

// TestWebhookOfStoppedReplicaDeliveredByAnother: the replica delivering an
// event is stopped (SIGTERM) mid-attempt; it hands the job back as it stops,
// and another replica delivers the same event at once, not once the job has
// been idle for its bound (here over three minutes).
func TestWebhookOfStoppedReplicaDeliveredByAnother(t *testing.T) {
	ctx := setup(t)
	c, secrets := webhookCluster(ctx, t, time.Minute) // idle bound 3×timeout+1s
	rcv := newHookReceiver(t, secrets)
	// The queued event only: a later one would queue a job of its own for
	// the request, and whoever took that would deliver the first event too.
	resp, err := c.a.api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: deployment, InputJson: `{"overrides": {}}`,
		Webhook: &comfygatev1.Webhook{Url: rcv.srv.URL + "/hang", Events: []comfygatev1.WebhookEvent{comfygatev1.WebhookEvent_WEBHOOK_EVENT_QUEUED}}})
	if err != nil {
		t.Fatal(err)
	}
	rid := resp.GetRequest().GetRequestId()
	first := rcv.until(ctx, t, "the first attempt", func(got []hookAttempt) bool { return len(got) > 0 })[0]

	owner, err := c.rdb.Get(ctx, redisstore.OutboxLeaseKey(c.prefix, rid)).Result()
	if err != nil {
		t.Fatalf("the delivery lease of a delivery in flight: %v", err)
	}
	pid, ok := leasePID(owner)
	victim := c.byPID(pid)
	if !ok || victim == nil {
		t.Fatalf("the delivery lease is held by %q, not a replica", owner)
	}
	// The receiver still holds attempts open: one that comes once the stop
	// began is another replica's (the victim's deliverer stops first).
	stopping := time.Now()
	victim.proc.stop()
	t.Logf("stopped %s mid-attempt of %s", victim.name, first.id)

	// Far less than the idle bound, and than the test's own deadline.
	soon, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	since := func(from time.Time, answered int) func([]hookAttempt) bool {
		return func(got []hookAttempt) bool {
			return slices.ContainsFunc(got, func(a hookAttempt) bool {
				return a.id == first.id && a.at.After(from) && a.answered == answered
			})
		}
	}
	rcv.until(soon, t, "the event tried again by another replica", since(stopping, 0))
	close(rcv.release)
	rcv.until(soon, t, "the event delivered", since(stopping, http.StatusOK))
}

// TestWebhooksWaitForAReceiverThatIsDown: the receiver is not listening
// (connections refused) while requests on all three replicas run to their
// end; the attempts fail and are retried; once the receiver listens on its
// address, every event arrives, in seq order per request, each once.
func TestWebhooksWaitForAReceiverThatIsDown(t *testing.T) {
	ctx := setup(t)
	c, secrets := webhookCluster(ctx, t, 2*time.Second)
	addr := freeAddr(t) // nothing listens there yet
	var rids []string
	for _, g := range c.gateways() {
		rids = append(rids, submitHooked(ctx, t, g, "http://"+addr+"/late").GetRequestId())
	}
	// Every request ends, and some attempt has failed, before the receiver
	// comes up.
	for _, rid := range rids {
		eventually(ctx, t, "request "+rid+" to end", func() bool {
			st, err := c.a.api.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: deployment, RequestId: rid})
			return err == nil && st.GetRequest().GetStatus() == comfygatev1.Status_STATUS_SUCCEEDED
		})
	}
	eventually(ctx, t, "a failed attempt", func() bool {
		list, err := c.b.api.ListDeliveries(ctx, &comfygatev1.ListDeliveriesRequest{DeploymentId: deployment, RequestId: rids[0]})
		if err != nil {
			return false
		}
		for _, d := range list.GetDeliveries() {
			for _, a := range d.GetAttempts() {
				if a.GetError() != "" && d.GetState() == comfygatev1.DeliveryState_DELIVERY_STATE_PENDING {
					return true
				}
			}
		}
		return false
	})

	rcv := &hookReceiver{t: t, secrets: secrets, release: make(chan struct{}), changed: make(chan struct{}, 1)}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the receiver's address %s: %v", addr, err)
	}
	rcv.srv = &httptest.Server{Listener: lis, Config: &http.Server{Handler: http.HandlerFunc(rcv.serve), ReadHeaderTimeout: 5 * time.Second}}
	rcv.srv.Start()
	t.Cleanup(rcv.srv.Close)

	got := rcv.until(ctx, t, "every request's terminal event", func(got []hookAttempt) bool {
		done := 0
		for _, a := range got {
			if a.typ == "request.succeeded" {
				done++
			}
		}
		return done == len(rids)
	})
	seen := map[string]bool{}
	lastSeq := map[string]int64{}
	for _, a := range got {
		if seen[a.id] {
			t.Errorf("event %s delivered twice", a.id)
		}
		seen[a.id] = true
		if a.seq <= lastSeq[a.requestID] {
			t.Errorf("request %s: seq %d after %d", a.requestID, a.seq, lastSeq[a.requestID])
		}
		lastSeq[a.requestID] = a.seq
	}
	for _, rid := range rids {
		var types []string
		for _, a := range got {
			if a.requestID == rid {
				types = append(types, a.typ)
			}
		}
		if len(types) < 3 || types[0] != "request.queued" || types[len(types)-1] != "request.succeeded" {
			t.Errorf("request %s: events %v, want queued, running (and output) and succeeded", rid, types)
		}
	}
}

// TestHeldWebhookEventsQueuedAsTheReplicasStop: after Redis restarted empty,
// the replica that puts a finished request's record back holds its webhook
// event back (state.RestoreSettle); when every replica is stopped (SIGTERM)
// within that time, the event is queued in Redis as the replica stops, before
// its Redis client closes, for the replicas that come after.
func TestHeldWebhookEventsQueuedAsTheReplicasStop(t *testing.T) {
	ctx := setup(t)
	c, secrets := webhookClusterOn(ctx, t, time.Second, startPrivateRedis(t))
	rcv := newHookReceiver(t, secrets)
	rid := submitHooked(ctx, t, c.a, rcv.srv.URL+"/ok").GetRequestId()
	rcv.until(ctx, t, "the success delivered", func(got []hookAttempt) bool {
		for _, a := range got {
			if a.requestID == rid && a.typ == "request.succeeded" && a.answered == http.StatusOK {
				return true
			}
		}
		return false
	})

	// A loss shows against the token the replicas read when they started.
	eventually(ctx, t, "the replicas' generation token", func() bool {
		n, err := c.kv.Exists(ctx, c.keys.GenerationKey()).Result()
		return err == nil && n == 1
	})
	restartRedisEmpty(ctx, t, c)
	eventually(ctx, t, "the record put back", func() bool { return c.recordSeq(ctx, t, rid) == 1 })
	var stopping sync.WaitGroup
	for _, g := range c.gateways() {
		stopping.Go(g.proc.stop)
	}
	stopping.Wait()

	// The event goes in the same atomic save as the record's next seq.
	if seq := c.recordSeq(ctx, t, rid); seq != 2 {
		t.Errorf("record at seq %d once the replicas stopped, want 2: put back, then saved with its held event", seq)
	}
}
