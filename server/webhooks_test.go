package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/internal/webhooktest"
	"github.com/comfygate/comfygate/state"
)

// received is one delivery a receiver got.
type received struct {
	path   string
	header http.Header
	body   []byte
	event  struct {
		Type string `json:"type"`
		Data struct {
			RequestID string `json:"request_id"`
			Status    string `json:"status"`
			Seq       string `json:"seq"`
		} `json:"data"`
	}
}

// receiver is a webhook endpoint that records what it gets, verified.
type receiver struct {
	t       *testing.T
	secrets []string // each must verify every delivery
	srv     *httptest.Server
	mu      sync.Mutex
	got     []received
	changed chan struct{}
}

func newReceiver(t *testing.T, secrets ...string) *receiver {
	r := &receiver{t: t, secrets: secrets, changed: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		rec := received{path: req.URL.Path, header: req.Header.Clone(), body: body}
		for _, s := range r.secrets {
			if err := webhooktest.Verify(s, req.Header, body, time.Now()); err != nil {
				t.Errorf("delivery %s to %s: %v", req.Header.Get("webhook-id"), req.URL.Path, err)
			}
		}
		if err := json.Unmarshal(body, &rec.event); err != nil {
			t.Errorf("delivery body %s: %v", body, err)
		}
		r.mu.Lock()
		r.got = append(r.got, rec)
		r.mu.Unlock()
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// until waits for the deliveries to satisfy done, and returns them.
func (r *receiver) until(ctx context.Context, what string, done func([]received) bool) []received {
	r.t.Helper()
	for {
		r.mu.Lock()
		got := append([]received(nil), r.got...)
		r.mu.Unlock()
		if done(got) {
			return got
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			r.t.Fatalf("waiting for %s: %d deliveries: %v", what, len(got), got)
		}
	}
}

// to returns the deliveries to path, for request rid.
func to(got []received, path, rid string) []received {
	var out []received
	for _, g := range got {
		if g.path == path && g.event.Data.RequestID == rid {
			out = append(out, g)
		}
	}
	return out
}

func newSecrets(t *testing.T, n int) ([]hooks.Secret, []string) {
	t.Helper()
	var secrets []hooks.Secret
	var texts []string
	for range n {
		s, err := hooks.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		secrets, texts = append(secrets, s), append(texts, s.String())
	}
	return secrets, texts
}

// TestWebhooksSignedInOrder: a submit's webhook receives the request's
// events it asked for, in seq order, each signed with every active secret (a
// rotation) and verified by a receiver written from the specification; the
// body is the request's state as REST shows it. Over REST the headers name
// the webhook; the tenant's default endpoint gets the terminal event of both.
func TestWebhooksSignedInOrder(t *testing.T) {
	secrets, texts := newSecrets(t, 2)
	rcv := newReceiver(t, texts...)
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
		o.hooks = &hooksOptions{secrets: secrets, defaults: map[string][]state.WebhookTarget{
			"tenant-a": {{URL: rcv.srv.URL + "/default", Kinds: state.KindTerminal}},
		}}
	})
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`,
		Webhook: &comfygatev1.Webhook{Url: rcv.srv.URL + "/grpc", Events: []comfygatev1.WebhookEvent{
			comfygatev1.WebhookEvent_WEBHOOK_EVENT_QUEUED, comfygatev1.WebhookEvent_WEBHOOK_EVENT_RUNNING,
			comfygatev1.WebhookEvent_WEBHOOK_EVENT_OUTPUT, comfygatev1.WebhookEvent_WEBHOOK_EVENT_TERMINAL,
		}}})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	g.stepAs(ctx, t, keyA, rid) // running
	g.stepAs(ctx, t, keyA, rid) // succeeded, with outputs

	got := rcv.until(ctx, "the terminal event", func(got []received) bool {
		return len(to(got, "/grpc", rid)) >= 3 && len(to(got, "/default", rid)) >= 1
	})
	events := to(got, "/grpc", rid)
	wantTypes := []string{"request.queued", "request.running", "request.succeeded"}
	var lastSeq int64
	for i, e := range events {
		if i >= len(wantTypes) || e.event.Type != wantTypes[i] {
			t.Errorf("event %d is %s, want the types %v in order", i, e.event.Type, wantTypes)
		}
		seq, _ := strconv.ParseInt(e.event.Data.Seq, 10, 64)
		if seq <= lastSeq {
			t.Errorf("event %d has seq %d after %d", i, seq, lastSeq)
		}
		lastSeq = seq
		if n := len(strings.Fields(e.header.Get("webhook-signature"))); n != 2 {
			t.Errorf("event %d carries %d signatures, want one per active secret (2)", i, n)
		}
		if !strings.HasPrefix(e.header.Get("webhook-id"), "msg_") || e.header.Get("Content-Type") != "application/json" {
			t.Errorf("event %d: headers %v", i, e.header)
		}
	}
	if last := events[len(events)-1]; last.event.Data.Status != "STATUS_SUCCEEDED" {
		t.Errorf("terminal event's state is %s, want STATUS_SUCCEEDED", last.event.Data.Status)
	}
	def := to(got, "/default", rid)
	if def[0].event.Type != "request.succeeded" || def[0].header.Get("webhook-id") != events[len(events)-1].header.Get("webhook-id") {
		t.Errorf("default endpoint got %s %s, want the terminal event with the same webhook-id", def[0].event.Type, def[0].header.Get("webhook-id"))
	}

	// Over REST: the Comfygate-Webhook headers.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", strings.NewReader(`{"overrides": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+keyA)
	req.Header.Set("Comfygate-Webhook", rcv.srv.URL+"/rest")
	req.Header.Set("Comfygate-Webhook-Events", "running, terminal")
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var answer struct {
		Request struct {
			RequestID string `json:"request_id"`
		} `json:"request"`
	}
	err = json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("REST submit: HTTP %d, %v", resp.StatusCode, err)
	}
	rid2 := answer.Request.RequestID
	g.stepAs(ctx, t, keyA, rid2)
	g.stepAs(ctx, t, keyA, rid2)
	got = rcv.until(ctx, "the REST submit's events", func(got []received) bool { return len(to(got, "/rest", rid2)) >= 2 })
	if rest := to(got, "/rest", rid2); rest[0].event.Type != "request.running" || rest[1].event.Type != "request.succeeded" {
		t.Errorf("REST webhook got %s, %s; want running then succeeded", rest[0].event.Type, rest[1].event.Type)
	}
}

// TestSubmitWebhookRefused: a webhook the gateway cannot honour is refused
// with a precise code before anything reaches RunComfy.
func TestSubmitWebhookRefused(t *testing.T) {
	secrets, _ := newSecrets(t, 1)
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
		o.hooks = &hooksOptions{secrets: secrets, unsigned: map[string]bool{"tenant-b": true}}
	})
	off := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	tests := []struct {
		name    string
		g       *gateway
		key     string
		webhook *comfygatev1.Webhook
		code    codes.Code
		message string
	}{
		{"no URL", g, keyA, &comfygatev1.Webhook{}, codes.InvalidArgument, "webhook.url: is required"},
		{"not http", g, keyA, &comfygatev1.Webhook{Url: "ftp://hooks.example.com/x"}, codes.InvalidArgument, "webhook.url"},
		{"relative", g, keyA, &comfygatev1.Webhook{Url: "/hooks"}, codes.InvalidArgument, "webhook.url"},
		{"user info", g, keyA, &comfygatev1.Webhook{Url: "https://user:pw@hooks.example.com/x"}, codes.InvalidArgument, "webhook.url"},
		{"the gateway's own callback", g, keyA, &comfygatev1.Webhook{Url: g.callbackURL("dep-1")}, codes.InvalidArgument, "callback URL"},
		{"another comfygate's callback", g, keyA, &comfygatev1.Webhook{Url: "https://other.example.com/Webhooks/RunComfy/dep-1/t"}, codes.InvalidArgument, "callback URL"},
		{"unspecified event", g, keyA, &comfygatev1.Webhook{Url: "https://hooks.example.com/x", Events: []comfygatev1.WebhookEvent{0}}, codes.InvalidArgument, "webhook.events"},
		{"an event twice", g, keyA, &comfygatev1.Webhook{Url: "https://hooks.example.com/x", Events: []comfygatev1.WebhookEvent{4, 4}}, codes.InvalidArgument, "listed twice"},
		{"tenant without a secret", g, keyB, &comfygatev1.Webhook{Url: "https://hooks.example.com/x"}, codes.FailedPrecondition, "signing secret"},
		{"gateway without webhooks", off, keyA, &comfygatev1.Webhook{Url: "https://hooks.example.com/x"}, codes.FailedPrecondition, "--tenants-file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.g.client.Submit(as(ctx, tc.key), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, Webhook: tc.webhook})
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.message) {
				t.Errorf("got %v %q, want %v with %q", st.Code(), st.Message(), tc.code, tc.message)
			}
		})
	}
	rest := []struct {
		name    string
		headers [][2]string
		message string
	}{
		{"events without a webhook", [][2]string{{"Comfygate-Webhook-Events", "terminal"}}, "needs Comfygate-Webhook"},
		{"unknown event", [][2]string{{"Comfygate-Webhook", "https://hooks.example.com/x"}, {"Comfygate-Webhook-Events", "finished"}}, `unknown event \"finished\"`},
		{"two webhooks", [][2]string{{"Comfygate-Webhook", "https://a.example.com/x"}, {"Comfygate-Webhook", "https://b.example.com/x"}}, "must be given once"},
		{"empty webhook", [][2]string{{"Comfygate-Webhook", " "}}, "must not be empty"},
		{"not a URL", [][2]string{{"Comfygate-Webhook", "hooks"}}, "webhook.url"},
		{"not ASCII", [][2]string{{"Comfygate-Webhook", "https://hooks.example.com/ä"}}, "Comfygate-Webhook: may contain only printable ASCII"},
		{"a control character", [][2]string{{"Comfygate-Webhook", "https://hooks.example.com/a\tb"}}, "Comfygate-Webhook: may contain only printable ASCII"},
		{"events not ASCII", [][2]string{{"Comfygate-Webhook", "https://hooks.example.com/x"}, {"Comfygate-Webhook-Events", "quéued"}}, "Comfygate-Webhook-Events: may contain only printable ASCII"},
		{"grpc-gateway's alias", [][2]string{{"Grpc-Metadata-Comfygate-Webhook", "https://hooks.example.com/x"}}, "is not read: send Comfygate-Webhook"},
	}
	for _, tc := range rest {
		t.Run("REST "+tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+keyA)
			for _, h := range tc.headers {
				req.Header.Add(h[0], h[1])
			}
			resp, err := g.httpc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte(tc.message)) {
				t.Errorf("HTTP %d %s, want 400 with %q", resp.StatusCode, body, tc.message)
			}
		})
	}
	for _, gw := range []*gateway{g, off} {
		if n := len(gw.sim.Submits()); n != 0 {
			t.Errorf("%d refused submits reached RunComfy", n)
		}
	}
}

// TestDeliveriesTenantScoped: a tenant lists and redelivers its own
// requests' deliveries; another tenant's request is "no such request", the
// same answer as a request that does not exist, over gRPC and REST.
func TestDeliveriesTenantScoped(t *testing.T) {
	secrets, texts := newSecrets(t, 1)
	rcv := newReceiver(t, texts...)
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
		o.hooks = &hooksOptions{secrets: secrets}
	})
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`,
		Webhook: &comfygatev1.Webhook{Url: rcv.srv.URL + "/a?token=secret-query"}})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	g.stepAs(ctx, t, keyA, rid)
	g.stepAs(ctx, t, keyA, rid)
	rcv.until(ctx, "the terminal event", func(got []received) bool { return len(to(got, "/a", rid)) == 1 })

	var list *comfygatev1.ListDeliveriesResponse
	for {
		list, err = g.client.ListDeliveries(as(ctx, keyA), &comfygatev1.ListDeliveriesRequest{DeploymentId: "dep-1", RequestId: rid})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetDeliveries()) == 1 && list.GetDeliveries()[0].GetState() == comfygatev1.DeliveryState_DELIVERY_STATE_DELIVERED {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("deliveries %v, want one delivered", list)
		case <-time.After(10 * time.Millisecond):
		}
	}
	d := list.GetDeliveries()[0]
	if d.GetEventType() != "request.succeeded" || d.GetAttemptCount() != 1 || len(d.GetAttempts()) != 1 ||
		d.GetAttempts()[0].GetHttpStatus() != 200 || strings.Contains(d.GetEndpoint(), "secret-query") {
		t.Errorf("delivery %v: want the terminal event, one attempt answered 200, the endpoint without its query", d)
	}

	// Redelivery: the same webhook-id again.
	re, err := g.client.RedeliverEvent(as(ctx, keyA), &comfygatev1.RedeliverEventRequest{DeploymentId: "dep-1", RequestId: rid, EventId: d.GetEventId()})
	if err != nil {
		t.Fatal(err)
	}
	if len(re.GetDeliveries()) != 1 {
		t.Errorf("redelivery answered %v", re)
	}
	got := rcv.until(ctx, "the redelivery", func(got []received) bool { return len(to(got, "/a", rid)) == 2 })
	if a := to(got, "/a", rid); a[0].header.Get("webhook-id") != a[1].header.Get("webhook-id") || a[1].header.Get("webhook-id") != d.GetEventId() {
		t.Errorf("redelivered with webhook-id %s, first %s, want both %s", a[1].header.Get("webhook-id"), a[0].header.Get("webhook-id"), d.GetEventId())
	}

	// Another tenant, an unknown request, an unknown event.
	unknown := status.Convert(func() error {
		_, err := g.client.ListDeliveries(as(ctx, keyA), &comfygatev1.ListDeliveriesRequest{DeploymentId: "dep-1", RequestId: "no-such-request"})
		return err
	}())
	if unknown.Code() != codes.NotFound {
		t.Fatalf("unknown request: %v", unknown)
	}
	calls := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"list as another tenant", func() error {
			_, err := g.client.ListDeliveries(as(ctx, keyB), &comfygatev1.ListDeliveriesRequest{DeploymentId: "dep-1", RequestId: rid})
			return err
		}, codes.NotFound},
		{"redeliver as another tenant", func() error {
			_, err := g.client.RedeliverEvent(as(ctx, keyB), &comfygatev1.RedeliverEventRequest{DeploymentId: "dep-1", RequestId: rid, EventId: d.GetEventId()})
			return err
		}, codes.NotFound},
		{"redeliver an unknown event", func() error {
			_, err := g.client.RedeliverEvent(as(ctx, keyA), &comfygatev1.RedeliverEventRequest{DeploymentId: "dep-1", RequestId: rid, EventId: "msg_unknown"})
			return err
		}, codes.NotFound},
		{"malformed event id", func() error {
			_, err := g.client.RedeliverEvent(as(ctx, keyA), &comfygatev1.RedeliverEventRequest{DeploymentId: "dep-1", RequestId: rid, EventId: "msg.1"})
			return err
		}, codes.InvalidArgument},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != tc.code {
				t.Fatalf("got %v %q, want %v", st.Code(), st.Message(), tc.code)
			}
			if tc.code == codes.NotFound && strings.Contains(tc.name, "tenant") && st.Message() != unknown.Message() {
				t.Errorf("another tenant's request: %q, want the unknown request's answer %q", st.Message(), unknown.Message())
			}
		})
	}
	for _, path := range []string{"/deliveries", "/deliveries/" + d.GetEventId() + ":redeliver"} {
		method := http.MethodGet
		if strings.HasSuffix(path, ":redeliver") {
			method = http.MethodPost
		}
		if code := g.restAs(t, keyB, method, "/v1/deployments/dep-1/requests/"+rid+path, ""); code != http.StatusNotFound {
			t.Errorf("%s %s as another tenant: HTTP %d, want 404", method, path, code)
		}
		if code := g.restAs(t, keyA, method, "/v1/deployments/dep-1/requests/"+rid+path, ""); code != http.StatusOK {
			t.Errorf("%s %s as the owner: HTTP %d, want 200", method, path, code)
		}
	}
}

// TestIdempotencyKeyCoversTheWebhook: a retry with the same key and body
// that names the same webhook is the same submit; one that names another
// webhook (or other events, or none) is not, and is refused as a key reused
// for another submit, never sent upstream.
func TestIdempotencyKeyCoversTheWebhook(t *testing.T) {
	secrets, _ := newSecrets(t, 1)
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) { o.hooks = &hooksOptions{secrets: secrets} })
	ctx := ctxT(t)
	submit := func(w *comfygatev1.Webhook) (string, error) {
		sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, IdempotencyKey: "same-key", Webhook: w})
		return sub.GetRequest().GetRequestId(), err
	}
	first := &comfygatev1.Webhook{Url: "https://hooks.example.com/one", Events: []comfygatev1.WebhookEvent{comfygatev1.WebhookEvent_WEBHOOK_EVENT_TERMINAL}}
	rid, err := submit(first)
	if err != nil {
		t.Fatal(err)
	}
	// The same webhook, its events in another spelling (terminal is the
	// default): the same submit.
	again, err := submit(&comfygatev1.Webhook{Url: first.GetUrl()})
	if err != nil || again != rid {
		t.Fatalf("retry naming the same webhook: %s, %v; want %s", again, err, rid)
	}
	for _, w := range []*comfygatev1.Webhook{
		{Url: "https://hooks.example.com/two"},
		{Url: first.GetUrl(), Events: []comfygatev1.WebhookEvent{comfygatev1.WebhookEvent_WEBHOOK_EVENT_RUNNING}},
		nil,
	} {
		if _, err := submit(w); status.Code(err) != codes.AlreadyExists {
			t.Errorf("retry naming webhook %v: %v, want AlreadyExists", w, err)
		}
	}
	if n := len(g.sim.Submits()); n != 1 {
		t.Errorf("%d submits reached RunComfy, want 1", n)
	}
}

// TestReplayRecordsWhatTheFirstSubmitNamed: the first submit with a key may
// stop (its replica killed) after completing the key and before recording
// the request, which a callback has meanwhile made without its webhooks. A
// replay with the key records them, so that the request's events reach its
// endpoints; RunComfy still sees one submit.
func TestReplayRecordsWhatTheFirstSubmitNamed(t *testing.T) {
	secrets, _ := newSecrets(t, 1)
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) { o.hooks = &hooksOptions{secrets: secrets} })
	ctx := ctxT(t)
	hook := &comfygatev1.Webhook{Url: "https://hooks.example.com/one"}
	submit := func() *comfygatev1.SubmitResponse {
		t.Helper()
		sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, IdempotencyKey: "replayed", Webhook: hook})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	rid := submit().GetRequest().GetRequestId()
	// The record as a callback alone makes it: the submit's webhooks missing.
	rec, err := g.memory.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	bare := rec.Clone()
	bare.Webhooks, bare.Seq = nil, rec.Seq+1
	if err := g.memory.Save(ctx, bare, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := submit().GetRequest().GetRequestId(); got != rid {
		t.Fatalf("replay answered %s, want %s", got, rid)
	}
	after, err := g.memory.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Webhooks) != 1 || after.Webhooks[0].URL != hook.GetUrl() {
		t.Errorf("after the replay the record's webhooks are %+v, want %s", after.Webhooks, hook.GetUrl())
	}
	if n := len(g.sim.Submits()); n != 1 {
		t.Errorf("%d submits reached RunComfy, want 1", n)
	}
}
